"""Which chat template a conversation uses, and turning messages into the prompt text.

Sources, in llama.cpp's order: ``--chat-template-file FILE`` / ``--chat-template NAME|JINJA``, then
the model's ``tokenizer.chat_template``.  A built-in name (chatml, llama3, gemma, ...) formats with
llama.cpp's hand-written formatter (`chat_builtin`); anything else is Jinja (`chat_jinja`, sandboxed).

When the model has no template llama.cpp falls back to ChatML, which is wrong for e.g. Gemma.  We
pick the built-in whose turn markers the vocabulary actually has, and say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .chat_builtin import BUILTIN, apply_builtin, detect
from .chat_jinja import JinjaTemplate, looks_like_jinja
from .errors import LlamatorchError


@dataclass
class ChatTemplate:
    name: str  # built-in name, or "jinja"
    source: str  # where it came from, for the log line
    jinja: JinjaTemplate | None = None
    add_bos: bool = False  # the tokenizer adds BOS itself: drop a leading bos_token from Jinja output
    add_eos: bool = False
    explicit: bool = True  # the model or the user gave a template (llama.cpp's "was_explicit")

    def apply(self, messages: list[dict], add_generation_prompt: bool, tools: list[dict] | None = None) -> str:
        """tools: OpenAI-shaped tool declarations for a Jinja template that lays them out itself."""
        if self.jinja is None:
            pairs = [(m["role"], m["content"]) for m in messages]
            return apply_builtin(self.name, pairs, add_generation_prompt)
        text = self.jinja.render(messages, add_generation_prompt, tools)
        # llama.cpp (common_chat_templates_apply_jinja): the tokenizer adds BOS/EOS, not the template
        bos, eos = self.jinja.bos_token, self.jinja.eos_token
        if self.add_bos and bos and text.startswith(bos):
            text = text[len(bos):]
        if self.add_eos and eos and text.endswith(eos):
            text = text[: -len(eos)]
        return text

    def example(self) -> str:
        """common_chat_format_example: what a short conversation looks like."""
        msgs = [{"role": "system", "content": "You are a helpful assistant"},
                {"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there"},
                {"role": "user", "content": "How are you?"}]
        return self.apply(msgs, True)


def builtin_names() -> list[str]:
    return sorted(BUILTIN)


def _piece(tok, tid) -> str:
    if tid is None:
        return ""
    return tok.token_to_piece(tid, special=True).decode("utf-8", errors="replace")


def _fallback_for(arch: str, tok) -> tuple[str, str]:
    """A built-in for a model without a template: (name, why)."""
    vocab = tok.vocab.token_to_id
    if arch.startswith("gemma") or "<start_of_turn>" in vocab:
        return "gemma", "its <start_of_turn>/<end_of_turn> turn markers"
    if "<|start_header_id|>" in vocab and "<|eot_id|>" in vocab:
        return "llama3", "its <|start_header_id|>/<|eot_id|> tokens"
    if "<|assistant|>" in vocab and "<|end|>" in vocab:
        return "phi3", "its <|assistant|>/<|end|> tokens"
    if "[INST]" in vocab:
        return ("mistral-v7" if "[SYSTEM_PROMPT]" in vocab else "llama2"), "its [INST] tokens"
    return "chatml", "llama.cpp's default"


def resolve(metadata: dict, tok, arch: str, override: str | None = None, override_file: str | None = None,
            log=None, use_jinja: bool = True) -> ChatTemplate:
    """The template for this model and these flags; `log` gets one line when we pick a fallback.

    use_jinja=False is llama.cpp's --no-jinja: a Jinja source is only used to detect a built-in.
    """
    if override is not None and override_file is not None:
        raise LlamatorchError("give either --chat-template or --chat-template-file, not both")
    bos, eos = _piece(tok, tok.vocab.special.get("bos")), _piece(tok, tok.vocab.special.get("eos"))

    def jinja(src: str, where: str) -> ChatTemplate:
        if not use_jinja:
            name = detect(src)
            if name is None:
                raise LlamatorchError(f"chat template ({where}) is not one llama.cpp's built-ins recognise: "
                                      "drop --no-jinja")
            return ChatTemplate(name, f"built-in '{name}' (detected from {where}, --no-jinja)")
        return ChatTemplate("jinja", where, JinjaTemplate(src, bos, eos), add_bos=tok.add_bos, add_eos=tok.add_eos)

    if override_file is not None:
        p = Path(override_file)
        if not p.is_file():
            raise LlamatorchError(f"chat template file not found: {override_file}")
        src = p.read_bytes().decode("utf-8", errors="replace")
        if src.strip() in BUILTIN:
            return ChatTemplate(src.strip(), f"built-in '{src.strip()}' (named in {p.name})")
        return jinja(src, f"Jinja from {p.name}")
    if override is not None:
        if override in BUILTIN:
            return ChatTemplate(override, f"built-in '{override}'")
        if not looks_like_jinja(override):
            raise LlamatorchError(f"--chat-template '{override}': not a built-in template name nor Jinja "
                                  f"(built-ins: {', '.join(builtin_names())})")
        return jinja(override, "inline Jinja (--chat-template)")
    src = metadata.get("tokenizer.chat_template")
    if isinstance(src, str) and src.strip():
        try:
            t = jinja(src, "the model's Jinja template (tokenizer.chat_template)")
            t.example()  # a template that cannot render a plain conversation fails here, not mid-chat
            return t
        except LlamatorchError as e:
            name = detect(src)
            if getattr(e, "hostile", False) or name is None:
                raise LlamatorchError(f"{e} (the model's own template; --chat-template NAME picks a built-in)") \
                    from None
            if log is not None:
                log(f"chat: the model's template does not render ({e}); using the built-in '{name}' it resembles")
            return ChatTemplate(name, f"built-in '{name}' (the model's template failed)")
    name, why = _fallback_for(arch, tok)
    if log is not None:
        extra = "" if name == "chatml" else " rather than llama.cpp's ChatML fallback"
        log(f"chat: the model has no chat template; using the built-in '{name}' template ({why}){extra}")
    return ChatTemplate(name, f"built-in '{name}' (fallback)", explicit=False)


__all__ = ["ChatTemplate", "resolve", "builtin_names", "detect"]
