"""``POST /v1/embeddings``: admitted, redacted and settled like a chat completion.

String inputs pass the PII redactor before they reach a provider, as every text sent
for inference does, so the vectors are those of the redacted text. Token-id inputs go
as they are. Embeddings have no cache, so during an outage the response is 503.
"""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from stockade.gateway import budget
from stockade.gateway.config import ModelConfig
from stockade.gateway.errors import UpstreamUnavailable, bad_request_on_rejection
from stockade.gateway.providers import ProviderFailure
from stockade.gateway.schemas import EmbeddingRequest

if TYPE_CHECKING:
    from stockade.gateway.service import CallContext, Gateway

log = structlog.get_logger(__name__)


async def create_embeddings(
    gateway: Gateway, ctx: CallContext, request: EmbeddingRequest
) -> Response:
    started = time.perf_counter()
    model, _ = gateway.resolve(request.model, "embedding")
    estimate = max(1, -(-request.text_size() // 4))
    check = partial(gateway.check_call, request.model, False)
    admission = await run_in_threadpool(
        budget.admit,
        gateway.engine,
        gateway.plans,
        ctx.admission_scope(),
        estimate,
        check,
        request.model,
    )
    try:
        data, provider = await _embed(gateway, ctx, model, request)
    except BaseException as exc:
        await gateway.release(ctx, admission, request.model, exc)
        raise
    usage = data.get("usage")
    prompt_tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if not isinstance(prompt_tokens, int) or prompt_tokens < 0:
        prompt_tokens = estimate
    body = {
        "object": "list",
        "data": data["data"],
        "model": request.model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    outcome = budget.Outcome(model=request.model, provider=provider, tokens_used=prompt_tokens)
    gateway.log_call(request.model, provider, None, prompt_tokens, started)
    return JSONResponse(body, background=gateway.settle_task(ctx, admission, outcome))


async def _embed(
    gateway: Gateway, ctx: CallContext, model: ModelConfig, request: EmbeddingRequest
) -> tuple[dict[str, Any], str]:
    failures: list[str] = []
    for hop in model.route:
        upstream = gateway.upstreams[hop.upstream]
        body = request.upstream_body(hop.model)
        if _is_text(request.input):
            body["input"] = _redact_inputs(gateway, request.input)
        try:
            data = await bad_request_on_rejection(upstream.embed(body, ctx.trace_headers))
        except ProviderFailure as exc:
            failures.append(str(exc))
            continue
        return data, upstream.name
    log.warning("gateway_providers_failed", model=model.name, failures=failures)
    raise UpstreamUnavailable(
        f"every provider for the model {model.name!r} failed or is paused; try again later"
    )


def _redact_inputs(gateway: Gateway, inputs: str | list[Any]) -> str | list[str]:
    if isinstance(inputs, str):
        return gateway.redactor.redact(inputs).text
    return [gateway.redactor.redact(item).text for item in inputs]


def _is_text(value: str | list[Any]) -> bool:
    return isinstance(value, str) or all(isinstance(item, str) for item in value)
