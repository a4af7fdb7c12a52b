"""llama.cpp's built-in chat templates (src/llama-chat.cpp): names, detection from a Jinja source, and
the exact strings each one produces.  `--chat-template NAME` uses these; a model's own Jinja template
goes through `chat_jinja` instead.

Messages are (role, content) pairs.  Each formatter mirrors llm_chat_apply_template byte for byte,
including its quirks (Gemma merges the system prompt into the first user turn, Mistral v3 trims the
assistant's reply, ...).
"""

from __future__ import annotations

from typing import Callable, Sequence

Msg = tuple[str, str]

_WS = " \t\n\v\f\r"  # C isspace(): llama.cpp's trim() strips ASCII whitespace only


def _trim(s: str) -> str:
    return s.strip(_WS)


def _each(prefix_fn, gen_prompt: str = "") -> Callable[[Sequence[Msg], bool], str]:
    """The common shape: one string per message, then a generation prompt."""

    def fmt(msgs: Sequence[Msg], add_ass: bool) -> str:
        out = "".join(prefix_fn(r, c) for r, c in msgs)
        return out + (gen_prompt if add_ass else "")

    return fmt


def _mistral_v7(space: str):
    def fmt(msgs, add_ass):
        out = []
        for role, content in msgs:
            if role == "system":
                out.append(f"[SYSTEM_PROMPT]{space}{content}[/SYSTEM_PROMPT]")
            elif role == "user":
                out.append(f"[INST]{space}{content}[/INST]")
            else:
                out.append(f"{space}{content}</s>")
        return "".join(out)

    return fmt


def _mistral_v1_v3(variant: str):
    lead = " " if variant == "v1" else ""
    trail = "" if variant == "v3-tekken" else " "
    trim_ass = variant == "v3"

    def fmt(msgs, add_ass):
        out, inside = [], False
        for role, content in msgs:
            if not inside:
                out.append(f"{lead}[INST]{trail}")
                inside = True
            if role == "system":
                out.append(content + "\n\n")
            elif role == "user":
                out.append(f"{content}{lead}[/INST]")
            else:
                out.append(f"{trail}{_trim(content) if trim_ass else content}</s>")
                inside = False
        return "".join(out)

    return fmt


def _llama2(system: bool, bos_inside: bool, strip: bool):
    def fmt(msgs, add_ass):
        out, inside = ["[INST] "], True  # no BOS at the very start: the tokenizer adds it
        for role, content in msgs:
            content = _trim(content) if strip else content
            if not inside:
                inside = True
                out.append("<s>[INST] " if bos_inside else "[INST] ")
            if role == "system":
                out.append(f"<<SYS>>\n{content}\n<</SYS>>\n\n" if system else content + "\n")
            elif role == "user":
                out.append(content + " [/INST]")
            else:
                out.append(content + "</s>")
                inside = False
        return "".join(out)

    return fmt


def _gemma(msgs, add_ass):
    out, system = [], ""
    for role, content in msgs:
        if role == "system":  # Gemma has no system turn: merged into the next user turn
            system += _trim(content)
            continue
        role = "model" if role == "assistant" else role
        out.append(f"<start_of_turn>{role}\n")
        if system and role != "model":
            out.append(system + "\n\n")
            system = ""
        out.append(_trim(content) + "<end_of_turn>\n")
    if add_ass:
        out.append("<start_of_turn>model\n")
    return "".join(out)


def _orion(msgs, add_ass):
    out, system = [], ""
    for role, content in msgs:
        if role == "system":
            system += content
        elif role == "user":
            out.append("Human: ")
            if system:
                out.append(system + "\n\n")
                system = ""
            out.append(content + "\n\nAssistant: </s>")
        else:
            out.append(content + "</s>")
    return "".join(out)


def _openchat(msgs, add_ass):
    out = []
    for role, content in msgs:
        if role == "system":
            out.append(content + "<|end_of_turn|>")
        else:
            out.append(f"GPT4 Correct {role[:1].upper() + role[1:]}: {content}<|end_of_turn|>")
    return "".join(out) + ("GPT4 Correct Assistant:" if add_ass else "")


def _vicuna(orca: bool):
    def fmt(msgs, add_ass):
        out = []
        for role, content in msgs:
            if role == "system":
                out.append(f"SYSTEM: {content}\n" if orca else content + "\n\n")
            elif role == "user":
                out.append(f"USER: {content}\n")
            elif role == "assistant":
                out.append(f"ASSISTANT: {content}</s>\n")
        return "".join(out) + ("ASSISTANT:" if add_ass else "")

    return fmt


