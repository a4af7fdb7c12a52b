"""Request bodies of the server's endpoints (pydantic): OpenAI's fields and llama-server's own.

Unknown fields are accepted and ignored, as both servers do (clients send extras); wrong types, unknown
roles and out-of-range values are refused with a 400 that names the field.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .probs import MAX_TOP

MAX_TOKENS_LIMIT = 1 << 20  # an absurd max_tokens is refused rather than clamped


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Body):
    type: Literal["text"]
    text: str


class FunctionCall(_Body):
    name: str
    arguments: Union[str, dict] = "{}"


class ToolCall(_Body):
    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Body):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Union[str, list[TextPart], None] = None
    tool_calls: Optional[list[ToolCall]] = None  # an assistant's earlier calls
    tool_call_id: Optional[str] = None  # a tool's result answers this call

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Body):
    include_usage: bool = False


class JsonSchemaFormat(_Body):
    name: Optional[str] = None
    schema_: Optional[dict] = Field(None, alias="schema")
    strict: Optional[bool] = None


class ResponseFormat(_Body):
    """OpenAI's response_format: text, any JSON object, or JSON matching a schema (llama-server also
    takes the schema beside the type)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None
    schema_: Optional[dict] = Field(None, alias="schema")


class Sampling(_Body):
    """Sampling fields shared by every generation endpoint (llama-server's defaults)."""

    temperature: Optional[float] = Field(None, ge=0.0, le=100.0)
    top_p: Optional[float] = Field(None, ge=0.0, le=1.0)
    top_k: Optional[int] = Field(None, ge=0)
    min_p: Optional[float] = Field(None, ge=0.0, le=1.0)
    seed: Optional[int] = None
    presence_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    repeat_penalty: Optional[float] = Field(None, ge=0.0)
    stop: Union[str, list[str], None] = None
    cache_prompt: bool = True
    ignore_eos: bool = False
    n: int = 1  # choices per request: only 1
    # constrained output: OpenAI's response_format, llama-server's grammar (GBNF) and json_schema
    response_format: Optional[ResponseFormat] = None
    grammar: Optional[str] = None
    json_schema: Optional[dict] = None
    # speculative decoding, off unless asked for (llama-server's dotted names)
    speculative_type: Optional[Literal["draft", "ngram"]] = Field(None, alias="speculative.type")
    speculative_n_max: Optional[int] = Field(None, alias="speculative.n_max", ge=0, le=63)
    speculative_n_min: Optional[int] = Field(None, alias="speculative.n_min", ge=0, le=63)
    speculative_p_min: Optional[float] = Field(None, alias="speculative.p_min", ge=0.0, le=1.0)

    def grammar_spec(self) -> Optional[tuple[str, Union[str, dict]]]:
        """(kind, grammar) for grammar.compile_grammar, or None for free text."""
        given = [g for g in (self.grammar, self.json_schema) if g is not None]
        rf = self.response_format
        if rf is not None and rf.type != "text":
            schema = rf.schema_ or (rf.json_schema.schema_ if rf.json_schema else None)
            given.append(schema if schema is not None else {"type": "object"})
        if len(given) > 1:
            raise ValueError("give one of grammar, json_schema and response_format")
        if not given:
            return None
        return ("gbnf", given[0]) if isinstance(given[0], str) else ("json_schema", given[0])

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n = 1 is supported")
        return n

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [s for s in ([self.stop] if isinstance(self.stop, str) else self.stop) if s]


class FunctionDef(_Body):
    name: str = Field(min_length=1, max_length=64)
    description: Optional[str] = None
    parameters: Optional[dict] = None


class Tool(_Body):
    type: Literal["function"]
    function: FunctionDef


class ChatRequest(Sampling):
    model: Optional[str] = None
    messages: list[Message] = Field(min_length=1)
    tools: Optional[list[Tool]] = None
    tool_choice: Union[Literal["none", "auto", "required"], dict, None] = None
    parallel_tool_calls: Optional[bool] = None  # (the template's own tool format: several calls per answer)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    max_tokens: Optional[int] = Field(None, ge=0, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: Optional[int] = Field(None, ge=0, le=MAX_TOKENS_LIMIT)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP)

    def n_probs(self) -> Optional[int]:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(Sampling):
    """POST /v1/completions (OpenAI) and /completion (llama-server: n_predict, content alias)."""

    model: Optional[str] = None
    prompt: Union[str, list[int], None] = None
    content: Union[str, list[int], None] = None  # llama-server's name for the prompt
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    max_tokens: Optional[int] = Field(None, ge=0, le=MAX_TOKENS_LIMIT)
    n_predict: Optional[int] = Field(None, ge=-1, le=MAX_TOKENS_LIMIT)
    echo: bool = False
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP)  # OpenAI: top entries per token
    n_probs: int = Field(0, ge=0, le=MAX_TOP)  # llama-server's /completion
    post_sampling_probs: bool = False  # llama-server: n_probs after the sampler chain (prob / top_probs)

    def openai_probs(self) -> Optional[int]:
        return self.logprobs

    def native_probs(self) -> Optional[int]:
        return self.n_probs if self.n_probs > 0 else None

    def the_prompt(self) -> Union[str, list[int]]:
        p = self.prompt if self.prompt is not None else self.content
        if p is None:
            raise ValueError("'prompt' is required")
        return p


class TokenizeRequest(_Body):
    content: str
    add_special: bool = False
    with_pieces: bool = False


class DetokenizeRequest(_Body):
    tokens: list[int]


class TemplateRequest(_Body):
    messages: list[Message] = Field(min_length=1)


class EmbeddingRequest(_Body):
    """POST /v1/embeddings (OpenAI) and /embedding (llama-server: `content`)."""

    model: Optional[str] = None
    input: Union[str, list[str], list[int], list[list[int]], None] = None
    content: Union[str, list[str], list[int], list[list[int]], None] = None
    encoding_format: Literal["float", "base64"] = "float"

    def inputs(self) -> list[Union[str, list[int]]]:
        x = self.input if self.input is not None else self.content
        if x is None:
            raise ValueError("'input' is required")
        if isinstance(x, str):
            return [x]
        if not x:
            raise ValueError("'input' is empty")
        if all(isinstance(t, int) for t in x):
            return [list(x)]
        return list(x)
