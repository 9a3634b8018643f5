"""Response bodies in OpenAI's shapes: a chat completion, its stream chunks, a model list.

Stockade adds one key, ``stockade``, to a completion and to the last content chunk of a
stream: the provider that answered, whether the answer is a fallback, the passages it
cites, and how many values were redacted. OpenAI's SDKs keep unknown keys, so
``completion.model_extra["stockade"]`` reads it in Python.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stockade.gateway.providers import Usage


@dataclass
class Envelope:
    """What every chunk and the completion of one call share."""

    model: str
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))


def completion(
    envelope: Envelope,
    content: str,
    finish_reason: str,
    usage: Usage,
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        "id": envelope.id,
        "object": "chat.completion",
        "created": envelope.created,
        "model": envelope.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage.as_json(),
        "stockade": dict(extra),
    }


def chunk(
    envelope: Envelope,
    delta: Mapping[str, Any],
    *,
    finish_reason: str | None = None,
    usage_included: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Return one server-sent event with a ``chat.completion.chunk`` carrying ``delta``."""
    body: dict[str, Any] = {
        "id": envelope.id,
        "object": "chat.completion.chunk",
        "created": envelope.created,
        "model": envelope.model,
        "choices": [
            {"index": 0, "delta": dict(delta), "finish_reason": finish_reason, "logprobs": None}
        ],
    }
    if usage_included:
        # With stream_options.include_usage, OpenAI sends usage null until the last chunk.
        body["usage"] = None
    if extra is not None:
        body["stockade"] = dict(extra)
    return event(body)


def usage_chunk(envelope: Envelope, usage: Usage) -> str:
    """Return the last chunk of a stream that asked for usage: no choices, only usage."""
    return event(
        {
            "id": envelope.id,
            "object": "chat.completion.chunk",
            "created": envelope.created,
            "model": envelope.model,
            "choices": [],
            "usage": usage.as_json(),
        }
    )


def event(body: Mapping[str, Any]) -> str:
    return f"data: {json.dumps(body, separators=(',', ':'), ensure_ascii=False)}\n\n"


DONE = "data: [DONE]\n\n"


def model_list(names: Iterable[str]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "stockade"} for name in names
        ],
    }