def _by_role(table: dict[str, str], gen_prompt: str, trim: bool = False, default: str | None = None):
    """Each role maps to a format string with {c}; roles not in the table are skipped (or `default`)."""

    def fmt(msgs, add_ass):
        out = []
        for role, content in msgs:
            f = table.get(role, default)
            if f is not None:
                out.append(f.format(c=_trim(content) if trim else content, r=role))
        return "".join(out) + (gen_prompt if add_ass else "")

    return fmt


def _monarch(msgs, add_ass):
    out = [("" if i == 0 else "<s>") + f"{r}\n{c}</s>\n" for i, (r, c) in enumerate(msgs)]
    return "".join(out) + ("<s>assistant\n" if add_ass else "")


def _minicpm(msgs, add_ass):
    return "".join(f"<用户>{_trim(c)}<AI>" if r == "user" else _trim(c) for r, c in msgs)


def _rwkv(msgs, add_ass):
    out = []
    for i, (role, content) in enumerate(msgs):
        if role == "system":
            out.append(f"System: {_trim(content)}\n\n")
        elif role == "user":
            out.append(f"User: {_trim(content)}\n\n")
            if i == len(msgs) - 1:
                out.append("Assistant:")
        elif role == "assistant":
            out.append(f"Assistant: {_trim(content)}\n\n")
    return "".join(out)


def _granite(v4: bool):
    def fmt(msgs, add_ass):
        out = []
        for role, content in msgs:
            if role == "assistant_tool_call":
                out.append("<|start_of_role|>assistant<|end_of_role|><|tool_call|>" if v4
                           else "<|start_of_role|>assistant_tool_call<|end_of_role|><|tool_call|>")
            else:
                out.append(f"<|start_of_role|>{role}<|end_of_role|>")
            out.append(content + "<|end_of_text|>\n")
        return "".join(out) + ("<|start_of_role|>assistant<|end_of_role|>" if add_ass else "")

    return fmt


def _gigachat(msgs, add_ass):
    has_sys = bool(msgs) and msgs[0][0] == "system"
    out = [f"<s>{msgs[0][1]}<|message_sep|>" if has_sys else "<s>"]
    for role, content in msgs[1 if has_sys else 0:]:
        if role == "user":
            out.append(f"user<|role_sep|>{content}<|message_sep|>available functions<|role_sep|>[]<|message_sep|>")
        elif role == "assistant":
            out.append(f"assistant<|role_sep|>{content}<|message_sep|>")
    return "".join(out) + ("assistant<|role_sep|>" if add_ass else "")


def _bailing(think: bool):
    def fmt(msgs, add_ass):
        out = "".join(f"<role>{'HUMAN' if r == 'user' else r.upper()}</role>{c}" for r, c in msgs)
        return out + (("<role>ASSISTANT</role>" + ("<think>" if think else "")) if add_ass else "")

    return fmt


def _bailing2(msgs, add_ass):
    out = [] if msgs and msgs[0][0] == "system" else ["<role>SYSTEM</role>detailed thinking off<|role_end|>"]
    out += [f"<role>{'HUMAN' if r == 'user' else r.upper()}</role>{c}<|role_end|>" for r, c in msgs]
    return "".join(out) + ("<role>ASSISTANT</role>" if add_ass else "")


def _smolvlm(msgs, add_ass):
    out = ["<|im_start|>"]
    for role, content in msgs:
        if role == "system":
            out.append(content + "\n\n")
        elif role == "user":
            out.append(f"User: {content}<end_of_utterance>\n")
        else:
            out.append(f"Assistant: {content}<end_of_utterance>\n")
    return "".join(out) + ("Assistant:" if add_ass else "")


def _seed_oss(msgs, add_ass):
    out = "".join(f"<seed:bos>{r}\n{_trim(c) if r == 'assistant' else c}<seed:eos>" for r, c in msgs)
    return out + ("<seed:bos>assistant\n" if add_ass else "")


def _gpt_oss(msgs, add_ass):
    out = "".join(f"<|start|>{r}<|message|>{c}" + ("<|return|>" if r == "assistant" else "<|end|>") for r, c in msgs)
    return out + ("<|start|>assistant" if add_ass else "")


def _kimi_k2(msgs, add_ass):
    heads = {"system": "<|im_system|>system<|im_middle|>", "user": "<|im_user|>user<|im_middle|>",
             "assistant": "<|im_assistant|>assistant<|im_middle|>", "tool": "<|im_system|>tool<|im_middle|>"}
    out = "".join(heads.get(r, "") + c + "<|im_end|>" for r, c in msgs)
    return out + ("<|im_assistant|>assistant<|im_middle|>" if add_ass else "")


