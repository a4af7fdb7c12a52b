"""Speculative decoding (core/speculative.py): greedy output identical to plain decoding, the sampled
output distributed as the target's, vocabulary checks and the cli flags."""

import math

import pytest
import torch

from conftest import assert_clean_error, run_cli
from helpers.tiny_decoders import hf_model, tiny_config, write_gguf
from helpers.tiny_llama import byte_level_vocab, hf_llama, requantize_gguf, tiny_llama_config, write_llama_gguf
from llamatorch.core import speculative as sp
from llamatorch.core.engine import Batch, Engine
from llamatorch.core.errors import LlamatorchError
from llamatorch.core.generate import generate
from llamatorch.core.sampling import Sampler, SamplerParams

GREEDY = SamplerParams(temp=0)


def chi2_critical(df: int, z: float = 3.09) -> float:
    """The chi-square quantile at p = 0.001 (z: the normal quantile), Wilson-Hilferty's approximation."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def chi2(counts: dict, probs: dict, n: int) -> tuple[float, int]:
    """Pearson's statistic over cells expecting >= 5 draws (the rest pooled into one); (stat, df)."""
    big = [c for c, p in probs.items() if p * n >= 5]
    stat, rest_p, rest_c = 0.0, 1.0, n
    for c in big:
        e = probs[c] * n
        stat += (counts.get(c, 0) - e) ** 2 / e
        rest_p -= probs[c]
        rest_c -= counts.get(c, 0)
    df = len(big) - 1
    if rest_p * n >= 5:
        stat += (rest_c - rest_p * n) ** 2 / (rest_p * n)
        df += 1
    return stat, df


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """A tiny llama target (f32) and drafts of it: its own Q4_0 copy and an unrelated model (other weights)."""
    d = tmp_path_factory.mktemp("spec")
    cfg = tiny_llama_config(max_position_embeddings=256)
    target = write_llama_gguf(hf_llama(cfg, seed=0), d / "target-f32.gguf")
    q4 = requantize_gguf(target, d / "target-q4_0.gguf", "Q4_0", "Q8_0")
    other = write_llama_gguf(hf_llama(cfg, seed=7), d / "other-f32.gguf")
    return target, q4, other


def _plain(engine, prompt, n, params=GREEDY):
    engine.cache.clear()
    return list(generate(engine, prompt, n, Sampler(params, engine.n_vocab)))


def _speculative(engine, prompt, n, spec, params=GREEDY):
    engine.cache.clear()
    return list(generate(engine, prompt, n, Sampler(params, engine.n_vocab), speculation=spec))


# ---- greedy: identical output ----------------------------------------------------------------------
PROMPTS = [[5, 9, 33, 41, 2], [100, 101, 102, 103, 100, 101, 102, 103, 100, 101], list(range(40, 70))]


@pytest.mark.parametrize("draft_name", ["q4", "other"])
@pytest.mark.parametrize("n_max", [1, 4, 16])
def test_greedy_draft_model_output_is_plain_output(tiny_pair, draft_name, n_max):
    target_path, q4, other = tiny_pair
    target = Engine(target_path, n_ctx=256, dtype="f32")
    draft = Engine(q4 if draft_name == "q4" else other, n_ctx=256, dtype="f32")
    spec = sp.Speculation(sp.ModelDrafter(draft, target, sp.DraftParams(n_max, 0, 0.0), GREEDY),
                          sp.DraftParams(n_max, 0, 0.0))
    for prompt in PROMPTS:
        assert _speculative(target, prompt, 60, spec) == _plain(target, prompt, 60)
    st = spec.stats
    assert st.drafted > 0 and st.rounds > 0
    if draft_name == "q4":  # its own quantized copy agrees mostly; an unrelated model seldom
        assert st.acceptance > 0.5 and st.tokens_per_forward > 1.5


def test_greedy_ngram_output_is_plain_output(tiny_pair):
    target = Engine(tiny_pair[0], n_ctx=256, dtype="f32")
    # a random model's greedy output falls into a loop of one token: 1-grams find it (longer patterns
    # match only their latest occurrence, whose continuation is too short, as in llama.cpp)
    for size_n in (1, 3):
        spec = sp.Speculation(sp.NgramDrafter(size_n, 16), sp.DraftParams(16, 0, 0.0))
        for prompt in PROMPTS + [list(range(50, 80)) * 3]:
            assert _speculative(target, prompt, 80, spec) == _plain(target, prompt, 80)
    assert spec.stats.drafted == 0
    spec = sp.Speculation(sp.NgramDrafter(1, 16), sp.DraftParams(16, 0, 0.0))
    assert _speculative(target, PROMPTS[0], 80, spec) == _plain(target, PROMPTS[0], 80)
    assert spec.stats.accepted > 20


