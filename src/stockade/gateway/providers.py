"""What a provider receives and returns, and the failures that move a fallback chain on.

A provider is an OpenAI-compatible upstream (``upstream.OpenAIUpstream``) or the
offline extractive provider (``extractive.ExtractiveProvider``). Both answer a
``ChatCall`` whose text is already redacted and assembled.

    Exception
    ├── ProviderFailure    the provider could not answer: try the next one in the chain
    └── ProviderRejected   the provider called the request invalid: tell the caller
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

# Tokens per message for the role and separators, as OpenAI's chat format counts them.
_MESSAGE_OVERHEAD_TOKENS = 4


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_json(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True)
class SourcePassage:
    """A retrieved passage as the providers and the citations see it, text redacted."""

    index: int
    document_id: str
    chunk_id: str
    title: str
    text: str
    score: float


@dataclass(frozen=True)
class ChatCall:
    """One chat request to one provider: its model name there, messages and parameters."""

    model: str
    messages: Sequence[Mapping[str, str]]
    params: Mapping[str, Any]
    max_tokens: int
    passages: Sequence[SourcePassage] = ()
    question: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ChatResult:
    content: str
    finish_reason: str
    usage: Usage


@dataclass(frozen=True)
class Answer:
    """A provider's (or the cache's) answer to one call, and the passages it cites."""

    result: ChatResult
    provider: str
    fallback: str | None
    citations: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class StreamEvent:
    """A piece of a streamed answer: text, the finish reason, or the final usage."""

    delta: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None


class ProviderFailure(Exception):
    """A provider did not answer: timed out, unreachable, erring, garbled, or paused."""

    def __init__(self, provider: str, reason: str) -> None:
        super().__init__(f"{provider}: {reason}")
        self.provider = provider
        self.reason = reason


class ProviderRejected(Exception):
    """A provider answered that the request itself is invalid (HTTP 400, 404, 422)."""

    def __init__(self, provider: str, status: int, message: str) -> None:
        super().__init__(f"{provider} rejected the request with HTTP {status}: {message}")
        self.provider = provider
        self.status = status
        self.message = message


class Provider(Protocol):
    name: str

    async def complete(self, call: ChatCall) -> ChatResult: ...

    async def open_stream(self, call: ChatCall) -> AsyncIterator[StreamEvent]:
        """Start a streamed answer, raising ``ProviderFailure`` if it cannot start."""
        ...


def estimate_tokens(text: str) -> int:
    """Estimate the tokens of ``text``: one per 4 bytes of UTF-8, rounded up.

    NOTE: an estimate. English text runs near 4 bytes a token in OpenAI's tokenizers.
    Other tokenizers and languages differ, so the reservation is settled with the
    provider's own count whenever it reports one.
    """
    return math.ceil(len(text.encode("utf-8")) / 4)


def estimate_prompt_tokens(messages: Sequence[Mapping[str, str]]) -> int:
    return sum(
        estimate_tokens(message.get("content", "")) + _MESSAGE_OVERHEAD_TOKENS
        for message in messages
    )
