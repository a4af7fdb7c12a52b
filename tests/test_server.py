"""`llamatorch server` as its users meet it: a real server process on a loopback port, the official
`openai` client for the OpenAI routes, plain HTTP (httpx) for llama-server's own routes and the errors."""

from __future__ import annotations

import concurrent.futures
import json
import os
import time

import httpx
import pytest

from conftest import assert_clean_error, run_cli
from helpers.server_process import Server

pytestmark = pytest.mark.slow
openai = pytest.importorskip("openai")

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(smollm2_path):
    s = Server("-np", "4", "-c", "4096")
    yield s
    s.stop()


def _assert_error(r: httpx.Response, status: int, fragment: str = "") -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and isinstance(err["message"], str) and err["type"]
    assert fragment.lower() in err["message"].lower(), err


def test_chat_completion_with_the_openai_client(server):
    out = server.client().chat.completions.create(model="x", messages=QUESTION, temperature=0, max_tokens=16)
    assert "Paris" in out.choices[0].message.content
    assert out.choices[0].finish_reason in ("stop", "length") and out.object == "chat.completion"
    assert out.usage.prompt_tokens > 10 and out.usage.completion_tokens > 0
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_stream_equals_the_whole_answer_and_reports_usage(server):
    c = server.client()
    whole = c.chat.completions.create(model="x", messages=QUESTION, temperature=0, max_tokens=20)
    chunks = list(c.chat.completions.create(model="x", messages=QUESTION, temperature=0, max_tokens=20, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_second_turn_reuses_the_cached_prompt(server):
    c = server.client()
    first = c.chat.completions.create(model="x", messages=QUESTION, temperature=0, max_tokens=8)
    follow = QUESTION + [{"role": "assistant", "content": first.choices[0].message.content},
                         {"role": "user", "content": "And of Germany?"}]
    second = c.chat.completions.create(model="x", messages=follow, temperature=0, max_tokens=8)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens - 1 and cached < second.usage.prompt_tokens


def test_completions_with_echo_and_stop(server):
    c = server.client()
    out = c.completions.create(model="x", prompt="One, two, three, four,", temperature=0, max_tokens=12, echo=True)
    assert out.choices[0].text.startswith("One, two, three, four,")
    stopped = c.completions.create(model="x", prompt="One, two, three, four,", temperature=0, max_tokens=12,
                                   stop=[","])
    assert "," not in stopped.choices[0].text and stopped.choices[0].finish_reason == "stop"


def test_native_completion_reports_timings(server):
    r = server.post("/completion", {"prompt": "The sky is", "n_predict": 6, "temperature": 0})
    body = r.json()
    assert r.status_code == 200 and body["stop"] is True and body["tokens_predicted"] <= 6
    t = body["timings"]
    assert t["prompt_n"] + t["cache_n"] == body["tokens_evaluated"] and t["predicted_n"] == body["tokens_predicted"]
    with httpx.stream("POST", server.url + "/completion", json={"prompt": "The sky is", "n_predict": 6,
                                                                "temperature": 0, "stream": True}, timeout=60) as s:
        events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: ")]
    assert "".join(e["content"] for e in events) == body["content"] and events[-1]["stop"] is True


def test_tokenize_detokenize_and_template(server):
    ids = server.post("/tokenize", {"content": "Hello world"}).json()["tokens"]
    assert ids and server.post("/detokenize", {"tokens": ids}).json()["content"] == "Hello world"
    pieces = server.post("/tokenize", {"content": "Hello world", "with_pieces": True}).json()["tokens"]
    assert "".join(p["piece"] for p in pieces) == "Hello world"
    prompt = server.post("/apply-template", {"messages": QUESTION}).json()["prompt"]
    assert "What is the capital of France?" in prompt and "<|im_start|>assistant" in prompt
    models = server.client().models.list()
    assert models.data[0].id == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_sixteen_concurrent_streams_match_their_solo_runs(server):
    """Isolation: greedy answers are the same alone and beside 15 others (4 slots, the rest queued)."""
    prompts = [f"Write a short sentence about the number {i}." for i in range(16)]
    lengths = [8 + (i * 5) % 17 for i in range(16)]
    c = server.client()

    def ask(i: int) -> str:
        chunks = c.chat.completions.create(model="x", messages=[{"role": "user", "content": prompts[i]}],
                                           temperature=0, max_tokens=lengths[i], stream=True,
                                           extra_body={"cache_prompt": False})
        return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)

    solo = [ask(i) for i in range(16)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        together = list(pool.map(ask, range(16)))
    assert together == solo


def test_a_client_that_leaves_frees_its_slot(server):
    with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=60,
                      json={"messages": QUESTION, "max_tokens": 900, "stream": True, "temperature": 1.0}) as s:
        for i, _ in enumerate(s.iter_lines()):
            if i > 4:
                break
    deadline = time.time() + 10
    while time.time() < deadline:
        if not any(slot["is_processing"] for slot in httpx.get(server.url + "/slots").json()):
            break
        time.sleep(0.1)
    assert not any(slot["is_processing"] for slot in httpx.get(server.url + "/slots").json())


@pytest.mark.parametrize("body, fragment", [
    ({"messages": "hello"}, "messages"),
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
    ({"messages": QUESTION, "max_tokens": -5}, "max_tokens"),
    ({"messages": QUESTION, "max_tokens": 10**9}, "max_tokens"),
    ({"messages": QUESTION, "n": 2}, "n = 1"),
    ({"messages": QUESTION, "temperature": "hot"}, "temperature"),
    ({"messages": [{"role": "user", "content": "word " * 5000}]}, "too long"),
])
def test_bad_chat_requests_are_400(server, body, fragment):
    _assert_error(server.post("/v1/chat/completions", body), 400, fragment)
    assert httpx.get(server.url + "/health").status_code == 200


def test_malformed_json_unknown_route_and_bad_tokens(server):
    _assert_error(server.post("/v1/chat/completions", content=b"{not json"), 400, "json")
    _assert_error(httpx.get(server.url + "/v1/nowhere"), 404)
    _assert_error(server.post("/detokenize", {"tokens": [10**9]}), 400, "vocabulary")
    _assert_error(server.post("/completion", {"n_predict": 3}), 400, "prompt")
    with pytest.raises(openai.BadRequestError):
        server.client().completions.create(model="x", prompt=[1, 2, -7], max_tokens=2)
    assert server.client().chat.completions.create(model="x", messages=QUESTION, temperature=0,
                                                   max_tokens=2).choices[0].message.content


def test_api_key_is_required_when_set(smollm2_path):
    s = Server("-np", "1", "-c", "512", "--api-key", "sesame")
    try:
        assert httpx.get(s.url + "/health").status_code == 200  # open, as llama-server's
        _assert_error(httpx.get(s.url + "/v1/models"), 401, "api key")
        with pytest.raises(openai.AuthenticationError):
            s.client(api_key="wrong").models.list()
        out = s.client(api_key="sesame").chat.completions.create(model="x", messages=QUESTION, max_tokens=2)
        assert out.choices[0].message.content is not None
    finally:
        err = s.stop()
    assert "Traceback" not in err, err


def test_bad_model_and_flags_are_one_line_errors(tmp_path):
    assert_clean_error(run_cli("server", "-m", str(tmp_path / "missing.gguf")), "not found")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(40))
    assert_clean_error(run_cli("server", "-m", str(bad)))
    assert_clean_error(run_cli("server", "-np", "0"), "-np")
    assert_clean_error(run_cli("server", "--port", "70000"), "port")