BUILTIN: dict[str, Callable[[Sequence[Msg], bool], str]] = {
    "chatml": _each(lambda r, c: f"<|im_start|>{r}\n{c}<|im_end|>\n", "<|im_start|>assistant\n"),
    "llama2": _llama2(False, False, False),
    "llama2-sys": _llama2(True, False, False),
    "llama2-sys-bos": _llama2(True, True, False),
    "llama2-sys-strip": _llama2(True, False, True),
    "mistral-v1": _mistral_v1_v3("v1"),
    "mistral-v3": _mistral_v1_v3("v3"),
    "mistral-v3-tekken": _mistral_v1_v3("v3-tekken"),
    "mistral-v7": _mistral_v7(" "),
    "mistral-v7-tekken": _mistral_v7(""),
    "phi3": _each(lambda r, c: f"<|{r}|>\n{c}<|end|>\n", "<|assistant|>\n"),
    "phi4": _each(lambda r, c: f"<|im_start|>{r}<|im_sep|>{c}<|im_end|>", "<|im_start|>assistant<|im_sep|>"),
    "falcon3": _each(lambda r, c: f"<|{r}|>\n{c}\n", "<|assistant|>\n"),
    "zephyr": _each(lambda r, c: f"<|{r}|>\n{c}<|endoftext|>\n", "<|assistant|>\n"),
    "monarch": _monarch,
    "gemma": _gemma,
    "orion": _orion,
    "openchat": _openchat,
    "vicuna": _vicuna(False),
    "vicuna-orca": _vicuna(True),
    "deepseek": _by_role({"system": "{c}", "user": "### Instruction:\n{c}\n",
                          "assistant": "### Response:\n{c}\n<|EOT|>\n"}, "### Response:\n"),
    "deepseek2": _by_role({"system": "{c}\n\n", "user": "User: {c}\n\n",
                           "assistant": "Assistant: {c}<｜end▁of▁sentence｜>"}, "Assistant:"),
    "deepseek3": _by_role({"system": "{c}\n\n", "user": "<｜User｜>{c}",
                           "assistant": "<｜Assistant｜>{c}<｜end▁of▁sentence｜>"}, "<｜Assistant｜>"),
    "command-r": _by_role({"system": "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>{c}<|END_OF_TURN_TOKEN|>",
                           "user": "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>{c}<|END_OF_TURN_TOKEN|>",
                           "assistant": "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>{c}<|END_OF_TURN_TOKEN|>"},
                          "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>", trim=True),
    "llama3": _by_role({}, "<|start_header_id|>assistant<|end_header_id|>\n\n", trim=True,
                       default="<|start_header_id|>{r}<|end_header_id|>\n\n{c}<|eot_id|>"),
    "chatglm3": lambda m, a: "[gMASK]sop" + "".join(f"<|{r}|>\n {c}" for r, c in m) + ("<|assistant|>" if a else ""),
    "chatglm4": lambda m, a: "[gMASK]<sop>" + "".join(f"<|{r}|>\n{c}" for r, c in m) + ("<|assistant|>\n" if a else ""),
    "glmedge": _each(lambda r, c: f"<|{r}|>\n{c}", "<|assistant|>"),
    "minicpm": _minicpm,
    "exaone3": _by_role({"system": "[|system|]{c}[|endofturn|]\n", "user": "[|user|]{c}\n",
                         "assistant": "[|assistant|]{c}[|endofturn|]\n"}, "[|assistant|]", trim=True),
    "exaone4": _by_role({"system": "[|system|]{c}[|endofturn|]\n", "user": "[|user|]{c}\n",
                         "assistant": "[|assistant|]{c}[|endofturn|]\n", "tool": "[|tool|]{c}[|endofturn|]\n"},
                        "[|assistant|]", trim=True),
    "exaone-moe": _by_role({r: f"<|{r}|>\n{{c}}<|endofturn|>\n" for r in ("system", "user", "assistant", "tool")},
                           "<|assistant|>\n", trim=True),
    "rwkv-world": _rwkv,
    "granite": _granite(False),
    "granite-4.0": _granite(True),
    "granite-4.1": _granite(True),
    "gigachat": _gigachat,
    "megrez": _each(lambda r, c: f"<|role_start|>{r}<|role_end|>{c}<|turn_end|>", "<|role_start|>assistant<|role_end|>"),
    "yandex": _by_role({"user": " Пользователь: {c}\n\n", "assistant": " Ассистент: {c}\n\n"}, " Ассистент:[SEP]"),
    "bailing": _bailing(False),
    "bailing-think": _bailing(True),
    "bailing2": _bailing2,
    "llama4": _by_role({}, "<|header_start|>assistant<|header_end|>\n\n", trim=True,
                       default="<|header_start|>{r}<|header_end|>\n\n{c}<|eot|>"),
    "smolvlm": _smolvlm,
    "gpt-oss": _gpt_oss,
    "kimi-k2": _kimi_k2,
    "seed_oss": _seed_oss,
    "solar-open": _each(lambda r, c: f"<|begin|>{r}<|content|>{c}<|end|>", "<|begin|>assistant"),
}


