"""The gateway's database steps: admit a call against the plan, then settle or release it.

A call costs two transactions. The first (``admit``) checks that the caller's token is
still live, reads the tenant's gateway settings and the outage switch, and reserves one
call of the day's budget and an estimate of the month's tokens. The second
(``settle_call`` or ``fail_call``) settles the real token count or releases both
reservations, stores the answer for outages, samples it if the tenant consented, and
records the audit event, last, because it takes the tenant's audit chain lock.

Fail closed: any error reaching PostgreSQL becomes ``LedgerUnavailable`` (HTTP 503)
before a provider is called; nothing is sent upstream without a reservation.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from stockade.audit.trail import record_event
from stockade.billing.entitlements import LLM_CALLS, LLM_TOKENS, plan_limits, reserve_within_plan
from stockade.billing.ledger import BudgetExceeded, Reservation, release, settle
from stockade.billing.plans import PlanCatalog
from stockade.db import Scope, scoped_transaction
from stockade.db.scope import execute_on_driver
from stockade.gateway import cache
from stockade.gateway.errors import InvalidRequest, LedgerUnavailable
from stockade.keys.envelope import DataKeys

log = structlog.get_logger(__name__)

_TENANT_STATE = text(
    "select t.plan, s.allowed_models, coalesce(s.sample_consent, false),"
    " coalesce(s.sample_percent, 0), (select outage_forced from gateway_control)"
    " from tenants t left join gateway_tenant_settings s on s.tenant_id = t.id"
    " where t.id = :tenant"
)
# NOTE: the records written after the response commit without waiting for the WAL
# flush. A PostgreSQL crash may then lose the last fraction of a second of them: those
# calls stay reserved until the ledger's TTL and are never settled, so they go
# unbilled. The admission, which enforces the cap, still commits durably.
_ASYNC_COMMIT = "select set_config('synchronous_commit', 'off', true)"
_SAMPLES = "gateway_samples"
_INSERT_SAMPLE = text(
    "insert into gateway_samples (id, tenant_id, trace_id, model, key_version, sample_sealed)"
    " values (:id, :tenant, :trace, :model, :version, :sealed)"
)
_READ_SAMPLES = text(
    "select id, occurred_at, trace_id, model, key_version, sample_sealed from gateway_samples"
    " where tenant_id = :tenant order by occurred_at, id limit :limit"
)


@dataclass(frozen=True)
class TenantState:
    """The tenant's plan and gateway settings, and whether an operator forced the fallback."""

    plan: str
    allowed_models: frozenset[str] | None
    sample_consent: bool
    sample_percent: int
    outage_forced: bool


@dataclass(frozen=True)
class Admission:
    state: TenantState
    calls: Reservation
    tokens: Reservation


@dataclass(frozen=True)
class Outcome:
    """The facts about a finished call that the second transaction records."""

    model: str
    provider: str
    tokens_used: int
    fallback: str | None = None
    cache_entry: cache.Entry | None = None
    sample: tuple[Sequence[Mapping[str, str]], str] | None = None
    data: Mapping[str, Any] | None = None


def with_reveal(outcome: Outcome, reveal: bool, mapping: Mapping[str, str]) -> Outcome:
    """Note in the call's audit event that personal data was restored for the caller."""
    if not (reveal and mapping):
        return outcome
    return dataclasses.replace(outcome, data={**(outcome.data or {}), "revealed": len(mapping)})


@contextmanager
def ledger_reachable() -> Iterator[None]:
    """Turn a failure to reach PostgreSQL into ``LedgerUnavailable``, so the call fails closed."""
    try:
        yield
    except (OperationalError, InterfaceError, PoolTimeout) as exc:
        log.error("gateway_ledger_unreachable", error=type(exc).__name__)
        raise LedgerUnavailable(
            "the usage ledger cannot be reached, so the call was not made; try again shortly"
        ) from exc
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        log.error("gateway_ledger_unreachable", error=type(exc).__name__)
        raise LedgerUnavailable(
            "the usage ledger cannot be reached, so the call was not made; try again shortly"
        ) from exc


def read_state(conn: Connection, tenant_id: uuid.UUID) -> TenantState:
    plan, allowed, consent, percent, forced = conn.execute(
        _TENANT_STATE, {"tenant": tenant_id}
    ).one()
    return TenantState(
        plan=str(plan),
        allowed_models=frozenset(allowed) if allowed is not None else None,
        sample_consent=bool(consent),
        sample_percent=int(percent),
        outage_forced=bool(forced),
    )


def tenant_state(engine: Engine, scope: Scope) -> TenantState:
    """Read the tenant's gateway state in a scoped transaction that also checks the token."""
    assert scope.tenant_id is not None
    with ledger_reachable(), scoped_transaction(engine, scope) as conn:
        return read_state(conn, scope.tenant_id)