@pytest.mark.parametrize("arch", ["qwen3", "gemma3"])
@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_greedy_identical_on_other_architectures(tmp_path, arch, dtype):
    """QK-norm (qwen3); Gemma's sliding window of 8 tokens, crossed by every draft of 16.  bf16: the
    CPU's fast path, whose checking forward reproduces single-token steps bit for bit."""
    f32 = write_gguf(hf_model(tiny_config(arch)), tmp_path / f"{arch}.gguf")
    path = requantize_gguf(f32, tmp_path / f"{arch}-q4.gguf", "Q4_0", "Q8_0") if dtype == "bf16" else f32
    target = Engine(path, n_ctx=128, dtype=dtype)
    draft = Engine(requantize_gguf(f32, tmp_path / f"{arch}-q8.gguf", "Q8_0"), n_ctx=128, dtype=dtype)
    params = sp.DraftParams(16, 0, 0.0)
    model_spec = sp.Speculation(sp.ModelDrafter(draft, target, params, GREEDY), params)
    for spec in (model_spec, sp.Speculation(sp.NgramDrafter(1, 16), params)):
        for prompt in PROMPTS[:2]:
            assert _speculative(target, prompt, 50, spec) == _plain(target, prompt, 50)
    assert model_spec.stats.accepted > 0


def test_limits_context_and_stop_tokens(tiny_pair):
    """-n stops exactly (drafts are cut to fit it), a full context ends it as plain decoding does, and
    the target cache holds exactly what was evaluated afterwards."""
    target = Engine(tiny_pair[0], n_ctx=40, dtype="f32")
    draft = Engine(tiny_pair[1], n_ctx=40, dtype="f32")
    params = sp.DraftParams(16, 0, 0.0)
    spec = sp.Speculation(sp.ModelDrafter(draft, target, params, GREEDY), params)
    prompt = PROMPTS[0]
    for n in (1, 2, 3, 17, -1):
        out = _speculative(target, prompt, n, spec)
        assert out == _plain(target, prompt, n)
        if n > 0:
            assert len(out) <= n
    # what the cache holds is the prompt and the evaluated output, token by token as plain decoding left it
    out = _speculative(target, prompt, 20, spec)
    held = target.cache.seq_len[0]
    assert len(prompt) + len(out) - 1 <= held <= target.n_ctx
    ref = Engine(tiny_pair[0], n_ctx=40, dtype="f32")
    full = (prompt + out)[:held]
    logits = ref.decode(Batch.sequence(full, start=0))
    nxt = target.decode(Batch.sequence([full[-1]], start=held - 1))
    torch.testing.assert_close(nxt[-1], logits[-1], rtol=1e-4, atol=1e-4)


def test_chat_with_speculation_matches_plain_chat(tiny_pair):
    """Several turns: the prefix reuse of the chat session stays right with draft tokens in the cache."""
    from llamatorch.core.chat_session import ChatSession
    from llamatorch.core.chat_template import resolve

    tmpl = resolve({}, Engine(tiny_pair[0], n_ctx=256).tokenizer, "llama", override="chatml")
    replies = []
    for use_spec in (False, True):
        target = Engine(tiny_pair[0], n_ctx=256, dtype="f32")
        spec = None
        if use_spec:
            draft = Engine(tiny_pair[1], n_ctx=256, dtype="f32")
            params = sp.DraftParams(8, 0, 0.0)
            spec = sp.Speculation(sp.ModelDrafter(draft, target, params, GREEDY), params)
        session = ChatSession(target, tmpl, Sampler(GREEDY, target.n_vocab), n_predict=12, speculation=spec)
        replies.append([session.reply(m).tokens for m in ("hello", "and then?", "bye")])
        if use_spec:
            assert spec.stats.accepted > 0
    assert replies[0] == replies[1]


