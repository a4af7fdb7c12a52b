"""Tool calls on /v1/chat/completions in llama.cpp's "generic" format, enforced by a grammar.

The declared tools go into a system message (their names, descriptions and JSON-schema parameters), and the
answer is constrained (core/grammar.py) to one JSON object:
- `tool_choice: "required"`: {"tool_call": {"name": <a declared tool>, "arguments": <its parameters>}};
- a named function: the same, for that function only;
- `"auto"` (the default when tools are given): that, or {"response": "<text for the user>"};
- `"none"`: no tools, free text.
So a call always names a declared function and its arguments always satisfy that function's schema.
The answer comes back as OpenAI's `tool_calls` (finish_reason "tool_calls") or as plain content.
Earlier turns travel the same way: an assistant's tool_calls as that JSON, a tool's result as a user
message holding {"tool_response": ...}.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

from .service import ApiError

SYSTEM = ("You can call these tools (JSON schemas of their parameters):\n{tools}\n\n"
          "Answer with one JSON object: {{\"tool_call\": {{\"name\": ..., \"arguments\": {{...}}}}}} to call a tool"
          "{or_respond}.")
OR_RESPOND = ", or {\"response\": \"...\"} to reply to the user directly"


@dataclass
class ToolPlan:
    schema: dict  # what the answer must match
    system: str  # the message that declares the tools


def plan(tools: list | None, tool_choice) -> ToolPlan | None:
    """The constraint and system message for the request's tools, or None when there are none to call."""
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
    call = {"type": "object", "properties": {"tool_call": calls[0] if len(calls) == 1 else {"anyOf": calls}},
            "required": ["tool_call"], "additionalProperties": False}
    schema = call
    if respond:
        reply = {"type": "object", "properties": {"response": {"type": "string"}}, "required": ["response"],
                 "additionalProperties": False}
        schema = {"anyOf": [call, reply]}
    listing = json.dumps([{"name": f.name, "description": f.description or "", "parameters": f.parameters or {}}
                          for f in funcs.values() if f.name in names], ensure_ascii=False)
    return ToolPlan(schema, SYSTEM.format(tools=listing, or_respond=OR_RESPOND if respond else ""))


def _closed(params: dict | None) -> dict:
    """A function's parameters with no keys beyond the declared ones unless it allows them (as OpenAI's
    strict mode): a JSON schema's default would let the model invent arguments."""
    params = dict(params or {"type": "object"})
    if params.get("type") == "object" and "additionalProperties" not in params:
        params["additionalProperties"] = False
    return params


def history(messages) -> list[dict]:
    """The request's messages as the chat template takes them (tool calls and results as JSON text)."""
    out = []
    for m in messages:
        role = "system" if m.role == "developer" else m.role
        if role == "assistant" and m.tool_calls:
            calls = [{"tool_call": {"name": c.function.name, "arguments": _arguments(c.function.arguments)}}
                     for c in m.tool_calls]
            out.append({"role": "assistant", "content": "\n".join(json.dumps(c, ensure_ascii=False) for c in calls)})
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


def parse(text: str) -> tuple[str | None, list[dict]]:
    """The constrained answer -> (content, tool_calls in OpenAI's shape)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:  # cut off by max_tokens: hand back what there is
        return text, []
    if "tool_call" in value:
        call = value["tool_call"]
        return None, [{"id": f"call_{secrets.token_hex(12)}", "type": "function",
                       "function": {"name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}]
    return value.get("response", text), []
