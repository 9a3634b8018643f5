"""Request bodies of the OpenAI-compatible routes, as the OpenAI API reference names them.

Fields the gateway does not serve are rejected with a 400 that names them, rather than
silently dropped: ``n`` above 1, ``tools`` and ``functions``, and image or audio parts.
Unknown top-level fields are ignored, as OpenAI-compatible servers commonly do, so a
newer SDK that sends a new optional field still works.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)

from stockade.gateway.errors import InvalidRequest, UnsupportedFeature

# Bounds that keep one request from tying up the server; far above real chats.
MAX_MESSAGES = 512
# NOTE: redacting text made mostly of digit groups takes about 1 to 2 s per 100 KB (the
# PII redaction section of docs/benchmarks.md), so one request at this limit can hold
# a worker thread for up to 20 s; a lower limit per plan would bound that.
MAX_TEXT_CHARS = 1_000_000
MAX_EMBEDDING_INPUTS = 2048

Role = Literal["system", "developer", "user", "assistant", "tool"]
# Parameters passed to an upstream as they came; the rest of a request is rebuilt.
FORWARDED_PARAMS = (
    "temperature",
    "top_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "response_format",
)


def _no_nul(value: str) -> str:
    # Called after validation, when a message's text is read, so the error is the
    # gateway's own 400 rather than a validation error.
    if "\x00" in value:
        raise InvalidRequest("text must not contain the NUL character", param="messages")
    return value


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Role
    content: str | list[TextPart] | None = None
    name: str | None = Field(default=None, max_length=64)

    def text(self) -> str:
        """Return the content as one string; only text parts are served."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return _no_nul(self.content)
        pieces = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise UnsupportedFeature(
                    f"content parts of type {part.type!r} are not supported; send text",
                    param="messages",
                )
            pieces.append(_no_nul(part.text))
        return "\n".join(pieces)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: StrictBool = False


class StockadeOptions(BaseModel):
    """Stockade's own request options, under the key ``stockade``."""

    model_config = ConfigDict(extra="forbid")

    retrieve: StrictBool = False
    passages: Annotated[int, Field(ge=1, le=20)] | None = None


class _UnicodeRequest(BaseModel):
    """A request body whose strings must all be valid Unicode.

    JSON may carry a lone surrogate (``"\\ud800"``), which Python decodes but cannot
    encode as UTF-8, so it is rejected here as bad input before anything encodes it.
    """

    @model_validator(mode="before")
    @classmethod
    def _encodable(cls, data: Any) -> Any:
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("the body contains invalid Unicode (a lone surrogate)") from None
        except (TypeError, ValueError):
            pass  # not JSON-shaped: the field validators give the error
        return data


class ChatCompletionRequest(_UnicodeRequest):
    model_config = ConfigDict(extra="ignore")

    model: Annotated[str, Field(min_length=1, max_length=128)]
    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    n: Annotated[int, Field(ge=1)] = 1
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    stockade: StockadeOptions = Field(default_factory=StockadeOptions)

    def check_supported(self) -> None:
        if self.n != 1:
            raise UnsupportedFeature("only n=1 is supported", param="n")
        if self.tools or self.functions:
            # NOTE: tool calls need the signed tool manifest and the gating step of the
            # safety package before they can pass through.
            raise UnsupportedFeature("tool calls are not supported yet", param="tools")
        total = sum(len(message.text()) for message in self.messages)
        if total > MAX_TEXT_CHARS:
            raise UnsupportedFeature(
                f"the messages hold {total} characters; the limit is {MAX_TEXT_CHARS}",
                param="messages",
            )

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def forwarded_params(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in FORWARDED_PARAMS}
        return {name: value for name, value in values.items() if value is not None}


EmbeddingInput = str | list[str] | list[int] | list[list[int]]


class EmbeddingRequest(_UnicodeRequest):
    model_config = ConfigDict(extra="ignore")

    model: Annotated[str, Field(min_length=1, max_length=128)]
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, Field(ge=1)] | None = None

    @field_validator("input")
    @classmethod
    def _bounded(cls, value: EmbeddingInput) -> EmbeddingInput:
        if isinstance(value, list) and len(value) > MAX_EMBEDDING_INPUTS:
            raise ValueError(f"at most {MAX_EMBEDDING_INPUTS} inputs in one request")
        if isinstance(value, list) and not value:
            raise ValueError("input must not be empty")
        texts = value if isinstance(value, list) else [value]
        if any(isinstance(text, str) and "\x00" in text for text in texts):
            raise ValueError("text must not contain the NUL character")
        return value

    def text_size(self) -> int:
        """Return the bytes of text (or 4 per token id) to estimate the tokens from."""
        items = self.input if isinstance(self.input, list) else [self.input]
        size = 0
        for item in items:
            if isinstance(item, str):
                size += len(item.encode("utf-8"))
            elif isinstance(item, int):
                size += 4
            else:
                size += 4 * len(item)
        return size

    def upstream_body(self, model: str) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "input": self.input}
        if self.encoding_format is not None:
            body["encoding_format"] = self.encoding_format
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        return body
