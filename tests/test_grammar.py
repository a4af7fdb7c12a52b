"""Constrained generation (core/grammar.py over llguidance): the token masks, the CLI flags on the real
SmolLM2 model, llama.cpp's own sample grammars, and the clear errors for bad grammars and schemas."""

from __future__ import annotations

import json
import re

import pytest
import torch

import llama_cpp_ref
from conftest import assert_clean_error, run_cli
from llamatorch.core import grammar
from llamatorch.core.errors import LlamatorchError
from llamatorch.core.tokenizer import Tokenizer

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def tok(smollm2_path):
    return Tokenizer.from_file(smollm2_path)


def test_mask_allows_exactly_the_tokens_the_regex_can_continue_with(tok):
    c = grammar.Constraint(grammar.compile_grammar("regex", "[0-9]+"), tok, tok.n_vocab)
    allowed = c.allowed()
    pieces = [tok.token_to_piece(i) for i in range(tok.n_vocab)]
    digits = {i for i, p in enumerate(pieces) if p and p.isdigit()}
    assert digits and set(allowed.nonzero()[0]) == digits  # nothing else before the first digit
    logits = torch.zeros(tok.n_vocab)
    c.mask_(logits)
    assert torch.isinf(logits).sum() == tok.n_vocab - len(digits)
    c.consume(next(iter(digits)))  # after a digit: more digits, or the end (an end-of-generation token)
    after = set(c.allowed().nonzero()[0])
    assert digits <= after and after - digits <= set(tok.eog_ids) and after & set(tok.eog_ids)


@pytest.mark.parametrize("kind,text,fragment", [
    ("gbnf", "root ::= foo", "rule 'foo' not found"),
    ("gbnf", 'root ::= "a', "unexpected end of input"),
    ("json_schema", "{not json", "invalid json schema"),
    ("json_schema", "[1, 2]", "must be a json object"),
    ("regex", "a(b", "invalid regex"),
])
def test_bad_grammars_are_one_line_errors(kind, text, fragment):
    with pytest.raises(LlamatorchError) as e:
        grammar.compile_grammar(kind, text)
    assert fragment in str(e.value).lower() and "\n" not in str(e.value)


def _completion(model, prompt, *flags, n=48):
    proc = run_cli("cli", "-m", str(model), "-no-cnv", "--no-display-prompt", "-p", prompt, "-n", str(n), *flags)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.rstrip("\n")


def test_json_schema_output_parses_and_matches(smollm2_path, tmp_path):
    out = _completion(smollm2_path, "A JSON record for Ann, aged 31:", "--temp", "0", "-j", json.dumps(PERSON))
    value = json.loads(out)
    assert set(value) == {"name", "age"} and isinstance(value["name"], str) and isinstance(value["age"], int)
    schema_file = tmp_path / "s.json"
    schema_file.write_text(json.dumps({"type": "string", "enum": ["red", "green", "blue"]}))
    for seed in (1, 2, 3):  # sampled, not greedy: still one of the three
        out = _completion(smollm2_path, "My favourite colour is", "--temp", "1.5", "-s", str(seed),
                          "-jf", str(schema_file), n=16)
        assert json.loads(out) in ("red", "green", "blue")


@pytest.mark.parametrize("name,check", [
    ("json", lambda s: isinstance(json.loads(s), dict)),
    ("list", lambda s: all(re.fullmatch(r"- [^\n]*", ln) for ln in s.split("\n") if ln)),
    ("arithmetic", lambda s: re.fullmatch(r"([-+*/()a-z0-9_= \n]|\s)*", s) is not None),
    ("chess", lambda s: s.startswith("1. ")),
])
def test_llama_cpp_sample_grammars_constrain(smollm2_path, name, check):
    path = llama_cpp_ref.source_dir() / "grammars" / f"{name}.gbnf"
    out = _completion(smollm2_path, "Here is an example:", "--temp", "0", "--grammar-file", str(path), n=40)
    assert out and check(out.strip() if name == "json" else out), out


def test_unsatisfiable_within_the_limit_stops_at_it(smollm2_path):
    out = _completion(smollm2_path, "Say a:", "--temp", "0", "--grammar", 'root ::= "a"{200} "."', n=5)
    assert out and set(out) == {"a"} and len(out) <= 200


def test_cli_errors(smollm2_path, tmp_path):
    m = str(smollm2_path)
    assert_clean_error(run_cli("cli", "-m", m, "-no-cnv", "-p", "x", "--grammar", "root ::= foo"), "invalid grammar")
    assert_clean_error(run_cli("cli", "-m", m, "-no-cnv", "-p", "x", "-j", "{nope"), "invalid json schema")
    assert_clean_error(run_cli("cli", "-m", m, "-no-cnv", "-p", "x", "--grammar-file", str(tmp_path / "none.gbnf")),
                       "file not found")
    assert_clean_error(run_cli("cli", "-m", m, "-no-cnv", "-p", "x", "-j", "{}", "--grammar", 'root ::= "a"'),
                       "not several")


def _llama_cpp_invalid_grammars() -> list[str]:
    """The grammars llama.cpp's own tests expect its parser to refuse (test-grammar-parser's verify_failure
    cases, test-grammar-integration's missing-root / missing-reference / left-recursion ones)."""
    src = llama_cpp_ref.source_dir() / "tests"
    cases = re.findall(r'verify_failure\(R"""\((.*?)\)"""\)', (src / "test-grammar-parser.cpp").read_text(), re.S)
    integration = (src / "test-grammar-integration.cpp").read_text()
    for fn in ("test_failure_missing_root", "test_failure_missing_reference", "test_failure_left_recursion"):
        body = integration[integration.index(f"static void {fn}()"):]
        cases += re.findall(r'R"""\((.*?)\)"""', body[: body.index("\n}\n")], re.S)
    return cases


def test_llama_cpp_invalid_grammar_cases_never_crash(tok):
    """Each is refused with a one-line error or (llguidance's Earley parser takes left recursion and long
    repetitions, which llama.cpp's refuses) compiles and constrains; nothing raises anything else."""
    cases = _llama_cpp_invalid_grammars()
    assert len(cases) >= 10
    refused = 0
    for text in cases:
        try:
            compiled = grammar.compile_grammar("gbnf", text)
        except LlamatorchError as e:
            assert "\n" not in str(e)
            refused += 1
            continue
        c = grammar.Constraint(compiled, tok, tok.n_vocab)
        assert c.allowed().any()
    assert refused >= 5  # the syntax errors and the missing rules
