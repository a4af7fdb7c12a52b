"""The chat template's own tool format (Hermes: <tool_call>{...}</tool_call>, core/server/tools.py) and
the lazy grammar that enforces it under tool_choice "auto" (core/grammar.LazyConstraint): SmolLM2 with
a Hermes-style template (tests/data/hermes_tools.jinja), through `llamatorch server` and the openai client."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import numpy as np
import pytest
import torch

from helpers.server_process import Server
from llamatorch.core import grammar
from llamatorch.core.chat_template import ChatTemplate
from llamatorch.core.chat_jinja import JinjaTemplate
from llamatorch.core.server import tools
from llamatorch.core.tokenizer import Tokenizer

HERMES = Path(__file__).parent / "data" / "hermes_tools.jinja"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                     "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current time in a time zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def tok(smollm2_path):
    return Tokenizer.from_file(smollm2_path)


def _declared(*specs):
    return [SimpleNamespace(function=SimpleNamespace(**s["function"])) for s in specs]


def _hermes_template():
    return ChatTemplate("jinja", "test", JinjaTemplate(HERMES.read_text()))


def _allowed(constraint, n_vocab) -> np.ndarray:
    logits = torch.zeros(n_vocab)
    constraint.mask_(logits)
    return torch.isfinite(logits).numpy()


def _lazy(tok, choice="auto", parallel=None):
    p = tools.plan(_declared(WEATHER, TIME), choice, _hermes_template(), parallel)
    g = grammar.compile_grammar("lark", tools.hermes_grammar(p, tok))
    return p, grammar.constraint_for(grammar.LazyGrammar(g, tools.OPEN) if p.lazy else g, tok, tok.n_vocab)


def _feed(c, tok, text):
    for t in tok.encode(text, add_special=False):
        c.consume(t)


def test_the_hermes_template_gets_native_plans_and_others_the_generic_one(tok):
    auto = tools.plan(_declared(WEATHER, TIME), "auto", _hermes_template())
    assert auto.native and auto.lazy and [t["function"]["name"] for t in auto.tools] == ["get_weather", "get_time"]
    named = tools.plan(_declared(WEATHER, TIME), {"type": "function", "function": {"name": "get_time"}},
                       _hermes_template())
    assert named.native and not named.lazy and named.schema["properties"]["name"] == {"const": "get_time"}
    generic = tools.plan(_declared(WEATHER), "auto", ChatTemplate("chatml", "builtin"))
    assert not generic.native and generic.system and "tool_call" in json.dumps(generic.schema)


def test_lazy_grammar_is_silent_until_the_marker_then_holds_the_call(tok):
    p, c = _lazy(tok)
    _feed(c, tok, "Let me look that up. <tool")
    assert not c.triggered and _allowed(c, tok.n_vocab).all()  # prose: nothing masked
    _feed(c, tok, "_call>\n")
    assert c.triggered and not c.done
    ok = _allowed(c, tok.n_vocab)
    starts = {tok.token_to_piece(int(i)).decode().strip() for i in np.flatnonzero(ok)}
    assert "{" in starts and all(s == "" or s.startswith("{") for s in starts)  # whitespace, or the call's brace
    _feed(c, tok, '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "')
    ok = _allowed(c, tok.n_vocab)
    first = lambda word: tok.encode(word, add_special=False)[0]  # noqa: E731
    assert ok[first("celsius")] and not ok[first("kelvin")]  # the enum holds
    c.reset()
    assert not c.triggered
    _feed(c, tok, 'Sure.<tool_call>{"name": "get_time", "arguments": {"zone": "CET"}}</tool_call>')
    assert c.triggered
    ok = _allowed(c, tok.n_vocab)
    assert all(ok[i] for i in tok.eog_ids if i < tok.n_vocab)  # done, or another call


def test_a_required_call_is_constrained_from_the_first_token(tok):
    _, c = _lazy(tok, "required", parallel=False)
    ok = _allowed(c, tok.n_vocab)
    assert not ok[tok.encode("Sure", add_special=False)[0]] and ok[tok.encode("<", add_special=False)[0]]
    _feed(c, tok, '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>')
    assert c.done  # one call only (parallel_tool_calls false): the grammar is complete


def test_special_marker_tokens_are_matched_by_id(tok):
    assert grammar.lark_literal(tok, "<tool_call>") == '"<tool_call>"'  # SmolLM2 has no such token
    im_end = tok.vocab.token_to_id["<|im_end|>"]
    assert grammar.lark_literal(tok, "<|im_end|>") == f"<[{im_end}]>"


def test_hermes_answers_parse_into_content_and_calls():
    p = tools.plan(_declared(WEATHER, TIME), "auto", _hermes_template())
    text = ('Checking both.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
            '\n</tool_call>\n<tool_call>{"name": "get_time", "arguments": {"zone": "CET"}}</tool_call>')
    content, calls = tools.parse(text, p)
    assert content == "Checking both." and [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris", "unit": "celsius"}
    assert tools.parse("Just prose.", p) == ("Just prose.", [])
    cut = '<tool_call>{"name": "get_time", "arguments": {"zo'
    assert tools.parse(cut, p) == (cut, [])  # cut off by max_tokens: the text as it stands


# ---- through the server ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(smollm2_path):
    s = Server("-np", "2", "-c", "4096", "--chat-template-file", str(HERMES))
    yield s.client()
    s.stop()


@pytest.mark.slow
@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_forced_calls_in_the_template_format_validate(client, choice):
    out = client.chat.completions.create(model="x", messages=ASK, tools=[WEATHER, TIME], tool_choice=choice,
                                         temperature=0.8, seed=3, max_tokens=160, parallel_tool_calls=False)
    c0 = out.choices[0]
    assert c0.finish_reason == "tool_calls", c0
    (call,) = c0.message.tool_calls
    spec = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
    jsonschema.validate(json.loads(call.function.arguments), spec[call.function.name])
    if isinstance(choice, dict):
        assert call.function.name == "get_time"


@pytest.mark.slow
def test_auto_leaves_prose_free_and_history_goes_through_the_template(client):
    """Under auto the answer is free text until a <tool_call> (not the generic format's {"response": ...}
    object); a conversation holding an earlier call and its result renders and answers."""
    for seed in (1, 2, 3):
        out = client.chat.completions.create(model="x", messages=ASK, tools=[WEATHER, TIME], temperature=0.8,
                                             seed=seed, max_tokens=48)
        msg = out.choices[0].message
        if msg.tool_calls:
            assert out.choices[0].finish_reason == "tool_calls"
        else:
            assert msg.content and not msg.content.lstrip().startswith('{"response"')
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "celsius"})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees, sunny"}]
    out = client.chat.completions.create(model="x", messages=history, tools=[WEATHER], tool_choice="auto",
                                         temperature=0, max_tokens=24)
    assert out.choices[0].finish_reason in ("stop", "length", "tool_calls")