# ---- sampling: the target's distribution -----------------------------------------------------------
def test_rejection_rule_gives_the_target_distribution():
    """accept_or_replace with a drafted token from q: the emitted token follows p (chi-square, p=0.001),
    for a draft that over- and under-rates tokens and one that proposes tokens p excludes."""
    p_ids = torch.tensor([3, 7, 1, 9, 4])
    p_probs = torch.tensor([0.4, 0.25, 0.2, 0.1, 0.05])
    q_ids = torch.tensor([7, 3, 8, 4])
    q_probs = torch.tensor([0.5, 0.2, 0.2, 0.1])  # token 8: outside p's support
    sampler = Sampler(SamplerParams(temp=1.0, seed=1), 16)
    gen = torch.Generator().manual_seed(2)
    n = 20000
    counts: dict[int, int] = {}
    for _ in range(n):
        d = int(q_ids[torch.multinomial(q_probs, 1, generator=gen)])
        _, token = sp.accept_or_replace(sampler, (p_ids, p_probs), d, (q_ids, q_probs))
        counts[token] = counts.get(token, 0) + 1
    assert 8 not in counts
    expected = {int(i): float(p) for i, p in zip(p_ids, p_probs)}
    stat, df = chi2(counts, expected, n)
    assert stat < chi2_critical(df), (stat, counts)
    # a deterministic draft (q = the drafted token with certainty) keeps it with probability p(d)
    kept = sum(sp.accept_or_replace(sampler, (p_ids, p_probs), 7, None)[0] for _ in range(4000))
    assert abs(kept / 4000 - 0.25) < 4 * math.sqrt(0.25 * 0.75 / 4000)


def test_sampled_speculation_follows_the_target(tiny_pair):
    """Seeded runs with an unrelated draft model: the first two tokens (the second one drafted and
    checked) occur with the target's own probabilities, within a chi-square bound."""
    target_path, _, other = tiny_pair
    target = Engine(target_path, n_ctx=64, dtype="f32")
    draft = Engine(other, n_ctx=64, dtype="f32")
    params = SamplerParams(temp=0.12, top_k=0, top_p=1.0, min_p=0.0)
    prompt = [5, 9, 33, 41]
    # the exact joint distribution of (t1, t2) under the target alone
    first = torch.softmax(target.decode(Batch.sequence(prompt))[-1] / params.temp, -1)
    joint = {}
    for t1 in torch.nonzero(first > 1e-4).flatten().tolist():
        target.cache.clear()
        second = torch.softmax(target.decode(Batch.sequence(prompt + [t1]))[-1] / params.temp, -1)
        for t2 in torch.nonzero(second > 1e-5).flatten().tolist():
            joint[(t1, t2)] = float(first[t1] * second[t2])
    dp = sp.DraftParams(3, 0, 0.0)
    spec = sp.Speculation(sp.ModelDrafter(draft, target, dp, params), dp)
    n, counts = 700, {}
    for seed in range(n):
        target.cache.clear()
        out = list(generate(target, prompt, 4, Sampler(SamplerParams(**{**params.__dict__, "seed": seed}),
                                                         target.n_vocab), speculation=spec))
        counts[tuple(out[:2])] = counts.get(tuple(out[:2]), 0) + 1
    assert spec.stats.drafted >= n and 0 < spec.stats.accepted < spec.stats.drafted  # drafts kept and refused
    stat, df = chi2(counts, joint, n)
    assert df >= 3 and stat < chi2_critical(df), (stat, df)


# ---- vocabulary checks and flags -------------------------------------------------------------------
def test_incompatible_vocabularies_are_refused(tmp_path, tiny_pair):
    target = Engine(tiny_pair[0], n_ctx=64, dtype="f32")
    cfg = tiny_llama_config()
    tokens = byte_level_vocab(260)
    tokens[100] = "<different>"
    other = Engine(write_llama_gguf(hf_llama(cfg), tmp_path / "v.gguf", vocab_tokens=tokens), n_ctx=64)
    with pytest.raises(LlamatorchError, match="token 100"):
        sp.ModelDrafter(other, target, sp.DraftParams(), GREEDY)
    bigger = Engine(write_llama_gguf(hf_llama(tiny_llama_config(vocab_size=400)), tmp_path / "b.gguf"), n_ctx=64)
    with pytest.raises(LlamatorchError, match="at most 128 apart"):
        sp.ModelDrafter(bigger, target, sp.DraftParams(), GREEDY)


def test_ngram_drafter_follows_llama_cpp_rules():
    d = sp.NgramDrafter(3, 5)
    hist = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 1, 2]
    # pattern [1, 2, 3] (the last token included) occurred at 1: what followed it is proposed
    assert d.propose(hist, 3, 16, True).tokens == [4, 5, 6, 7, 8]
    assert d.propose(hist, 3, 4, True).tokens == [4, 5, 6, 7]  # --draft-max bounds it
    assert d.propose(hist, 3, 2, True).tokens == []  # shorter than the pattern: not proposed
    assert d.propose(hist, 99, 16, True).tokens == []  # no earlier occurrence
    assert d.propose(hist[:5], 3, 16, True).tokens == []  # too little history
    assert d.propose([1, 2, 3] + hist[3:], 3, 16, True).tokens == []  # position 0 is never a match
    # only the latest occurrence counts: here its continuation (one token) is too short for n = 2,
    # though an earlier one had five
    assert sp.NgramDrafter(2, 5).propose([0, 5, 6, 1, 2, 3, 4, 5, 6, 5], 6, 16, True).tokens == []
    assert sp.NgramDrafter(2, 5).propose([0, 5, 6, 1, 2, 3, 4, 9, 9, 5], 6, 16, True).tokens == [1, 2, 3, 4, 9]


