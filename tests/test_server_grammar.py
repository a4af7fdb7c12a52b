"""Constrained output through `llamatorch server`: OpenAI's response_format (through the official client),
llama-server's grammar / json_schema fields, streaming under a grammar, and 400s for bad ones."""

from __future__ import annotations

import json

import pytest

from helpers.server_process import Server

pytestmark = pytest.mark.slow
openai = pytest.importorskip("openai")

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}
ASK = [{"role": "user", "content": "Describe a person called Ann who is 31, as JSON."}]


@pytest.fixture(scope="module")
def server(smollm2_path):
    s = Server("-np", "2", "-c", "2048")
    yield s
    s.stop()


def test_response_format_json_schema(server):
    out = server.client().chat.completions.create(
        model="x", messages=ASK, temperature=0, max_tokens=64,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}})
    value = json.loads(out.choices[0].message.content)
    assert set(value) == {"name", "age"} and isinstance(value["age"], int)
    assert out.choices[0].finish_reason == "stop"


def test_response_format_streams(server):
    chunks = list(server.client().chat.completions.create(
        model="x", messages=ASK, temperature=0, max_tokens=64, stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert set(json.loads(text)) == {"name", "age"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_response_format_json_object(server):
    out = server.client().chat.completions.create(
        model="x", messages=[{"role": "user", "content": 'Reply with the JSON object {"ok": true} and nothing else.'}],
        temperature=0, max_tokens=256, response_format={"type": "json_object"})
    assert out.choices[0].finish_reason == "stop", out.choices[0].message.content
    assert isinstance(json.loads(out.choices[0].message.content), dict)


def test_native_grammar_and_json_schema_fields(server):
    r = server.post("/completion", {"prompt": "The answer is", "n_predict": 8, "temperature": 0,
                                    "grammar": 'root ::= ("yes" | "no") "."'})
    assert r.status_code == 200, r.text
    assert r.json()["content"] in ("yes.", "no.")
    r = server.post("/completion", {"prompt": "Colour:", "n_predict": 8, "temperature": 0,
                                    "json_schema": {"type": "string", "enum": ["red", "blue"]}})
    assert json.loads(r.json()["content"]) in ("red", "blue")
    # a grammar longer than the token budget ends at the limit, not in a hang
    r = server.post("/completion", {"prompt": "a", "n_predict": 4, "grammar": 'root ::= "a"{100}'})
    assert r.status_code == 200 and r.json()["stop_type"] == "limit"


@pytest.mark.parametrize("body,fragment", [
    ({"grammar": "root ::= missing"}, "rule 'missing' not found"),
    ({"json_schema": {"type": "no-such-type"}}, "json schema"),
    ({"grammar": 'root ::= "a"', "json_schema": {}}, "one of"),
])
def test_bad_grammars_are_400(server, body, fragment):
    r = server.post("/completion", {"prompt": "x", "n_predict": 4, **body})
    assert r.status_code == 400, r.text
    assert fragment.lower() in r.json()["error"]["message"].lower()
    with pytest.raises(openai.BadRequestError):
        server.client().chat.completions.create(model="x", messages=ASK, max_tokens=4,
                                                response_format={"type": "json_schema",
                                                                 "json_schema": {"name": "x", "schema": {"type": 3}}})
