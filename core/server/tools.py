"""Tool calls on /v1/chat/completions, enforced by a grammar, in one of two formats.

**The template's own (Hermes)**: a Jinja chat template that lays out `tools` itself and writes calls as
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Qwen 2.5/3, Hermes, SmolLM3 ...) gets the
tools as its `tools` variable, and the calls are constrained in that format:
- `"auto"` (the default when tools are given): llama.cpp's lazy grammar -- the model writes freely; once
  it writes `<tool_call>`, what follows must be a call of a declared function (core/grammar.LazyConstraint);
- `"required"` / a named function: the answer must be such calls from its first token.

**Generic** (llama.cpp's "generic" format, for any other template): the tools go into a system message
(names, descriptions, JSON-schema parameters) and the answer is constrained to one JSON object:
{"tool_call": {"name": <a declared tool>, "arguments": <its parameters>}}, or with `"auto"` that or
{"response": "<text for the user>"}.

Either way a call names a declared function and its arguments satisfy that function's schema
(`"none"`: no tools, free text).  The answer comes back as OpenAI's `tool_calls` (finish_reason
"tool_calls") or as plain content.  Earlier turns go back to the template in its format: the Hermes
one takes assistant `tool_calls` and `tool` messages as they are; the generic one gets the calls as
that JSON and a tool's result as a user message holding {"tool_response": ...}.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass

from .service import ApiError

SYSTEM = ("You can call these tools (JSON schemas of their parameters):\n{tools}\n\n"
          "Answer with one JSON object: {{\"tool_call\": {{\"name\": ..., \"arguments\": {{...}}}}}} to call a tool"
          "{or_respond}.")
OR_RESPOND = ", or {\"response\": \"...\"} to reply to the user directly"


OPEN, CLOSE = "<tool_call>", "</tool_call>"  # the Hermes format's markers


@dataclass
class ToolPlan:
    schema: dict  # what one call (Hermes) or the whole answer (generic) must match
    system: str | None = None  # generic: the message that declares the tools
    tools: list[dict] | None = None  # Hermes: the declarations the template lays out
    lazy: bool = False  # Hermes "auto": constrain from the first <tool_call> on
    parallel: bool = True  # Hermes: several calls in one answer

    @property
    def native(self) -> bool:
        return self.tools is not None


def plan(tools: list | None, tool_choice, template=None, parallel: bool | None = None) -> ToolPlan | None:
    """The constraint (and system message) for the request's tools, or None when there are none to call.
    `template`: the chat template, whose own tool format is used where it has one."""
    if not tools or tool_choice == "none":
        return None
    funcs = {t.function.name: t.function for t in tools}
    if isinstance(tool_choice, dict):  # {"type": "function", "function": {"name": ...}}
        name = (tool_choice.get("function") or {}).get("name")
        if name not in funcs:
            raise ApiError(400, f"tool_choice names {name!r}, which is not among the declared tools")
        names, respond = [name], False
    elif tool_choice in (None, "auto", "required"):
        names, respond = list(funcs), tool_choice != "required"
    else:
        raise ApiError(400, f"tool_choice must be none, auto, required or a named function, not {tool_choice!r}")
    calls = [{"type": "object", "properties": {"name": {"const": n}, "arguments": _closed(funcs[n].parameters)},
              "required": ["name", "arguments"], "additionalProperties": False} for n in names]
    call = calls[0] if len(calls) == 1 else {"anyOf": calls}
    if hermes(template):  # every declared tool goes to the template; the choice lives in the grammar
        declared = [{"type": "function", "function": {"name": f.name, "description": f.description or "",
                                                      "parameters": f.parameters or {"type": "object"}}}
                    for f in funcs.values()]
        return ToolPlan(call, tools=declared, lazy=respond, parallel=parallel is not False)
    schema = {"type": "object", "properties": {"tool_call": call}, "required": ["tool_call"],
              "additionalProperties": False}
    if respond:
        reply = {"type": "object", "properties": {"response": {"type": "string"}}, "required": ["response"],
                 "additionalProperties": False}
        schema = {"anyOf": [schema, reply]}
    listing = json.dumps([{"name": f.name, "description": f.description or "", "parameters": f.parameters or {}}
                          for f in funcs.values() if f.name in names], ensure_ascii=False)
    return ToolPlan(schema, SYSTEM.format(tools=listing, or_respond=OR_RESPOND if respond else ""))


def hermes(template) -> bool:
    """Whether a chat template lays out tools itself and calls them in <tool_call> tags."""
    jinja = getattr(template, "jinja", None)
    return jinja is not None and OPEN in jinja.source and "tools" in jinja.source


def hermes_grammar(p: ToolPlan, tokenizer) -> str:
    """The Lark grammar of Hermes calls: from just after the first <tool_call> (lazy) or from the start."""
    from ..grammar import lark_literal

    open_, close = lark_literal(tokenizer, OPEN), lark_literal(tokenizer, CLOSE)
    more = f"(WS? {open_} call)*" if p.parallel else ""
    first = "call" if p.lazy else f"WS? {open_} call"
    return (f"start: {first} {more}\n"
            f"call: WS? %json {json.dumps(p.schema)} WS? {close}\n"
            "WS: /[ \\t\\r\\n]+/\n")


def _closed(params: dict | None) -> dict:
    """A function's parameters with no keys beyond the declared ones unless it allows them (as OpenAI's
    strict mode): a JSON schema's default would let the model invent arguments."""
    params = dict(params or {"type": "object"})
    if params.get("type") == "object" and "additionalProperties" not in params:
        params["additionalProperties"] = False
    return params


