"""`llamatorch server` beyond chat: log-probabilities, /metrics, slot files, embeddings, -kvu, shutting down
with streams open, and the chat page in a real headless Chromium."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time

import httpx
import numpy as np
import pytest

from conftest import run_cli
from helpers.server_process import Server

pytestmark = pytest.mark.slow
openai = pytest.importorskip("openai")

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(smollm2_path, tmp_path_factory):
    slots_dir = tmp_path_factory.mktemp("slots")
    s = Server("-np", "2", "-c", "2048", "--metrics", "--slot-save-path", str(slots_dir))
    s.slots_dir = slots_dir
    yield s
    s.stop()


def _error(r: httpx.Response, status: int, fragment: str = "") -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and fragment.lower() in err["message"].lower(), err


# ---- log-probabilities -------------------------------------------------------------------------------
def test_chat_logprobs_spell_the_answer_and_rank_the_greedy_token_first(server):
    out = server.client().chat.completions.create(model="x", messages=QUESTION, temperature=0, max_tokens=10,
                                                  logprobs=True, top_logprobs=3)
    content = out.choices[0].logprobs.content
    assert "".join(e.token for e in content) == out.choices[0].message.content
    for e in content:
        assert len(e.top_logprobs) == 3 and e.logprob <= 0
        assert e.top_logprobs[0].token == e.token and e.top_logprobs[0].logprob == pytest.approx(e.logprob)
        assert [t.logprob for t in e.top_logprobs] == sorted((t.logprob for t in e.top_logprobs), reverse=True)
        assert sum(math.exp(t.logprob) for t in e.top_logprobs) <= 1 + 1e-5
        assert bytes(e.bytes).decode("utf-8", "replace") == e.token
    plain = server.client().chat.completions.create(model="x", messages=QUESTION, temperature=0, max_tokens=10)
    assert plain.choices[0].logprobs is None and plain.choices[0].message.content == out.choices[0].message.content


def test_streamed_logprobs_cover_every_token(server):
    chunks = list(server.client().chat.completions.create(model="x", messages=QUESTION, temperature=0, max_tokens=12,
                                                          stream=True, logprobs=True, top_logprobs=1))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    tokens = [e.token for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert "".join(tokens) == text and text


def test_first_token_logprob_matches_the_model(server, smollm2_path):
    """The server's number is the log-softmax of the model's own logits for the prompt."""
    import torch

    from llamatorch.core.engine import Batch, Engine

    ids = server.post("/tokenize", {"content": "The capital of France is", "add_special": True}).json()["tokens"]
    body = server.post("/completion", {"prompt": ids, "n_predict": 1, "temperature": 0, "n_probs": 5,
                                       "cache_prompt": False}).json()
    first = body["completion_probabilities"][0]
    engine = Engine(smollm2_path, n_ctx=256, threads=2)
    with torch.inference_mode():
        lp = torch.log_softmax(engine.decode(Batch.sequence(ids))[-1].float(), -1)
    assert first["id"] == int(lp.argmax())
    assert first["logprob"] == pytest.approx(float(lp[first["id"]]), abs=2e-3)
    top_ids = [t["id"] for t in first["top_logprobs"]]
    assert top_ids[:3] == lp.topk(3).indices.tolist()


def test_post_sampling_probs_are_the_sampler_chains(server, smollm2_path):
    """llama-server's post_sampling_probs: `prob` / `top_probs` from the distribution the chain drew from
    (the lens's "after sampling" numbers), summing to 1 when n_probs covers every kept candidate."""
    import torch

    from llamatorch.core.engine import Batch, Engine
    from llamatorch.core.sampling import Sampler, SamplerParams

    ids = server.post("/tokenize", {"content": "The capital of France is", "add_special": True}).json()["tokens"]
    body = server.post("/completion", {"prompt": ids, "n_predict": 3, "temperature": 0.8, "seed": 11, "n_probs": 20,
                                       "post_sampling_probs": True, "cache_prompt": False}).json()
    probs = body["completion_probabilities"]
    assert len(probs) == 3 and all("prob" in p and "top_probs" in p and "logprob" not in p for p in probs)
    for p in probs:
        top = {t["id"]: t["prob"] for t in p["top_probs"]}
        assert sum(top.values()) == pytest.approx(1.0, abs=1e-4) and p["prob"] == pytest.approx(top[p["id"]])
    engine = Engine(smollm2_path, n_ctx=256, threads=2)
    with torch.inference_mode():
        logits = engine.decode(Batch.sequence(ids))[-1].float()
    chain_ids, chain_probs = Sampler(SamplerParams(temp=0.8), engine.n_vocab).distribution(logits)
    first = {t["id"]: t["prob"] for t in probs[0]["top_probs"]}
    assert list(first) == chain_ids.tolist()
    assert list(first.values()) == pytest.approx(chain_probs.tolist(), abs=3e-3)


def test_legacy_completion_logprobs(server):
    out = server.client().completions.create(model="x", prompt="One, two, three,", temperature=0, max_tokens=6,
                                             logprobs=2)
    lp = out.choices[0].logprobs
    assert "".join(lp.tokens) == out.choices[0].text
    assert len(lp.token_logprobs) == len(lp.tokens) == len(lp.top_logprobs) == len(lp.text_offset)
    assert all(len(t) <= 2 for t in lp.top_logprobs) and lp.text_offset == sorted(lp.text_offset)


def test_logprobs_stop_at_a_stop_string(server):
    body = server.post("/completion", {"prompt": "One, two, three,", "n_predict": 12, "temperature": 0,
                                       "n_probs": 1, "stop": [","]}).json()
    assert body["stop_type"] == "word"
    pieces = "".join(p["token"] for p in body["completion_probabilities"])
    assert pieces.startswith(body["content"]) and pieces.count(",") <= 1


# ---- /metrics ------------------------------------------------------------------------------------------
def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics:\n{text}")


def test_metrics_count_tokens(server):
    before = httpx.get(server.url + "/metrics").text
    r = server.post("/completion", {"prompt": "Tell me a story.", "n_predict": 5, "temperature": 0,
                                    "cache_prompt": False})
    assert r.status_code == 200
    after = httpx.get(server.url + "/metrics")
    assert after.status_code == 200 and after.headers["content-type"].startswith("text/plain")
    grew = _metric(after.text, "llamacpp:tokens_predicted_total") - _metric(before, "llamacpp:tokens_predicted_total")
    assert grew == r.json()["tokens_predicted"]
    assert _metric(after.text, "llamacpp:prompt_tokens_total") >= r.json()["tokens_evaluated"]
    assert 0 < _metric(after.text, "llamacpp:kv_cache_usage_ratio") <= 1
    assert _metric(after.text, "llamacpp:requests_processing") == 0


# ---- slots ---------------------------------------------------------------------------------------------
def test_slot_save_erase_restore(server):
    prompt = "Once upon a time, in a quiet village by the sea, there lived an old fisherman who"
    first = server.post("/completion", {"prompt": prompt, "n_predict": 4, "temperature": 0}).json()
    slot = first["id_slot"]
    saved = server.post(f"/slots/{slot}?action=save", {"filename": "story.bin"}).json()
    assert saved["n_saved"] >= first["tokens_evaluated"] and (server.slots_dir / "story.bin").is_file()
    assert [p.name for p in server.slots_dir.iterdir()] == ["story.bin"]  # no temporary left behind
    for s in range(2):
        assert server.post(f"/slots/{s}?action=erase").status_code == 200
    assert all(s["n_cached"] == 0 for s in httpx.get(server.url + "/slots").json())
    restored = server.post(f"/slots/{slot}?action=restore", {"filename": "story.bin"}).json()
    assert restored["n_restored"] == saved["n_saved"]
    again = server.post("/completion", {"prompt": prompt, "n_predict": 4, "temperature": 0}).json()
    assert again["tokens_cached"] == first["tokens_evaluated"] - 1 and again["content"] == first["content"]


@pytest.mark.parametrize("name", ["../escape.bin", "a/b.bin", ".hidden", "..", ""])
def test_slot_file_names_stay_in_the_folder(server, name):
    _error(server.post("/slots/0?action=save", {"filename": name}), 400)
    assert not (server.slots_dir.parent / "escape.bin").exists()


def test_slot_actions_refuse_bad_requests(server, tmp_path):
    _error(server.post("/slots/0?action=restore", {"filename": "missing.bin"}), 400, "not found")
    (server.slots_dir / "junk.bin").write_bytes(b"not a slot file")
    _error(server.post("/slots/0?action=restore", {"filename": "junk.bin"}), 400, "junk.bin")
    _error(server.post("/slots/9?action=erase"), 400, "does not exist")
    _error(server.post("/slots/0?action=fly"), 400, "action")
    assert httpx.get(server.url + "/health").status_code == 200


def test_features_off_by_default_answer_501(smollm2_path):
    s = Server("-np", "1", "-c", "512")
    try:
        _error(httpx.get(s.url + "/metrics"), 501, "--metrics")
        _error(s.post("/slots/0?action=save", {"filename": "x.bin"}), 501, "--slot-save-path")
        _error(s.post("/v1/embeddings", {"input": "hello"}), 501, "--embedding")
    finally:
        s.stop()


# ---- -kvu ----------------------------------------------------------------------------------------------
def test_unified_pool_lets_one_slot_take_the_whole_context(smollm2_path):
    long_prompt = "count: " + " ".join(str(i) for i in range(120))  # ~250 tokens: over 512 / 4 slots
    s = Server("-np", "4", "-c", "512", "-kvu")
    try:
        r = s.post("/completion", {"prompt": long_prompt, "n_predict": 4, "temperature": 0})
        assert r.status_code == 200 and r.json()["tokens_evaluated"] > 128, r.text
    finally:
        s.stop()
    s = Server("-np", "4", "-c", "512")
    try:
        _error(s.post("/completion", {"prompt": long_prompt, "n_predict": 4}), 400, "too long")
    finally:
        s.stop()


# ---- shutting down -------------------------------------------------------------------------------------
def test_sigterm_ends_open_streams_with_an_error_event(smollm2_path):
    s = Server("-np", "1", "-c", "4096")
    events = []
    with httpx.stream("POST", s.url + "/v1/chat/completions", timeout=60,
                      json={"messages": QUESTION, "max_tokens": 3000, "stream": True, "temperature": 1.0,
                            "seed": 1}) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if len(events) == 3:
                    t0 = time.time()
                    s.proc.send_signal(signal.SIGTERM)
    s.proc.wait(timeout=20)
    assert time.time() - t0 < 10
    last = json.loads(events[-1])
    assert "error" in last and "shutting down" in last["error"]["message"], events[-3:]
    assert "Traceback" not in s.stderr()


# ---- embeddings ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm_gguf(minilm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("minilm") / "minilm-f16.gguf"
    proc = run_cli("convert-hf-to-gguf", str(minilm_dir), "--outfile", str(out), "--outtype", "f16")
    assert proc.returncode == 0, proc.stderr
    return out


def test_embeddings_equal_llamatorch_embedding(minilm_gguf):
    texts = ["A cat sits on the mat.", "Quantum chromodynamics is hard."]
    cli = run_cli("embedding", "-m", str(minilm_gguf), "-p", "\n".join(texts), "--embd-output-format", "json")
    assert cli.returncode == 0, cli.stderr
    want = np.array([d["embedding"] for d in json.loads(cli.stdout)["data"]])
    s = Server("-m", str(minilm_gguf), "--embedding")
    try:
        got = s.client().embeddings.create(model="x", input=texts)  # the client asks for base64
        vecs = np.array([d.embedding for d in got.data])
        assert vecs.shape == want.shape and np.abs(vecs - want).max() < 1e-5
        assert got.usage.prompt_tokens > 10
        floats = s.post("/v1/embeddings", {"input": texts[0], "encoding_format": "float"}).json()
        assert np.abs(np.array(floats["data"][0]["embedding"]) - want[0]).max() < 1e-5
        ids = s.post("/tokenize", {"content": texts[1], "add_special": True}).json()["tokens"]
        by_ids = s.post("/v1/embeddings", {"input": ids, "encoding_format": "float"}).json()
        assert np.abs(np.array(by_ids["data"][0]["embedding"]) - want[1]).max() < 1e-5
        _error(s.post("/v1/chat/completions", {"messages": QUESTION}), 501, "--embedding")
        _error(s.post("/v1/embeddings", {"input": ""}), 400)
        _error(s.post("/v1/embeddings", {"input": "word " * 2000}), 400)
        assert httpx.get(s.url + "/health").status_code == 200
    finally:
        s.stop()


# ---- the chat page in Chromium -------------------------------------------------------------------------
def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        msg = "Debian's chromium is not installed (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def test_chat_page_streams_an_answer(server):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            assert page.title() == "llamatorch chat"
            page.click("summary")  # the settings
            page.fill("#temperature", "0")
            page.fill("#input", "What is the capital of France?")
            page.press("#input", "Enter")
            answer = page.locator(".assistant").first
            page.wait_for_function("document.querySelector('.assistant')?.dataset.state === 'done'", timeout=60000)
            assert "Paris" in answer.inner_text()
            assert "tokens/s" in page.inner_text("#stats")
            assert page.locator(".user").first.inner_text() == "What is the capital of France?"
            page.click("#clear")
            assert page.locator(".msg").count() == 0
        finally:
            browser.close()
