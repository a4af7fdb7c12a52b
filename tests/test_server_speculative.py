"""Speculative decoding in `llamatorch server`: a server-wide draft model (-md), per-request settings
(off unless asked), greedy answers identical to plain ones, llama-server's draft counts in timings."""

from __future__ import annotations

import concurrent.futures

import pytest

from conftest import assert_clean_error, run_cli
from helpers.server_process import Server

pytestmark = pytest.mark.slow
openai = pytest.importorskip("openai")

STORY = "Once upon a time, in a quiet village by the sea, there lived an old fisherman who"
REPEAT = ("Copy the list exactly.\nList: apples, pears, plums, cherries, grapes, melons, lemons, limes, figs, dates.\n"
          "Copy: apples, pears, plums, cherries, grapes, melons, lemons, limes, figs, dates.\nCopy: apples, pears,")


@pytest.fixture(scope="module")
def draft_path(smollm2_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("draft") / "draft-q4_0.gguf"
    made = run_cli("quantize", "--allow-requantize", str(smollm2_path), str(out), "Q4_0")
    assert made.returncode == 0, made.stderr
    return out


@pytest.fixture(scope="module")
def server(draft_path):
    s = Server("-np", "2", "-c", "2048", "-md", str(draft_path), "--draft-p-min", "0.5")
    yield s
    s.stop()


def _complete(server, prompt, **extra):
    # (cache_prompt off: a prompt evaluated whole each time; a reused cache evaluates its last token alone,
    # whose rounding differs from the batch's and may turn a close greedy call)
    r = server.post("/completion", {"prompt": prompt, "n_predict": 40, "temperature": 0, "cache_prompt": False,
                                    **extra})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("prompt,spec", [(STORY, {"speculative.n_max": 8}),
                                          (REPEAT, {"speculative.type": "ngram", "speculative.n_max": 16}),
                                          (REPEAT, {"speculative.type": "draft"})])
def test_greedy_answers_equal_plain_ones(server, prompt, spec):
    plain = _complete(server, prompt)
    assert "draft_n" not in plain["timings"]  # off unless asked for
    fast = _complete(server, prompt, **spec)
    assert fast["content"] == plain["content"] and fast["tokens_predicted"] == plain["tokens_predicted"]
    t = fast["timings"]
    assert t["draft_n"] > 0 and 0 < t["draft_n_accepted"] <= t["draft_n"]


def test_openai_client_and_a_plain_neighbour(server):
    """Through the official client, streamed and not, and beside a plain request: the same answer."""
    ask = [{"role": "user", "content": "Name three colours of the rainbow."}]

    def chat(extra):
        out = server.client().chat.completions.create(model="x", messages=ask, temperature=0, max_tokens=32,
                                                      extra_body={"cache_prompt": False, **extra})
        return out.choices[0].message.content

    alone = chat({})
    assert chat({"speculative.n_max": 6}) == alone
    stream = server.client().chat.completions.create(model="x", messages=ask, temperature=0, max_tokens=32,
                                                     stream=True, extra_body={"speculative.n_max": 6,
                                                                              "cache_prompt": False})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == alone
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # a decode step of two sequences: rows as alone
        both = [pool.submit(chat, {"speculative.n_max": 6}), pool.submit(chat, {})]
        assert [f.result() for f in both] == [alone, alone]


def test_bad_speculative_requests(server):
    for body, fragment in (({"speculative.n_max": 100}, "speculative.n_max"),
                           ({"speculative.type": "eagle"}, "speculative.type"),
                           ({"speculative.n_max": 2, "speculative.n_min": 3}, "n_min")):
        r = server.post("/completion", {"prompt": "hi", "n_predict": 2, **body})
        assert r.status_code == 400 and fragment in r.text, r.text


def test_draft_needs_a_draft_model(smollm2_path):
    s = Server("-np", "1", "-c", "512")
    try:
        r = s.post("/completion", {"prompt": REPEAT, "n_predict": 8, "temperature": 0, "speculative.type": "draft"})
        assert r.status_code == 400 and "-md" in r.text
        ask = {"prompt": REPEAT, "n_predict": 24, "temperature": 0, "cache_prompt": False}
        plain = s.post("/completion", ask).json()
        ngram = s.post("/completion", {**ask, "speculative.n_max": 8}).json()  # (no -md: n-gram lookup)
        assert ngram["content"] == plain["content"]
    finally:
        s.stop()


def test_server_refuses_a_draft_with_another_vocabulary(smollm2_path, gemma3_path):
    proc = run_cli("server", "-m", str(smollm2_path), "-md", str(gemma3_path), "--port", "1")
    assert_clean_error(proc, "vocabulary type")