def history(messages, native: bool = False) -> list[dict]:
    """The request's messages as the chat template takes them: the Hermes format's as they are
    (arguments as objects), the generic one's with tool calls and results as JSON text."""
    out = []
    for m in messages:
        role = "system" if m.role == "developer" else m.role
        if role == "assistant" and m.tool_calls:
            calls = [{"name": c.function.name, "arguments": _arguments(c.function.arguments)} for c in m.tool_calls]
            if native:
                out.append({"role": "assistant", "content": m.text() or "",
                            "tool_calls": [{"type": "function", "function": c} for c in calls]})
            else:
                text = "\n".join(json.dumps({"tool_call": c}, ensure_ascii=False) for c in calls)
                out.append({"role": "assistant", "content": text})
        elif role == "tool" and native:
            out.append({"role": "tool", "content": m.text(), "tool_call_id": m.tool_call_id})
        elif role == "tool":
            result = {"tool_response": {"tool_call_id": m.tool_call_id, "content": m.text()}}
            out.append({"role": "user", "content": json.dumps(result, ensure_ascii=False)})
        else:
            out.append({"role": role, "content": m.text()})
    return out


def with_tools(messages: list[dict], p: ToolPlan) -> list[dict]:
    """The tools' system message first (merged into the request's own system message when it has one)."""
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": messages[0]["content"] + "\n\n" + p.system}] + messages[1:]
    return [{"role": "system", "content": p.system}] + messages


def _arguments(args):
    if isinstance(args, str):
        try:
            return json.loads(args)
        except json.JSONDecodeError:
            return args
    return args


def _call(name: str, arguments) -> dict:
    return {"id": f"call_{secrets.token_hex(12)}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def parse(text: str, p: ToolPlan | None = None) -> tuple[str | None, list[dict]]:
    """The constrained answer -> (content, tool_calls in OpenAI's shape)."""
    if p is not None and p.native:
        return _parse_hermes(text)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:  # cut off by max_tokens: hand back what there is
        return text, []
    if "tool_call" in value:
        call = value["tool_call"]
        return None, [_call(call["name"], call["arguments"])]
    return value.get("response", text), []


def _parse_hermes(text: str) -> tuple[str | None, list[dict]]:
    """Prose, then <tool_call>{...}</tool_call> blocks (the prose alone when there is no call, or when
    the last call was cut off by max_tokens: then the text as it stands)."""
    first = text.find(OPEN)
    if first < 0:
        return text, []
    bodies = re.findall(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), text[first:], re.S)
    try:
        values = [json.loads(b) for b in bodies]
    except json.JSONDecodeError:
        return text, []
    if not values or not text.rstrip().endswith(CLOSE):
        return text, []
    return text[:first].strip() or None, [_call(v["name"], v["arguments"]) for v in values]
