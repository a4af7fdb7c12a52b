"""The conversation engine with SmolLM2 in-process: KV-cache reuse across turns gives the same reply as
evaluating the whole conversation afresh, interruption leaves a consistent cache, a full context drops
old turns, and the template fallback for a model without a template."""

from __future__ import annotations

import pytest

from llamatorch.core.chat_session import ChatSession, ContextFull
from llamatorch.core.chat_template import resolve
from llamatorch.core.engine import Engine
from llamatorch.core.sampling import Sampler, SamplerParams


@pytest.fixture(scope="module")
def engine(smollm2_path):
    return Engine(smollm2_path, n_ctx=512, dtype="f32", threads=2)


def _session(engine, **kw) -> ChatSession:
    tmpl = resolve(engine.file.metadata, engine.tokenizer, engine.file.architecture)
    sampler = Sampler(SamplerParams(temp=0), engine.n_vocab)
    return ChatSession(engine, tmpl, sampler, n_predict=kw.pop("n_predict", 8), **kw)


def _fresh_reply(engine, history: list[dict], text: str, n_predict: int):
    """The same turn with nothing reused: the whole conversation evaluated from position 0."""
    s = _session(engine, n_predict=n_predict)
    s.messages = [dict(m) for m in history]
    s.cached = []
    return s.reply(text)


def test_cache_reused_across_turns(engine):
    s = _session(engine)
    r1 = s.reply("Hi!")
    assert r1.text and r1.n_eval > 20  # the whole first prompt (SmolLM2's default system prompt too)
    history = [dict(m) for m in s.messages]
    r2 = s.reply("What is the capital of France?")
    # only the end of the last reply and the new turn are evaluated, not the conversation again
    assert r2.n_eval < 25, r2.n_eval
    assert "Paris" in r2.text
    assert r2.tokens == _fresh_reply(engine, history, "What is the capital of France?", 8).tokens


def test_interrupted_reply_keeps_cache_consistent(engine):
    s = _session(engine, n_predict=8)
    seen = []
    r1 = s.reply("Tell me a long story about a dragon.", seen.append, lambda: len(seen) >= 3)
    assert r1.stop == "interrupted" and len(r1.tokens) == 3
    assert s.messages[-1] == {"role": "assistant", "content": r1.text}
    history = [dict(m) for m in s.messages]
    r2 = s.reply("What is 2 + 2?")
    assert r2.n_eval < 25
    assert r2.tokens == _fresh_reply(engine, history, "What is 2 + 2?", 8).tokens


def test_context_full_drops_oldest_turns(smollm2_path):
    small = Engine(smollm2_path, n_ctx=96, dtype="f32", threads=2)
    s = _session(small, n_predict=4, system="Answer in one word.")
    msg = "Remember: " + " ".join(f"x{i}" for i in range(10))
    dropped = 0
    for _ in range(4):
        dropped += s.reply(msg).dropped
    assert dropped >= 2
    assert s.messages[0] == {"role": "system", "content": "Answer in one word."}
    n_before = len(s.messages)
    with pytest.raises(ContextFull, match="does not fit"):
        s.reply("word " * 200)
    assert len(s.messages) == n_before  # the message that did not fit was not kept, the history was
    assert s.reply("Hi").stop in ("eog", "limit", "context")


def test_system_prompt_replaces_default(engine):
    s = _session(engine, system="You are a pirate.")
    text = s.template.apply(s.messages + [{"role": "user", "content": "Hi"}], True)
    assert text.startswith("<|im_start|>system\nYou are a pirate.<|im_end|>\n<|im_start|>user\nHi")
    assert "SmolLM" not in text


def test_gemma_without_template_gets_gemma_builtin(gemma3_path):
    from llamatorch.core.gguf_file import GGUFFile
    from llamatorch.core.tokenizer import Tokenizer

    f = GGUFFile(gemma3_path)
    assert not f.metadata.get("tokenizer.chat_template")
    lines = []
    t = resolve(f.metadata, Tokenizer.from_metadata(f.metadata), f.architecture, log=lines.append)
    assert t.name == "gemma" and not t.explicit
    assert len(lines) == 1 and "gemma" in lines[0] and "ChatML" in lines[0]
    assert t.apply([{"role": "user", "content": "Hi"}], True) == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_template_choice_by_flag(engine):
    md, tok, arch = engine.file.metadata, engine.tokenizer, engine.file.architecture
    assert resolve(md, tok, arch, override="llama3").name == "llama3"
    inline = resolve(md, tok, arch, override="{% for m in messages %}[{{ m.content }}]{% endfor %}")
    assert inline.apply([{"role": "user", "content": "x"}], True) == "[x]"
    from llamatorch.core.errors import LlamatorchError

    with pytest.raises(LlamatorchError, match="not a built-in"):
        resolve(md, tok, arch, override="chatmlx")
    # --no-jinja: the model's Jinja only picks a built-in (llama.cpp's legacy path)
    assert resolve(md, tok, arch, use_jinja=False).name == "chatml"


def test_model_template_that_cannot_render(engine):
    """A model template that fails on a plain conversation falls back to the built-in it resembles;
    a hostile one is an error, never a fallback."""
    from llamatorch.core.errors import LlamatorchError

    md, tok = dict(engine.file.metadata), engine.tokenizer
    md["tokenizer.chat_template"] = "{{ functions.name }}<|start_header_id|><|end_header_id|>"
    lines = []
    assert resolve(md, tok, "llama", log=lines.append).name == "llama3"
    assert "llama3" in lines[0]
    md["tokenizer.chat_template"] = "{% for m in messages %}{{ m.__class__ }}{% endfor %}<|im_start|>"
    with pytest.raises(LlamatorchError, match="unsafe"):
        resolve(md, tok, "llama")
