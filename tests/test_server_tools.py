"""Tool calls through `llamatorch server` and the official openai client: forced (required / a named
function) calls always name a declared function with schema-valid arguments; auto may reply instead;
streaming; earlier calls and tool results in the history; bad tool_choice values are 400s."""

from __future__ import annotations

import json

import pytest

from helpers.server_process import Server

pytestmark = pytest.mark.slow
openai = pytest.importorskip("openai")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                     "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"]}}}  # (no additionalProperties: the server closes it)
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current time in a time zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"],
                   "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(smollm2_path):
    s = Server("-np", "2", "-c", "4096")
    yield s.client()
    s.stop()


def _check_call(call, tools) -> dict:
    spec = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    assert call.type == "function" and call.id and call.function.name in spec
    args = json.loads(call.function.arguments)
    params = spec[call.function.name]
    assert set(args) == set(params["required"])
    for key, value in args.items():
        prop = params["properties"][key]
        assert isinstance(value, str) and ("enum" not in prop or value in prop["enum"])
    return args


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_forced_calls_name_a_declared_function_with_valid_arguments(client, choice):
    out = client.chat.completions.create(model="x", messages=ASK, tools=[WEATHER, TIME], tool_choice=choice,
                                         temperature=0, max_tokens=96)
    choice0 = out.choices[0]
    assert choice0.finish_reason == "tool_calls" and choice0.message.content is None
    (call,) = choice0.message.tool_calls
    _check_call(call, [WEATHER, TIME])
    if isinstance(choice, dict):
        assert call.function.name == "get_time"


def test_auto_either_calls_or_replies(client):
    for seed in (1, 2):
        out = client.chat.completions.create(model="x", messages=ASK, tools=[WEATHER], tool_choice="auto",
                                             temperature=0.8, seed=seed, max_tokens=96)
        m = out.choices[0].message
        if m.tool_calls:
            _check_call(m.tool_calls[0], [WEATHER])
            assert out.choices[0].finish_reason == "tool_calls"
        else:
            assert isinstance(m.content, str) and out.choices[0].finish_reason in ("stop", "length")


def test_streamed_call_arrives_whole(client):
    chunks = list(client.chat.completions.create(model="x", messages=ASK, tools=[WEATHER], tool_choice="required",
                                                 temperature=0, max_tokens=96, stream=True))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].index == 0
    _check_call(calls[0], [WEATHER])
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_history_with_a_call_and_its_result(client):
    first = client.chat.completions.create(model="x", messages=ASK, tools=[WEATHER], tool_choice="required",
                                           temperature=0, max_tokens=96).choices[0].message
    call = first.tool_calls[0]
    messages = ASK + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                      {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 18, "sky": "clear"}'}]
    out = client.chat.completions.create(model="x", messages=messages, tools=[WEATHER], tool_choice="none",
                                         temperature=0, max_tokens=32)
    assert out.choices[0].message.content and not out.choices[0].message.tool_calls


@pytest.mark.parametrize("choice,fragment", [({"type": "function", "function": {"name": "nope"}}, "not among"),
                                             ("sometimes", "tool_choice")])
def test_bad_tool_choice_is_400(client, choice, fragment):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="x", messages=ASK, tools=[WEATHER], tool_choice=choice, max_tokens=8)
    assert fragment in str(e.value)
