"""The gateway: each call in the order the product specification gives.

    authenticate (route guard, llm:invoke)
    -> admit: token still live, model allowed, reserve 1 call + estimated tokens (402/503)
    -> redact the caller's messages
    -> retrieve from the tenant's namespace, redact the passages, mark them as data
    -> the providers of the model's route in order (timeouts, retries, breakers)
    -> every provider failed, or an operator forced the outage: the tenant's cache, or 503
    -> restore placeholders for callers with pii:reveal
    -> settle tokens, store the answer, sample if consented, audit (after the response)

Any failure between admission and the answer releases both reservations.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from functools import partial
from typing import Any

import anyio
import structlog
from fastapi.responses import JSONResponse, Response
from sqlalchemy import Engine
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from stockade.access.guard import Principal
from stockade.access.policy import Policy
from stockade.billing.plans import PlanCatalog, UnknownPlan
from stockade.db import Scope
from stockade.errors import Forbidden, Problem
from stockade.gateway import budget, cache, formats, prompts, streaming
from stockade.gateway.config import EXTRACTIVE, GatewayConfig, ModelConfig
from stockade.gateway.embeddings import create_embeddings
from stockade.gateway.errors import (
    InvalidRequest,
    ModelNotAllowed,
    ModelNotFound,
    UpstreamUnavailable,
    bad_request_on_rejection,
)
from stockade.gateway.extractive import ExtractiveProvider
from stockade.gateway.providers import (
    Answer,
    ChatCall,
    ChatResult,
    Provider,
    ProviderFailure,
    Usage,
    estimate_prompt_tokens,
    estimate_tokens,
)
from stockade.gateway.schemas import ChatCompletionRequest, EmbeddingRequest
from stockade.gateway.upstream import OpenAIUpstream
from stockade.keys import KeyStore
from stockade.keys.envelope import DataKeys
from stockade.safety.redaction import Redactor

log = structlog.get_logger(__name__)

# Tokens reserved for each retrieved passage before its real size is known.
PASSAGE_TOKEN_ALLOWANCE = 400
REVEAL_PERMISSION = "pii:reveal"
# Chats longer than this many characters are redacted in the thread pool.
REDACT_INLINE_CHARS = 2000


@dataclass(frozen=True)
class CallContext:
    """The caller, its tenant, and the trace id that the call's records carry."""

    principal: Principal
    reveal: bool
    trace_headers: dict[str, str]
    knowledge: Any

    @property
    def tenant_id(self) -> uuid.UUID:
        return self.principal.tenant_id

    def admission_scope(self) -> Scope:
        """Return the request's scope, whose check rejects a token revoked since it was issued."""
        return self.principal.scope()

    def record_scope(self) -> Scope:
        """Return the same tenant, roles and user, without the token check, for later records."""
        return Scope(
            tenant_id=self.principal.tenant_id,
            roles=self.principal.roles,
            user_id=self.principal.user_id,
        )


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        keystore: KeyStore,
        engine: Engine,
        plans: PlanCatalog,
        policy: Policy,
        keys: DataKeys,
    ) -> None:
        self.config = config
        self.engine = engine
        # Tenants' data keys, which seal cached answers and samples.
        self.keys = keys
        self.plans = plans
        self.policy = policy
        self.redactor = Redactor()
        self.upstreams = {
            name: OpenAIUpstream(upstream, keystore) for name, upstream in config.upstreams.items()
        }
        self.providers: dict[str, Provider] = {EXTRACTIVE: ExtractiveProvider(), **self.upstreams}

    def context(
        self, principal: Principal, trace_headers: dict[str, str], knowledge: Any
    ) -> CallContext:
        reveal = self.policy.decide(principal.roles, REVEAL_PERMISSION).allowed
        return CallContext(principal, reveal, trace_headers, knowledge)

    def close(self) -> None:
        """Close the upstreams' connection pools; call it from outside the serving loops.

        NOTE: the app does not call this when it stops; the sockets close when the process
        exits. A lifespan handler that closes the pools would make shutdown tidy.
        """
        for upstream in self.upstreams.values():
            upstream.close()

    # GET /v1/models

    async def list_models(self, ctx: CallContext) -> dict[str, Any]:
        state = await run_in_threadpool(budget.tenant_state, self.engine, ctx.admission_scope())
        names = [name for name in self.config.public_names() if self._allowed(name, state)]
        return formats.model_list(names)

    # POST /v1/chat/completions

    async def chat(self, ctx: CallContext, request: ChatCompletionRequest) -> Response:
        started = time.perf_counter()
        request.check_supported()
        model, retrieve = self.resolve(request.model, "chat")
        retrieve = retrieve or request.stockade.retrieve
        passages_wanted = request.stockade.passages or self.config.retrieve_passages
        max_tokens = request.requested_max_tokens() or self.config.default_max_tokens
        texts = [(message.role, message.text()) for message in request.messages]
        chat = await self._redact(texts)
        estimate = estimate_prompt_tokens(chat.messages) + max_tokens
        if retrieve:
            estimate += passages_wanted * PASSAGE_TOKEN_ALLOWANCE

        check = partial(self.check_call, request.model, retrieve)
        admission = await run_in_threadpool(
            budget.admit,
            self.engine,
            self.plans,
            ctx.admission_scope(),
            estimate,
            check,
            request.model,
        )
        key = cache.cache_key(ctx.tenant_id, request.model, retrieve, chat.messages)
        try:
            passages = await self._retrieve(ctx, chat.question, passages_wanted) if retrieve else []
            chat, sources = prompts.redact_passages(self.redactor, chat, passages)
            call = ChatCall(
                model=model.name,
                messages=prompts.assemble(chat.messages, sources),
                params=request.forwarded_params(),
                max_tokens=max_tokens,
                passages=sources,
                question=chat.question,
                headers=ctx.trace_headers,
            )
            citations = tuple(prompts.citations(sources))
            if request.stream:
                opened = await self._open_stream(ctx, model, call, admission, key)
                return streaming.response(
                    self, ctx, request, admission, chat, opened, citations, key, started
                )
            answer = await self._complete(ctx, model, call, admission, key, citations)
        except BaseException as exc:
            await self.release(ctx, admission, request.model, exc)
            raise

        content = prompts.reveal(answer.result.content, chat.mapping, ctx.reveal)
        extra = self.describe(answer.provider, answer.fallback, answer.citations, chat.counts)
        body = formats.completion(
            formats.Envelope(request.model),
            content,
            answer.result.finish_reason,
            answer.result.usage,
            extra,
        )
        outcome = self.outcome(
            request.model, answer, chat.messages, key, answer.result.content, admission
        )
        outcome = budget.with_reveal(outcome, ctx.reveal, chat.mapping)
        headers = {"Stockade-Fallback": "cache"} if answer.fallback == "cache" else {}
        self.log_call(request.model, answer.provider, answer.fallback, outcome.tokens_used, started)
        return JSONResponse(
            body, headers=headers, background=self.settle_task(ctx, admission, outcome)
        )

    # POST /v1/embeddings

    async def embeddings(self, ctx: CallContext, request: EmbeddingRequest) -> Response:
        return await create_embeddings(self, ctx, request)

    # Steps

    def resolve(self, name: str, kind: str) -> tuple[ModelConfig, bool]:
        resolved = self.config.resolve(name)
        if resolved is None:
            raise ModelNotFound(name)
        model, retrieve = resolved
        if model.kind != kind:
            route = "/v1/chat/completions" if model.kind == "chat" else "/v1/embeddings"
            raise InvalidRequest(f"the model {name!r} is served at {route}", param="model")
        return model, retrieve

    async def _redact(self, texts: Sequence[tuple[str, str]]) -> prompts.RedactedChat:
        # Redaction costs about 0.1 ms for a short chat but milliseconds per kilobyte of
        # text full of personal data, so long chats leave the event loop for it.
        if sum(len(text) for _, text in texts) < REDACT_INLINE_CHARS:
            return prompts.redact_messages(self.redactor, texts)
        return await run_in_threadpool(prompts.redact_messages, self.redactor, texts)

    def _allowed(self, name: str, state: budget.TenantState) -> bool:
        if state.allowed_models is not None:
            return name in state.allowed_models
        return self.config.allowed_by_default(name)

    def check_call(self, name: str, retrieve: bool, state: budget.TenantState) -> None:
        if not self._allowed(name, state):
            raise ModelNotAllowed(name)
        if retrieve:
            try:
                plan = self.plans.by_name(state.plan)
            except UnknownPlan:
                plan = self.plans.default()
            if not plan.has_feature("retrieval"):
                raise Forbidden(f"the {plan.name} plan does not include retrieval")

    async def _retrieve(self, ctx: CallContext, question: str, k: int) -> list[Any]:
        if ctx.knowledge is None:
            raise UpstreamUnavailable("retrieval is not available: no knowledge base is set up")
        if not question.strip():
            return []
        scope = ctx.record_scope()
        try:
            return list(await run_in_threadpool(ctx.knowledge.search, scope, question, k))
        except Problem:
            raise
        except Exception as exc:
            log.error("gateway_retrieval_failed", error=type(exc).__name__)
            raise UpstreamUnavailable(
                "retrieval from the tenant's documents failed; try again shortly"
            ) from exc

    async def _complete(
        self,
        ctx: CallContext,
        model: ModelConfig,
        call: ChatCall,
        admission: budget.Admission,
        key: bytes,
        citations: tuple[dict[str, Any], ...],
    ) -> Answer:
        failures: list[str] = []
        if admission.state.outage_forced:
            failures.append("outage forced by an operator")
        else:
            for position, hop in enumerate(model.route):
                provider = self.providers[hop.upstream]
                try:
                    result = await bad_request_on_rejection(
                        provider.complete(replace(call, model=hop.model))
                    )
                except ProviderFailure as exc:
                    failures.append(str(exc))
                    continue
                fallback = "chain" if position else None
                return Answer(result, provider.name, fallback, citations)
        entry = await self._cached(ctx, model, key, failures)
        result = ChatResult(entry.content, entry.finish_reason, Usage(0, 0))
        return Answer(result, "cache", "cache", tuple(dict(item) for item in entry.citations))

    async def _open_stream(
        self,
        ctx: CallContext,
        model: ModelConfig,
        call: ChatCall,
        admission: budget.Admission,
        key: bytes,
    ) -> streaming.Opened:
        failures: list[str] = []
        if admission.state.outage_forced:
            failures.append("outage forced by an operator")
        else:
            for position, hop in enumerate(model.route):
                provider = self.providers[hop.upstream]
                try:
                    opened = await bad_request_on_rejection(
                        streaming.open_first(provider, replace(call, model=hop.model))
                    )
                except ProviderFailure as exc:
                    failures.append(str(exc))
                    continue
                return replace(opened, fallback="chain" if position else None)
        entry = await self._cached(ctx, model, key, failures)
        return streaming.from_cache(entry)

    async def _cached(
        self, ctx: CallContext, model: ModelConfig, key: bytes, failures: list[str]
    ) -> cache.Entry:
        log.warning("gateway_providers_failed", model=model.name, failures=failures)
        entry = await run_in_threadpool(
            budget.cached_answer, self.engine, self.keys, ctx.record_scope(), key
        )
        if entry is None:
            raise UpstreamUnavailable(
                f"every provider for the model {model.name!r} failed or is paused, and no"
                " cached answer matches this request; try again later"
            )
        return entry

    async def release(
        self, ctx: CallContext, admission: budget.Admission, model: str, exc: BaseException
    ) -> None:
        reason = getattr(exc, "code", None) or type(exc).__name__
        # Shielded: a cancelled call (the client hung up) must still give its budget back.
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(
                budget.fail_call, self.engine, ctx.record_scope(), admission, model, str(reason)
            )

    # Records

    def describe(
        self,
        provider: str,
        fallback: str | None,
        citations: tuple[dict[str, Any], ...],
        counts: dict[str, int],
    ) -> dict[str, Any]:
        return {
            "provider": provider,
            "fallback": fallback,
            "citations": list(citations),
            "redacted": sum(counts.values()),
        }

    def outcome(
        self,
        model: str,
        answer: Answer,
        messages: list[dict[str, str]],
        key: bytes,
        redacted_output: str,
        admission: budget.Admission,
    ) -> budget.Outcome:
        """Describe a finished call for ``settle_call``; a cached answer costs no tokens."""
        usage = answer.result.usage
        if answer.fallback == "cache":
            tokens = 0
        elif usage.total_tokens:
            tokens = usage.total_tokens
        else:
            tokens = estimate_prompt_tokens(messages) + estimate_tokens(redacted_output)
        entry = None
        if answer.fallback != "cache" and self.config.cache_ttl_hours > 0:
            entry = cache.Entry(
                key=key,
                model=model,
                content=redacted_output,
                finish_reason=answer.result.finish_reason,
                usage=usage,
                citations=answer.citations,
                ttl=timedelta(hours=self.config.cache_ttl_hours),
            )
        state = admission.state
        sampled = state.sample_consent and random.random() * 100 < state.sample_percent  # noqa: S311
        return budget.Outcome(
            model=model,
            provider=answer.provider,
            tokens_used=tokens,
            fallback=answer.fallback,
            cache_entry=entry,
            sample=(messages, redacted_output) if sampled else None,
        )

    def settle_task(
        self, ctx: CallContext, admission: budget.Admission, outcome: budget.Outcome
    ) -> BackgroundTask:
        """Settle after the response is sent; the reservations already count against the plan."""
        return BackgroundTask(
            run_in_threadpool,
            budget.settle_call,
            self.engine,
            self.keys,
            ctx.record_scope(),
            admission,
            outcome,
        )

    def log_call(
        self, model: str, provider: str, fallback: str | None, tokens: int, started: float
    ) -> None:
        log.info(
            "gateway_call",
            model=model,
            provider=provider,
            fallback=fallback,
            tokens=tokens,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )
