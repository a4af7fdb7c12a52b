"""The lens (`llamatorch cli --lens / --lens-out`): its records say what the engine and the sampler did.

The probabilities it records are recomputed here from the engine's own logits for the same context; its
"after sampling" candidates are the sampler chain's distribution; the stage it names for a cut candidate
is the one that removed it; the JSONL round-trips; piped output stays clean; a real terminal (tmux) shows
the live view and the final text.
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys

import pytest
import torch

from conftest import assert_clean_error, run_cli

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def engine(smollm2_path):
    from llamatorch.core.engine import Engine

    return Engine(smollm2_path, n_ctx=128, dtype="f32", threads=2)


def _run_lens(engine, params, n=8, n_probs=8, constraint=None):
    from llamatorch.core.generate import generate
    from llamatorch.core.lens import Lens
    from llamatorch.core.sampling import Sampler

    engine.cache.clear()
    sampler = Sampler(params, engine.n_vocab, constraint)
    lens = Lens(engine, sampler, n_probs=n_probs)
    ids = engine.tokenizer.encode(PROMPT, add_special=True, parse_special=True)
    lens.begin(ids, PROMPT, [(0, len(PROMPT))])
    out = []
    for t in generate(engine, ids, n, sampler):
        out.append(t)
        lens.shown(t)
    lens.finish()
    lens.detach()
    return ids, out, lens


def _logits_for(engine, context: list[int]) -> torch.Tensor:
    from llamatorch.core.engine import Batch

    engine.cache.clear()
    return engine.decode(Batch.sequence(context, start=0, seq=0))[-1].float()


def test_recorded_probabilities_are_the_engines_and_the_samplers(engine):
    from llamatorch.core.sampling import Sampler, SamplerParams

    params = SamplerParams(temp=0.8, seed=7)
    ids, out, lens = _run_lens(engine, params)
    assert [s.id for s in lens.steps if not s.eog] == out
    assert lens.prompt.prefill_ms > 0 and len(lens.prompt.tokens) == len(ids)
    reference = Sampler(params, engine.n_vocab)
    for s in lens.steps:
        logits = _logits_for(engine, ids + out[: s.step])
        probs = torch.softmax(logits, -1)
        assert s.logprob == pytest.approx(float(torch.log_softmax(logits, -1)[s.id]), abs=1e-4)
        best = torch.topk(probs, len(s.top_before)).indices.tolist()
        assert [c.id for c in s.top_before] == best
        for c in s.top_before:
            assert c.p_before == pytest.approx(float(probs[c.id]), abs=1e-5)
        # after sampling: the chain's own distribution on these logits
        chain_ids, chain_probs = reference.distribution(logits)
        chain = dict(zip(chain_ids.tolist(), chain_probs.tolist()))
        assert s.n_kept == len(chain)
        assert {c.id: c.p_after for c in s.top_after} == pytest.approx(
            dict(sorted(chain.items(), key=lambda kv: -kv[1])[: len(s.top_after)]), abs=1e-5)
        assert s.p_after == pytest.approx(chain[s.id], abs=1e-5)
        top2 = torch.topk(probs, 2).values.tolist()
        assert s.margin == pytest.approx(top2[0] - top2[1], abs=1e-5)
        assert s.cells_used == len(ids) + s.step and s.cells_total == 128
        assert s.forward_ms > 0 and s.sample_ms > 0


def test_top_after_sums_to_one_and_stages_shrink(engine):
    from llamatorch.core.sampling import SamplerParams

    _, _, lens = _run_lens(engine, SamplerParams(temp=1.0, top_k=40, top_p=0.9, min_p=0.02, seed=3), n_probs=40)
    for s in lens.steps:
        assert len(s.top_after) == s.n_kept  # n_probs 40 >= what top-k 40 leaves
        assert math.fsum(c.p_after for c in s.top_after) == pytest.approx(1.0, abs=1e-5)
        counts = list(s.stages.values())
        assert list(s.stages) == ["top_k", "top_p", "min_p"]
        assert counts == sorted(counts, reverse=True) and counts[-1] == s.n_kept
        for c in s.top_before:
            assert (c.cut_by is None) == (c.p_after > 0)


def test_cut_by_names_the_stage(engine):
    from llamatorch.core.sampling import SamplerParams

    _, _, lens = _run_lens(engine, SamplerParams(temp=0.8, top_k=2, top_p=1.0, min_p=0.0, seed=1), n_probs=6)
    for s in lens.steps:
        assert [c.cut_by for c in s.top_before] == [None, None, "top_k", "top_k", "top_k", "top_k"]
    _, _, lens = _run_lens(engine, SamplerParams(temp=0), n_probs=4)
    for s in lens.steps:
        assert s.p_after == 1.0 and s.stages == {"greedy": 1}
        assert [c.cut_by for c in s.top_before] == [None, "greedy", "greedy", "greedy"]


def test_grammar_cuts_are_named(engine):
    from llamatorch.core.grammar import Constraint, compile_grammar
    from llamatorch.core.sampling import SamplerParams

    constraint = Constraint(compile_grammar("gbnf", 'root ::= " yes" | " no"'), engine.tokenizer, engine.n_vocab)
    _, out, lens = _run_lens(engine, SamplerParams(temp=0), n_probs=5, constraint=constraint)
    first = lens.steps[0]
    assert engine.tokenizer.decode(out) in (" yes", " no")
    assert first.top_before[0].cut_by == "grammar"  # " Paris" is the model's favourite, and not allowed
    assert first.stages["grammar"] < engine.n_vocab


def test_prompt_roles_in_a_chat_turn(smollm2_path):
    from llamatorch.core.chat_template import resolve
    from llamatorch.core.gguf_file import GGUFFile
    from llamatorch.core.lens import prompt_tokens, user_spans_in
    from llamatorch.core.tokenizer import Tokenizer

    gf = GGUFFile(smollm2_path)
    tok = Tokenizer.from_metadata(gf.metadata)
    tmpl = resolve(gf.metadata, tok, gf.architecture, None, None, log=lambda m: None)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    text = tmpl.apply(messages, add_generation_prompt=True)
    ids = tok.encode(text, add_special=True, parse_special=True)
    tokens = prompt_tokens(tok, ids, text, user_spans_in(text, messages), n_cached=3)
    assert "".join(t.piece for t in tokens) == text
    assert "".join(t.piece for t in tokens if t.role == "text") == "Be brief.Hi there"
    assert {t.piece for t in tokens if t.role == "special"} == {"<|im_start|>", "<|im_end|>"}
    assert "".join(t.piece for t in tokens[-3:]) == "assistant\n" and {t.role for t in tokens[-3:]} == {"template"}
    assert [t.cached for t in tokens[:4]] == [True, True, True, False]


def test_lens_out_round_trips_and_piped_text_stays_clean(tmp_path, smollm2_path):
    args = ["cli", "-m", str(smollm2_path), "-no-cnv", "-p", PROMPT, "-n", "12", "--temp", "0.7", "-s", "5", "-t", "2"]
    plain = run_cli(*args)
    assert plain.returncode == 0, plain.stderr
    out = tmp_path / "lens.jsonl"
    proc = run_cli(*args, "--lens", "--lens-out", str(out), "--n-probs", "3", "--show-ids")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == plain.stdout  # the text is the same, and nothing else is on stdout
    assert "live view is off" in proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[0]["type"] == "prompt" and records[0]["prefill_ms"] > 0
    assert [t["piece"] for t in records[0]["tokens"]] == ["The", " capital", " of", " France", " is"]
    steps = records[1:]
    assert all(r["type"] == "token" and len(r["top_before"]) == 3 for r in steps)
    ids = json.loads(proc.stderr.split("generated ids: ")[1].splitlines()[0])
    assert [r["id"] for r in steps if not r["eog"]] == ids
    assert PROMPT + "".join(r["piece"] for r in steps if not r["eog"]) + "\n" == proc.stdout
    assert [r["step"] for r in steps] == list(range(len(steps)))


def test_verbose_prompt_prints_llama_completions_lines(smollm2_path):
    proc = run_cli("cli", "-m", str(smollm2_path), "-no-cnv", "-p", PROMPT, "-n", "1", "--temp", "0",
                   "--verbose-prompt", "-t", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    k = lines.index(f"main: prompt: '{PROMPT}'")
    assert lines[k + 1] == "main: number of tokens in prompt = 5"
    assert lines[k + 2:k + 7] == ["   504 -> 'The'", "  3575 -> ' capital'", "   282 -> ' of'",
                                  "  4649 -> ' France'", "   314 -> ' is'"]


def test_lens_errors(tmp_path, smollm2_path):
    base = ["cli", "-m", str(smollm2_path), "-no-cnv", "-p", PROMPT, "-n", "2"]
    assert_clean_error(run_cli(*base, "--lens", "--n-probs", "0"), "--n-probs")
    assert_clean_error(run_cli(*base, "--lens", "--spec-type", "ngram"), "speculative")
    missing = tmp_path / "no-such-dir" / "lens.jsonl"
    assert_clean_error(run_cli(*base, "--lens-out", str(missing)), "does not exist")
    assert not missing.parent.exists()


@pytest.mark.skipif(subprocess.run(["which", "tmux"], capture_output=True).returncode != 0,
                    reason="tmux is not installed (CI installs it)")
def test_live_view_in_a_terminal(tmp_path, smollm2_path):
    from test_chat_tmux import Pane

    import os

    cli = [sys.executable, "-m", "llamatorch.cli.app", "cli", "-m", str(smollm2_path), "-no-cnv", "-p", PROMPT,
           "-n", "160", "--temp", "0", "--lens", "-t", "2"]
    err = tmp_path / "stderr.txt"
    command = f"{shlex.join(cli)} 2>{shlex.quote(str(err))}; echo LENS-EXIT=$?; sleep 600"
    pane = Pane(f"env PYTHONPATH={shlex.quote(os.environ.get('PYTHONPATH', ''))} {command}")
    try:
        live = pane.wait(lambda s: "sampler chain: greedy 1" in s or "LENS-EXIT" in s, 240, "the live view")
        assert "LENS-EXIT" not in live, live
        assert "prompt: 5 tokens" in live and "The₅₀₄·capital₃₅₇₅" in live
        assert "p before" in live and "cut by" in live and "KV cells" in live
        final = pane.wait(lambda s: "LENS-EXIT=" in s, 240, "the end of the run")
        assert "LENS-EXIT=0" in final, final + err.read_text()
        assert "lens summary" in final and "decode step" in final
        assert "·Paris₇₀₄₂" in final  # the reply as tokens, with ids
        assert "Traceback" not in final + err.read_text()
    finally:
        pane.close()