def admit(
    engine: Engine,
    catalog: PlanCatalog,
    scope: Scope,
    token_estimate: int,
    check: Callable[[TenantState], None],
    model: str | None = None,
) -> Admission:
    """Check the tenant's state with ``check``, then reserve one call and ``token_estimate``.

    Raises what ``check`` raises, ``BudgetExceeded`` (402) when either reservation does
    not fit, or ``LedgerUnavailable`` (503). A refusal commits the transaction, so the
    ledger's sweep of expired reservations is kept, and a call reservation made before
    a refused token reservation is released in it.
    """
    tenant_id = scope.tenant_id
    assert tenant_id is not None
    refusal: BudgetExceeded | None = None
    with ledger_reachable(), scoped_transaction(engine, scope) as conn:
        state = read_state(conn, tenant_id)
        check(state)
        _check_fits_plan(catalog, state.plan, token_estimate)
        try:
            calls = reserve_within_plan(conn, catalog, tenant_id, LLM_CALLS, 1)
            try:
                tokens = reserve_within_plan(conn, catalog, tenant_id, LLM_TOKENS, token_estimate)
            except BudgetExceeded:
                release(conn, calls)
                raise
        except BudgetExceeded as exc:
            refusal = exc
            record_event(
                conn,
                tenant_id=tenant_id,
                action="llm:refused",
                actor_user_id=scope.user_id,
                subject=model,
                data={"kind": exc.kind, "retry_after": exc.retry_after},
            )
    if refusal is not None:
        log.info("gateway_budget_exceeded", kind=refusal.kind, retry_after=refusal.retry_after)
        raise refusal
    return Admission(state, calls, tokens)


def _check_fits_plan(catalog: PlanCatalog, plan: str, token_estimate: int) -> None:
    """Reject a call that could not fit even an unused month: waiting would not help."""
    monthly = plan_limits(catalog, LLM_TOKENS).for_plan(plan)
    if token_estimate > monthly:
        raise InvalidRequest(
            f"this request may use up to {token_estimate} tokens, more than the {plan} plan"
            f" allows in a whole month ({monthly}); lower max_tokens or shorten the messages",
            param="max_tokens",
        )


def settle_call(
    engine: Engine, keys: DataKeys, scope: Scope, admission: Admission, outcome: Outcome
) -> None:
    """Settle one call and the tokens used, store the answer and sample, audit ``llm:invoked``.

    The answer has already gone to the caller, so a failure here is logged, not raised:
    the reservations then expire after the ledger's TTL and stop counting.
    """
    tenant_id = admission.calls.tenant_id
    ledger_data = {"model": outcome.model, "provider": outcome.provider}
    try:
        with scoped_transaction(engine, scope) as conn:
            execute_on_driver(conn, _ASYNC_COMMIT, {})
            settle(conn, admission.calls, 1, data=ledger_data)
            settle(conn, admission.tokens, outcome.tokens_used, data=ledger_data)
            if outcome.cache_entry is not None:
                cache.store(conn, keys, tenant_id, outcome.cache_entry)
            if outcome.sample is not None:
                store_sample(conn, keys, tenant_id, outcome.model, *outcome.sample)
            record_event(
                conn,
                tenant_id=tenant_id,
                action="llm:invoked",
                actor_user_id=scope.user_id,
                subject=outcome.model,
                data={
                    **(outcome.data or {}),
                    "provider": outcome.provider,
                    "tokens": outcome.tokens_used,
                    "fallback": outcome.fallback,
                },
            )
    except Exception as exc:
        log.error("gateway_settle_failed", error=type(exc).__name__, model=outcome.model)


def fail_call(engine: Engine, scope: Scope, admission: Admission, model: str, reason: str) -> None:
    """Release both reservations of a call that produced nothing and audit ``llm:failed``."""
    tenant_id = admission.calls.tenant_id
    try:
        with scoped_transaction(engine, scope) as conn:
            execute_on_driver(conn, _ASYNC_COMMIT, {})
            release(conn, admission.calls)
            release(conn, admission.tokens)
            record_event(
                conn,
                tenant_id=tenant_id,
                action="llm:failed",
                actor_user_id=scope.user_id,
                subject=model,
                data={"reason": reason},
            )
    except Exception as exc:
        log.error("gateway_release_failed", error=type(exc).__name__, model=model)


def cached_answer(engine: Engine, keys: DataKeys, scope: Scope, key: bytes) -> cache.Entry | None:
    assert scope.tenant_id is not None
    with ledger_reachable(), scoped_transaction(engine, scope) as conn:
        return cache.lookup(conn, keys, scope.tenant_id, key)


def store_sample(
    conn: Connection,
    keys: DataKeys,
    tenant_id: uuid.UUID,
    model: str,
    prompt: Sequence[Mapping[str, str]],
    output: str,
) -> None:
    bound = structlog.contextvars.get_contextvars()
    sample_id = uuid.uuid4()
    data_key = keys.current(conn, tenant_id)
    document = json.dumps({"prompt": [dict(message) for message in prompt], "output": output})
    conn.execute(
        _INSERT_SAMPLE,
        {
            "id": sample_id,
            "tenant": tenant_id,
            "trace": bound.get("trace_id"),
            "model": model,
            "version": data_key.version,
            "sealed": data_key.seal(
                document.encode(), table=_SAMPLES, column="sample", row_id=sample_id
            ),
        },
    )


@dataclass(frozen=True)
class Sample:
    trace_id: str | None
    model: str
    prompt: list[dict[str, str]]
    output: str


def read_samples(
    conn: Connection, keys: DataKeys, tenant_id: uuid.UUID, *, limit: int = 100
) -> list[Sample]:
    """Return the tenant's sampled prompts and outputs, oldest first (needs ``audit:read``)."""
    samples = []
    for row in conn.execute(_READ_SAMPLES, {"tenant": tenant_id, "limit": limit}):
        data_key = keys.version(conn, tenant_id, row.key_version)
        document = json.loads(
            data_key.open(bytes(row.sample_sealed), table=_SAMPLES, column="sample", row_id=row.id)
        )
        samples.append(Sample(row.trace_id, row.model, document["prompt"], document["output"]))
    return samples
