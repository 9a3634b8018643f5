"""Streamed chat completions as server-sent events, ending with ``data: [DONE]``.

A provider counts as answering once its first event arrives; until then the gateway
can still move to the next provider or the cache and answer with a proper status. After
that the status line has gone out, so a provider that breaks off mid-answer ends the
stream with an error event, which OpenAI's SDKs raise as an ``APIError``. The
reservations are settled when the stream ends, however it ends: a client that hangs
up, or a provider that breaks off, is charged for the tokens that were produced.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from stockade.gateway import budget, cache, formats, prompts
from stockade.gateway.providers import (
    Answer,
    ChatCall,
    ChatResult,
    Provider,
    ProviderFailure,
    StreamEvent,
    Usage,
    estimate_prompt_tokens,
    estimate_tokens,
)
from stockade.gateway.schemas import ChatCompletionRequest

if TYPE_CHECKING:
    from stockade.gateway.service import CallContext, Gateway

log = structlog.get_logger(__name__)
_CACHED_PIECE = 64


@dataclass(frozen=True)
class Opened:
    """A stream whose first event has arrived, or a cached answer replayed as one."""

    provider: str
    first: StreamEvent
    rest: AsyncIterator[StreamEvent]
    fallback: str | None = None
    citations: tuple[dict[str, Any], ...] = field(default=())


async def open_first(provider: Provider, call: ChatCall) -> Opened:
    """Open ``provider``'s stream and wait for its first event, or raise ``ProviderFailure``."""
    events = await provider.open_stream(call)
    try:
        first = await events.__anext__()
    except StopAsyncIteration:
        raise ProviderFailure(provider.name, "the stream ended before any event") from None
    except BaseException:
        await _close(events)
        raise
    return Opened(provider.name, first, events)


def from_cache(entry: cache.Entry) -> Opened:
    pieces = [
        StreamEvent(delta=entry.content[start : start + _CACHED_PIECE])
        for start in range(0, len(entry.content), _CACHED_PIECE)
    ]
    pieces.append(StreamEvent(finish_reason=entry.finish_reason))
    citations = tuple(dict(item) for item in entry.citations)
    return Opened("cache", pieces[0], _replay(pieces[1:]), "cache", citations)


def response(
    gateway: Gateway,
    ctx: CallContext,
    request: ChatCompletionRequest,
    admission: budget.Admission,
    chat: prompts.RedactedChat,
    opened: Opened,
    citations: tuple[dict[str, Any], ...],
    key: bytes,
    started: float,
) -> StreamingResponse:
    if opened.fallback == "cache":
        citations = opened.citations
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    if opened.fallback == "cache":
        headers["Stockade-Fallback"] = "cache"
    body = _events(gateway, ctx, request, admission, chat, opened, citations, key, started)
    return StreamingResponse(body, media_type="text/event-stream", headers=headers)


async def _events(
    gateway: Gateway,
    ctx: CallContext,
    request: ChatCompletionRequest,
    admission: budget.Admission,
    chat: prompts.RedactedChat,
    opened: Opened,
    citations: tuple[dict[str, Any], ...],
    key: bytes,
    started: float,
) -> AsyncIterator[str]:
    envelope = formats.Envelope(request.model)
    include_usage = bool(request.stream_options and request.stream_options.include_usage)
    restorer = prompts.StreamRestorer(chat.mapping, ctx.reveal)
    produced: list[str] = []
    finish_reason = "stop"
    usage: Usage | None = None
    completed = False
    try:
        yield formats.chunk(
            envelope, {"role": "assistant", "content": ""}, usage_included=include_usage
        )
        async for event in _chain(opened.first, opened.rest):
            if event.delta:
                produced.append(event.delta)
                text = restorer.feed(event.delta)
                if text:
                    yield formats.chunk(envelope, {"content": text}, usage_included=include_usage)
            finish_reason = event.finish_reason or finish_reason
            usage = event.usage or usage
        tail = restorer.flush()
        if tail:
            yield formats.chunk(envelope, {"content": tail}, usage_included=include_usage)
        extra = gateway.describe(opened.provider, opened.fallback, citations, chat.counts)
        yield formats.chunk(
            envelope,
            {},
            finish_reason=finish_reason,
            usage_included=include_usage,
            extra=extra,
        )
        completed = True
        output = "".join(produced)
        usage = usage or Usage(estimate_prompt_tokens(chat.messages), estimate_tokens(output))
        if include_usage:
            yield formats.usage_chunk(
                envelope, Usage(0, 0) if opened.fallback == "cache" else usage
            )
        yield formats.DONE
    except ProviderFailure as exc:
        log.warning("gateway_stream_broken", provider=opened.provider, reason=exc.reason)
        yield formats.event(
            {
                "error": {
                    "message": "the provider stopped in the middle of the answer; the text so"
                    " far is incomplete",
                    "type": "server_error",
                    "param": None,
                    "code": "upstream_interrupted",
                }
            }
        )
    finally:
        await _close(opened.rest)
        output = "".join(produced)
        # Shielded: a client that hung up cancels this generator, and the call must still
        # be settled or released.
        with anyio.CancelScope(shield=True):
            if not produced and not completed:
                await run_in_threadpool(
                    budget.fail_call,
                    gateway.engine,
                    ctx.record_scope(),
                    admission,
                    request.model,
                    "stream-failed",
                )
            else:
                result_usage = usage or Usage(
                    estimate_prompt_tokens(chat.messages), estimate_tokens(output)
                )
                answer = Answer(
                    result=ChatResult(output, finish_reason, result_usage),
                    provider=opened.provider,
                    fallback=opened.fallback,
                    citations=citations,
                )
                outcome = gateway.outcome(
                    request.model, answer, chat.messages, key, output, admission
                )
                if not completed:
                    # A broken-off answer is charged but not cached.
                    outcome = budget.Outcome(
                        model=outcome.model,
                        provider=outcome.provider,
                        tokens_used=outcome.tokens_used,
                        fallback=outcome.fallback,
                        data={"incomplete": True},
                    )
                outcome = budget.with_reveal(outcome, ctx.reveal, chat.mapping)
                gateway.log_call(
                    request.model, opened.provider, opened.fallback, outcome.tokens_used, started
                )
                await run_in_threadpool(
                    budget.settle_call,
                    gateway.engine,
                    gateway.keys,
                    ctx.record_scope(),
                    admission,
                    outcome,
                )


async def _chain(
    first: StreamEvent, rest: AsyncIterator[StreamEvent]
) -> AsyncIterator[StreamEvent]:
    yield first
    async for event in rest:
        yield event


async def _replay(events: list[StreamEvent]) -> AsyncIterator[StreamEvent]:
    for event in events:
        yield event


async def _close(events: AsyncIterator[StreamEvent]) -> None:
    closer = getattr(events, "aclose", None)
    if closer is not None:
        await closer()