def test_cli_speculative_greedy_matches_plain(tiny_pair):
    target, q4, _ = tiny_pair
    args = ["cli", "-m", str(target), "-p", "abcabcabcabc", "-n", "40", "--temp", "0", "-no-cnv", "--dtype", "f32"]
    plain = run_cli(*args)
    assert plain.returncode == 0, plain.stderr
    for extra in (["-md", str(q4), "--draft-p-min", "0"], ["--spec-type", "ngram", "--spec-ngram-size-n", "2"]):
        spec = run_cli(*args, *extra)
        assert spec.returncode == 0, spec.stderr
        assert spec.stdout == plain.stdout
        assert "n_drafted = " in spec.stderr and "accept    = " in spec.stderr


@pytest.mark.parametrize("extra,fragment", [
    (["--spec-type", "bogus"], "unknown --spec-type"),
    (["--spec-type", "draft"], "needs a draft model"),
    (["--draft-max", "2", "--draft-min", "3", "--spec-type", "ngram"], "--draft-min"),
    (["--draft-p-min", "1.5", "--spec-type", "ngram"], "--draft-p-min"),
    (["-md", "/nonexistent/draft.gguf"], "not found"),
])
def test_cli_speculative_errors(tiny_pair, extra, fragment):
    proc = run_cli("cli", "-m", str(tiny_pair[0]), "-p", "hi", "-n", "4", "-no-cnv", *extra)
    assert_clean_error(proc, fragment)


def test_cli_refuses_a_draft_with_another_vocabulary(smollm2_path, gemma3_path):
    proc = run_cli("cli", "-m", str(smollm2_path), "-md", str(gemma3_path), "-p", "hi", "-n", "4", "-no-cnv")
    assert_clean_error(proc, "vocabulary type")


def test_real_model_greedy_identical(smollm2_path, tmp_path):
    """SmolLM2 Q4_1 on its fast decode path, drafted by a Q4_0 copy of itself and by n-gram lookup."""
    draft_path = tmp_path / "draft-q4_0.gguf"
    made = run_cli("quantize", "--allow-requantize", str(smollm2_path), str(draft_path), "Q4_0")
    assert made.returncode == 0, made.stderr
    target = Engine(smollm2_path, n_ctx=1024)
    draft = Engine(draft_path, n_ctx=1024)
    text = "Once upon a time, there was a little robot who lived in a small town. The robot"
    edit = ("Fix the typos: The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy "
            "dog.\nFixed: The quick brown fox")
    tok = target.tokenizer
    dp = sp.DraftParams(16, 0, 0.5)
    specs = [sp.Speculation(sp.ModelDrafter(draft, target, dp, GREEDY), dp),
             sp.Speculation(sp.NgramDrafter(4, 48), dp)]
    for prompt in (text, edit):
        ids = tok.encode(prompt, add_special=True, parse_special=True)
        plain = _plain(target, ids, 48)
        for spec in specs:
            assert _speculative(target, ids, 48, spec) == plain
    assert all(s.stats.accepted > 0 for s in specs)


def test_grammar_with_speculation_matches_plain_constrained_output(tiny_pair):
    """Drafts under a grammar: each checked token is masked as plain decoding would mask it, so the
    greedy output is the plain constrained output (and matches the grammar), with drafts both
    accepted and rejected along the way."""
    import re

    target, q4, _ = tiny_pair
    args = ["cli", "-m", str(target), "-p", "a1b2c3a1b2c3a1b2", "-n", "30", "--temp", "0", "-no-cnv", "--dtype",
            "f32", "--no-display-prompt", "--grammar", 'root ::= ("ab" | "ba" | "cd")+']
    plain = run_cli(*args)
    assert plain.returncode == 0, plain.stderr
    assert re.fullmatch(r"(ab|ba|cd)+", plain.stdout.strip()) and len(plain.stdout.strip()) == 30, plain.stdout
    for extra in (["-md", str(q4), "--draft-p-min", "0"], ["--spec-type", "ngram", "--spec-ngram-size-n", "2"]):
        spec = run_cli(*args, *extra)
        assert spec.returncode == 0, spec.stderr
        assert spec.stdout == plain.stdout
        counts = dict(re.findall(r"(n_drafted|n_accept) += (\d+)", spec.stderr))
        assert int(counts["n_drafted"]) > 0 and int(counts["n_accept"]) > 0, spec.stderr[-500:]
