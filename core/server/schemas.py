"""Request bodies of the server's endpoints (pydantic): OpenAI's fields and llama-server's own.

Unknown fields are accepted and ignored, as both servers do (clients send extras); wrong types, unknown
roles and out-of-range values are refused with a 400 that names the field.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_TOKENS_LIMIT = 1 << 20  # an absurd max_tokens is refused rather than clamped


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Body):
    type: Literal["text"]
    text: str


class Message(_Body):
    role: Literal["system", "user", "assistant", "developer"]
    content: Union[str, list[TextPart], None] = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Body):
    include_usage: bool = False


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
    n: int = 1  # choices per request: only 1

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


class ChatRequest(Sampling):
    model: Optional[str] = None
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    max_tokens: Optional[int] = Field(None, ge=0, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: Optional[int] = Field(None, ge=0, le=MAX_TOKENS_LIMIT)
    logprobs: bool = False


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
