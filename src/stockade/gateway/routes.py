"""``/v1``: OpenAI-compatible chat completions, embeddings and the model list.

Each route needs ``llm:invoke``. Errors on these routes are OpenAI error JSON (see
``stockade.gateway.errors``), which the app's exception handlers render.
"""

from __future__ import annotations

import re
import secrets
import uuid
from typing import Any

import structlog
from fastapi import APIRouter, Request, Response

from stockade.access.guard import Principal, require
from stockade.gateway.schemas import ChatCompletionRequest, EmbeddingRequest
from stockade.gateway.service import CallContext, Gateway

router = APIRouter(prefix="/v1", tags=["gateway"])

# W3C Trace Context: version 00, a 32-hex trace id, a 16-hex parent id, 2-hex flags.
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_INVALID_TRACE = "0" * 32


@router.post("/chat/completions")
async def chat_completions(
    request: Request, body: ChatCompletionRequest, principal: Principal = require("llm:invoke")
) -> Response:
    return await _gateway(request).chat(_context(request, principal), body)


@router.post("/embeddings")
async def embeddings(
    request: Request, body: EmbeddingRequest, principal: Principal = require("llm:invoke")
) -> Response:
    return await _gateway(request).embeddings(_context(request, principal), body)


@router.get("/models")
async def list_models(
    request: Request, principal: Principal = require("llm:invoke")
) -> dict[str, Any]:
    return await _gateway(request).list_models(_context(request, principal))


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def _context(request: Request, principal: Principal) -> CallContext:
    headers = bind_trace(request.headers.get("traceparent"))
    knowledge = getattr(request.app.state, "knowledge", None)
    return _gateway(request).context(principal, headers, knowledge)


def bind_trace(traceparent: str | None) -> dict[str, str]:
    """Bind the call's trace id for logs and audit events; return the headers for upstreams.

    The trace id is the caller's W3C ``traceparent`` trace id when it sent a valid one,
    else the request id, so a call can be followed from the client to the provider.
    """
    match = _TRACEPARENT.fullmatch((traceparent or "").strip())
    if match and match.group(1) != _INVALID_TRACE:
        trace_id = match.group(1)
    else:
        request_id = structlog.contextvars.get_contextvars().get("request_id")
        trace_id = str(request_id) if request_id else uuid.uuid4().hex
    structlog.contextvars.bind_contextvars(trace_id=trace_id)
    return {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