def apply_builtin(name: str, messages: Sequence[Msg], add_generation_prompt: bool) -> str:
    return BUILTIN[name](list(messages), add_generation_prompt)


def detect(src: str) -> str | None:
    """llm_chat_detect_template: a built-in name for a Jinja source (by its telltale strings), or None."""
    if src in BUILTIN:
        return src
    has = src.__contains__
    if has("<|im_start|>"):
        return "phi4" if has("<|im_sep|>") else "smolvlm" if has("<end_of_utterance>") else "chatml"
    if src.startswith("mistral") or has("[INST]"):
        if has("[SYSTEM_PROMPT]"):
            return "mistral-v7"
        if has("' [INST] ' + system_message") or has("[AVAILABLE_TOOLS]"):
            return "mistral-v1" if has(" [INST]") else "mistral-v3-tekken" if has('"[INST]"') else "mistral-v3"
        if has("content.strip()"):
            return "llama2-sys-strip"
        if has("bos_token + '[INST]"):
            return "llama2-sys-bos"
        return "llama2-sys" if has("<<SYS>>") else "llama2"
    rules: list[tuple[Callable[[], bool], str]] = [
        (lambda: has("<|assistant|>") and has("<|end|>"), "phi3"),
        (lambda: has("[gMASK]<sop>"), "chatglm4"),
        (lambda: has("<|assistant|>") and has("<|user|>"),
         "exaone-moe" if has("<|tool_declare|>") else "falcon3" if has("</s>") else "glmedge"),
        (lambda: has("<|{{ item['role'] }}|>") and has("<|begin_of_image|>"), "glmedge"),
        (lambda: has("<|user|>") and has("<|endoftext|>"), "zephyr"),
        (lambda: has("bos_token + message['role']"), "monarch"),
        (lambda: has("<start_of_turn>"), "gemma"),
        (lambda: has("'\\n\\nAssistant: ' + eos_token"), "orion"),
        (lambda: has("GPT4 Correct "), "openchat"),
        (lambda: has("USER: ") and has("ASSISTANT: "), "vicuna-orca" if has("SYSTEM: ") else "vicuna"),
        (lambda: has("### Instruction:") and has("<|EOT|>"), "deepseek"),
        (lambda: has("<|START_OF_TURN_TOKEN|>") and has("<|USER_TOKEN|>"), "command-r"),
        (lambda: has("<|start_header_id|>") and has("<|end_header_id|>"), "llama3"),
        (lambda: has("[gMASK]sop"), "chatglm3"),
        (lambda: has("<用户>"), "minicpm"),
        (lambda: has("'Assistant: ' + message['content'] + eos_token"), "deepseek2"),
        (lambda: has("<｜Assistant｜>") and has("<｜User｜>") and has("<｜end▁of▁sentence｜>"), "deepseek3"),
        (lambda: has("[|system|]") and has("[|assistant|]") and has("[|endofturn|]"),
         "exaone4" if has("[|tool|]") else "exaone3"),
        (lambda: has("rwkv-world") or has("{{- 'User: ' + message['content']|trim + '\\n\\n' -}}"), "rwkv-world"),
        (lambda: has("<|start_of_role|>"),
         ("granite-4.0" if has("g4_default_system_message") else "granite-4.1")
         if (has("<tool_call>") or has("<tools>")) else "granite"),
        (lambda: has("message['role'] + additional_special_tokens[0] + message['content'] + "
                     "additional_special_tokens[1]"), "gigachat"),
        (lambda: has("<|role_start|>"), "megrez"),
        (lambda: has(" Ассистент:"), "yandex"),
        (lambda: has("<role>ASSISTANT</role>") and has("'HUMAN'"), "bailing"),
        (lambda: has("<role>ASSISTANT</role>") and has('"HUMAN"') and has("<think>"), "bailing-think"),
        (lambda: has("<role>ASSISTANT</role>") and has("<role>HUMAN</role>") and has("<|role_end|>"), "bailing2"),
        (lambda: has("<|header_start|>") and has("<|header_end|>"), "llama4"),
        (lambda: has("<|start|>") and has("<|channel|>"), "gpt-oss"),
        (lambda: has("<|im_assistant|>assistant<|im_middle|>"), "kimi-k2"),
        (lambda: has("<seed:bos>"), "seed_oss"),
        (lambda: has("<|begin|>") and has("<|end|>") and has("<|content|>"), "solar-open"),
    ]
    for test, name in rules:
        if test():
            return name
    return None
