"""Reservations and the usage ledger: exact under concurrency, tenant-scoped, append-only."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import ProgrammingError

from stockade.billing.entitlements import LLM_CALLS, LLM_TOKENS, reserve_within_plan
from stockade.billing.ledger import (
    RESERVATION_TTL,
    BudgetExceeded,
    Reservation,
    ReservationClosed,
    Window,
    release,
    reserve,
    settle,
    window_usage,
)
from stockade.billing.plans import set_plan
from stockade.db import Scope, scoped_transaction
from stockade.runtime import Runtime
from tests.conftest import Factory

ALL_ROLES = ("viewer", "contributor", "auditor", "billing-admin", "admin")
# 200 threads share this many connections, each reservation on a connection of its own.
# The embedded PostgreSQL allows 100 connections, and the session's other pools use some.
RACE_CONNECTIONS = 40
# A fixed moment, so window boundaries and retry_after are known exactly.
NOON = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def race_engine(runtime: Runtime) -> Iterator[Engine]:
    engine = create_engine(
        runtime.db.app.url, pool_size=RACE_CONNECTIONS, max_overflow=0, pool_timeout=60
    )
    yield engine
    engine.dispose()


def counter(
    runtime: Runtime, tenant_id: uuid.UUID, kind: str, window: Window, now: datetime
) -> tuple[int, int]:
    """Return (used, reserved) of the counter row of ``kind`` in the window of ``now``."""
    with scoped_transaction(runtime.db.app, Scope(tenant_id=tenant_id)) as conn:
        used, reserved = conn.execute(
            text(
                "select used, reserved from usage_counters where tenant_id = :t and kind = :k"
                " and period = :p and window_start = :w"
            ),
            {"t": tenant_id, "k": kind, "p": window.value, "w": window.bounds(now)[0]},
        ).one()
    return used, reserved


def ledger_rows(runtime: Runtime, tenant_id: uuid.UUID) -> list[tuple[str, int, uuid.UUID]]:
    scope = Scope(tenant_id=tenant_id, roles=("auditor",))
    with scoped_transaction(runtime.db.app, scope) as conn:
        rows = conn.execute(
            text(
                "select kind, quantity, reservation_id from usage_ledger where tenant_id = :t"
                " order by id"
            ),
            {"t": tenant_id},
        ).all()
    return [(row[0], row[1], row[2]) for row in rows]


def reserve_call(
    target: Engine | Connection,
    tenant_id: uuid.UUID,
    *,
    limit: int,
    now: datetime | None = None,
    ttl: timedelta = RESERVATION_TTL,
) -> Reservation:
    """Reserve one LLM call against ``limit`` calls a day."""
    return reserve(
        target, tenant_id, "llm_call", 1, limit=limit, window=Window.DAY, ttl=ttl, now=now
    )


def reserve_tokens(
    engine: Engine, tenant_id: uuid.UUID, amount: int, *, now: datetime
) -> Reservation:
    """Reserve ``amount`` tokens against a limit of 1000 a month."""
    return reserve(
        engine, tenant_id, "llm_tokens", amount, limit=1000, window=Window.MONTH, now=now
    )


# Concurrency


def test_200_racers_reserve_exactly_50(
    runtime: Runtime, factory: Factory, race_engine: Engine
) -> None:
    tenant_id, _ = factory.tenant("race")
    start = threading.Barrier(200, timeout=60)

    def attempt(_: int) -> Reservation | None:
        start.wait()
        try:
            return reserve_call(race_engine, tenant_id, limit=50, now=NOON)
        except BudgetExceeded:
            return None

    with ThreadPoolExecutor(max_workers=200) as pool:
        outcomes = list(pool.map(attempt, range(200), timeout=120))

    granted = [outcome for outcome in outcomes if outcome is not None]
    assert len(granted) == 50
    assert len({reservation.id for reservation in granted}) == 50
    assert counter(runtime, tenant_id, "llm_call", Window.DAY, NOON) == (0, 50)

    with ThreadPoolExecutor(max_workers=RACE_CONNECTIONS) as pool:
        list(
            pool.map(
                lambda reservation: settle(race_engine, reservation, 1, now=NOON),
                granted,
                timeout=120,
            )
        )

    assert counter(runtime, tenant_id, "llm_call", Window.DAY, NOON) == (50, 0)
    assert len(ledger_rows(runtime, tenant_id)) == 50


def test_racing_sweeps_reclaim_each_once(
    runtime: Runtime, factory: Factory, race_engine: Engine
) -> None:
    tenant_id, _ = factory.tenant("race")
    for _ in range(10):
        reserve_call(runtime.db.app, tenant_id, limit=10, ttl=timedelta(minutes=1), now=NOON)
    later = NOON + timedelta(minutes=2)
    start = threading.Barrier(30, timeout=60)

    def attempt(_: int) -> bool:
        start.wait()
        try:
            reserve_call(race_engine, tenant_id, limit=10, now=later)
        except BudgetExceeded:
            return False
        return True

    with ThreadPoolExecutor(max_workers=30) as pool:
        outcomes = list(pool.map(attempt, range(30), timeout=120))

    assert outcomes.count(True) == 10
    assert counter(runtime, tenant_id, "llm_call", Window.DAY, NOON) == (0, 10)


# Refusals and windows


def test_refusal_retry_after_until_midnight(runtime: Runtime, factory: Factory) -> None:
    tenant_id, _ = factory.tenant("limit")
    late_evening = datetime(2026, 3, 10, 23, 59, 30, 250_000, tzinfo=UTC)
    reserve_call(runtime.db.app, tenant_id, limit=1, now=late_evening)

    with pytest.raises(BudgetExceeded) as refused:
        reserve_call(runtime.db.app, tenant_id, limit=1, now=late_evening)

    error = refused.value
    assert error.status == 402
    assert error.retry_after == 30
    assert error.headers["Retry-After"] == "30"
    assert error.resets_at == datetime(2026, 3, 11, tzinfo=UTC)
    assert (error.limit, error.used, error.reserved, error.requested) == (1, 0, 1, 1)
    assert error.body("/v1/chat/completions")["retry_after"] == 30


def test_token_window_resets_monthly(runtime: Runtime, factory: Factory) -> None:
    tenant_id, _ = factory.tenant("limit")
    end_of_february = datetime(2026, 2, 28, 12, 0, tzinfo=UTC)
    reserve_tokens(runtime.db.app, tenant_id, 900, now=end_of_february)

    with pytest.raises(BudgetExceeded) as refused:
        reserve_tokens(runtime.db.app, tenant_id, 200, now=end_of_february)
    next_month = reserve_tokens(
        runtime.db.app, tenant_id, 1000, now=datetime(2026, 3, 1, tzinfo=UTC)
    )

    assert refused.value.resets_at == datetime(2026, 3, 1, tzinfo=UTC)
    assert refused.value.retry_after == 12 * 3600
    assert next_month.window_start == datetime(2026, 3, 1, tzinfo=UTC)
    assert next_month.resets_at == datetime(2026, 4, 1, tzinfo=UTC)


def test_december_window_resets_in_january() -> None:
    start, end = Window.MONTH.bounds(datetime(2026, 12, 31, 23, 0, tzinfo=UTC))

    assert start == datetime(2026, 12, 1, tzinfo=UTC)
    assert end == datetime(2027, 1, 1, tzinfo=UTC)


def test_daily_window_resets_at_midnight(runtime: Runtime, factory: Factory) -> None:
    tenant_id, _ = factory.tenant("limit")
    before_midnight = datetime(2026, 3, 10, 23, 59, 59, tzinfo=UTC)
    reserve_call(runtime.db.app, tenant_id, limit=1, now=before_midnight)

    after_midnight = reserve_call(runtime.db.app, tenant_id, limit=1, now=NOON.replace(day=11))

    assert after_midnight.window_start == datetime(2026, 3, 11, tzinfo=UTC)


def test_amount_over_limit_always_refused(runtime: Runtime, factory: Factory) -> None:
    tenant_id, _ = factory.tenant("limit")

    with pytest.raises(BudgetExceeded, match="more than the limit"):
        reserve(runtime.db.app, tenant_id, "llm_tokens", 11, limit=10, window=Window.MONTH)


def test_zero_limit_refuses_everything(runtime: Runtime, factory: Factory) -> None:
    tenant_id, _ = factory.tenant("limit")

    with pytest.raises(BudgetExceeded):
        reserve_call(runtime.db.app, tenant_id, limit=0)


@pytest.mark.parametrize(
    ("kind", "amount", "limit", "message"),
    [
        ("llm_call", 0, 5, "amount"),
        ("llm_call", -3, 5, "amount"),
        ("llm_call", True, 5, "amount"),
        ("llm_call", 1, -1, "limit"),
        ("LLM Call", 1, 5, "invalid usage kind"),
    ],
)
def test_invalid_reservation_rejected(
    runtime: Runtime, factory: Factory, kind: str, amount: int, limit: int, message: str
) -> None:
    tenant_id, _ = factory.tenant("limit")

    with pytest.raises(ValueError, match=message):
        reserve(runtime.db.app, tenant_id, kind, amount, limit=limit, window=Window.DAY)


def test_naive_time_rejected(runtime: Runtime, factory: Factory) -> None:
    tenant_id, _ = factory.tenant("limit")

    with pytest.raises(ValueError, match="timezone-aware"):
        reserve_call(runtime.db.app, tenant_id, limit=5, now=datetime(2026, 3, 10, 12, 0))


# Settle, release, expiry


def test_settle_returns_unused_tokens(runtime: Runtime, factory: Factory) -> None:
    tenant_id, _ = factory.tenant("settle")
    reservation = reserve_tokens(runtime.db.app, tenant_id, 500, now=NOON)

    settled = settle(runtime.db.app, reservation, 120, data={"model": "extractive"}, now=NOON)

    assert (settled.actual, settled.returned, settled.late) == (120, 380, False)
    assert counter(runtime, tenant_id, "llm_tokens", Window.MONTH, NOON) == (120, 0)
    assert ledger_rows(runtime, tenant_id) == [("llm_tokens", 120, reservation.id)]


def test_settle_above_reservation_counts_actual(runtime: Runtime, factory: Factory) -> None:
    tenant_id, _ = factory.tenant("settle")
    reservation = reserve_tokens(runtime.db.app, tenant_id, 100, now=NOON)

    settle(runtime.db.app, reservation, 950, now=NOON)

    assert counter(runtime, tenant_id, "llm_tokens", Window.MONTH, NOON) == (950, 0)
    with pytest.raises(BudgetExceeded):
        reserve_tokens(runtime.db.app, tenant_id, 100, now=NOON)


def test_release_frees_whole_reservation(runtime: Runtime, factory: Factory) -> None:
    tenant_id, _ = factory.tenant("release")
    reservation = reserve_call(runtime.db.app, tenant_id, limit=1, now=NOON)

    released = release(runtime.db.app, reservation)
    again = reserve_call(runtime.db.app, tenant_id, limit=1, now=NOON)

    assert released
    assert not release(runtime.db.app, reservation)
    assert again.id != reservation.id
    assert counter(runtime, tenant_id, "llm_call", Window.DAY, NOON) == (0, 1)
    assert ledger_rows(runtime, tenant_id) == []


def test_second_settle_raises_closed(runtime: Runtime, factory: Factory) -> None:
    tenant_id, _ = factory.tenant("settle")
    reservation = reserve_call(runtime.db.app, tenant_id, limit=5, now=NOON)
    settle(runtime.db.app, reservation, 1, now=NOON)

    with pytest.raises(ReservationClosed):
        settle(runtime.db.app, reservation, 1, now=NOON)

    assert not release(runtime.db.app, reservation)
    assert len(ledger_rows(runtime, tenant_id)) == 1
    assert counter(runtime, tenant_id, "llm_call", Window.DAY, NOON) == (1, 0)


def test_expired_reservation_stops_counting(runtime: Runtime, factory: Factory) -> None:
    tenant_id, _ = factory.tenant("expiry")
    ttl = timedelta(minutes=1)
    forgotten = reserve_call(runtime.db.app, tenant_id, limit=1, ttl=ttl, now=NOON)
    with pytest.raises(BudgetExceeded):
        reserve_call(runtime.db.app, tenant_id, limit=1, now=NOON + timedelta(seconds=59))

    replacement = reserve_call(runtime.db.app, tenant_id, limit=1, now=NOON + timedelta(minutes=2))

    assert replacement.id != forgotten.id
    assert counter(runtime, tenant_id, "llm_call", Window.DAY, NOON) == (0, 1)


def test_late_settle_still_records_usage(runtime: Runtime, factory: Factory) -> None:
    tenant_id, _ = factory.tenant("expiry")
    slow = reserve_call(runtime.db.app, tenant_id, limit=2, ttl=timedelta(minutes=1), now=NOON)
    later = NOON + timedelta(minutes=5)
    reserve_call(runtime.db.app, tenant_id, limit=2, now=later)
    reserve_call(runtime.db.app, tenant_id, limit=2, now=later)  # sweeps `slow` out

    settled = settle(runtime.db.app, slow, 1, now=later)

    assert settled.late
    assert counter(runtime, tenant_id, "llm_call", Window.DAY, NOON) == (1, 2)
    assert ledger_rows(runtime, tenant_id) == [("llm_call", 1, slow.id)]


def test_reserve_joins_caller_transaction(runtime: Runtime, factory: Factory) -> None:
    tenant_id, _ = factory.tenant("join")

    with scoped_transaction(runtime.db.app, Scope(tenant_id=tenant_id)) as conn:
        reservation = reserve_call(conn, tenant_id, limit=3, now=NOON)
        settle(conn, reservation, 1, now=NOON)

    assert counter(runtime, tenant_id, "llm_call", Window.DAY, NOON) == (1, 0)


def test_reserve_in_wrong_scope_raises(runtime: Runtime, factory: Factory) -> None:
    tenant_id, _ = factory.tenant("join")
    other_id, _ = factory.tenant("join")

    with (
        pytest.raises(ValueError, match="scoped to tenant"),
        scoped_transaction(runtime.db.app, Scope(tenant_id=other_id)) as conn,
    ):
        reserve_call(conn, tenant_id, limit=3)


# Plans


def test_downgrade_caps_next_reservation(runtime: Runtime, factory: Factory) -> None:
    tenant_id, _ = factory.tenant("downgrade")
    plans = runtime.plans
    set_plan(runtime.db.owner, tenant_id, plans.by_name("pro"), "upgrade")
    for _ in range(60):
        reservation = reserve_within_plan(runtime.db.app, plans, tenant_id, LLM_CALLS, 1)
        settle(runtime.db.app, reservation, 1)

    set_plan(runtime.db.owner, tenant_id, plans.by_name("free"), "downgrade")
    with pytest.raises(BudgetExceeded) as refused:
        reserve_within_plan(runtime.db.app, plans, tenant_id, LLM_CALLS, 1)

    assert refused.value.limit == plans.by_name("free").llm_calls_per_day
    assert refused.value.used == 60


def test_plan_token_cap_applies(runtime: Runtime, factory: Factory) -> None:
    tenant_id, _ = factory.tenant("tokens")
    cap = runtime.plans.by_name("free").llm_tokens_per_month

    reservation = reserve_within_plan(runtime.db.app, runtime.plans, tenant_id, LLM_TOKENS, cap)
    with pytest.raises(BudgetExceeded) as refused:
        reserve_within_plan(runtime.db.app, runtime.plans, tenant_id, LLM_TOKENS, 1)

    assert reservation.window is Window.MONTH
    assert refused.value.limit == cap


def test_unknown_plan_gets_free_limits(runtime: Runtime, factory: Factory) -> None:
    tenant_id, _ = factory.tenant("retired")
    with runtime.db.owner.begin() as conn:
        conn.execute(text("update tenants set plan = 'retired' where id = :t"), {"t": tenant_id})
    free_calls = runtime.plans.by_name("free").llm_calls_per_day

    for _ in range(free_calls):
        reserve_within_plan(runtime.db.app, runtime.plans, tenant_id, LLM_CALLS, 1, now=NOON)
    with pytest.raises(BudgetExceeded) as refused:
        reserve_within_plan(runtime.db.app, runtime.plans, tenant_id, LLM_CALLS, 1, now=NOON)

    assert refused.value.limit == free_calls


# The ledger in the database


def test_app_role_cannot_change_ledger(runtime: Runtime, factory: Factory) -> None:
    tenant_id, _ = factory.tenant("ledger")
    settle(runtime.db.app, reserve_call(runtime.db.app, tenant_id, limit=5), 1)
    scope = Scope(tenant_id=tenant_id, roles=ALL_ROLES)

    for statement in (
        "update usage_ledger set quantity = 0 where tenant_id = :t",
        "delete from usage_ledger where tenant_id = :t",
        "truncate usage_ledger",
    ):
        with (
            pytest.raises(ProgrammingError) as denied,
            scoped_transaction(runtime.db.app, scope) as conn,
        ):
            conn.execute(text(statement), {"t": tenant_id})
        assert isinstance(denied.value.orig, psycopg.errors.InsufficientPrivilege), statement

    assert [row[1] for row in ledger_rows(runtime, tenant_id)] == [1]


def test_other_tenant_usage_invisible(runtime: Runtime, factory: Factory) -> None:
    tenant_a, _ = factory.tenant("usage-a")
    tenant_b, _ = factory.tenant("usage-b")
    reservation = reserve_call(runtime.db.app, tenant_a, limit=5, now=NOON)
    settle(runtime.db.app, reservation, 1, now=NOON)
    open_a = reserve_call(runtime.db.app, tenant_a, limit=5, now=NOON)

    with scoped_transaction(runtime.db.app, Scope(tenant_id=tenant_b, roles=ALL_ROLES)) as conn:
        seen = {
            table: conn.execute(text(f"select count(*) from {table}")).scalar_one()  # noqa: S608
            for table in ("usage_ledger", "usage_counters", "usage_reservations")
        }
        usage_b = window_usage(conn, tenant_a, "llm_call", Window.DAY, now=NOON)

    assert seen == {"usage_ledger": 0, "usage_counters": 0, "usage_reservations": 0}
    assert (usage_b.used, usage_b.reserved) == (0, 0)
    forged = Reservation(**{**open_a.__dict__, "tenant_id": tenant_b})
    with pytest.raises(ReservationClosed):
        settle(runtime.db.app, forged, 1, now=NOON)
    assert counter(runtime, tenant_a, "llm_call", Window.DAY, NOON) == (1, 1)


def test_viewer_scope_cannot_read_ledger(runtime: Runtime, factory: Factory) -> None:
    tenant_id, _ = factory.tenant("ledger")
    settle(runtime.db.app, reserve_call(runtime.db.app, tenant_id, limit=5), 1)

    with scoped_transaction(runtime.db.app, Scope(tenant_id=tenant_id, roles=("viewer",))) as conn:
        visible = conn.execute(text("select count(*) from usage_ledger")).scalar_one()

    assert visible == 0
    assert len(ledger_rows(runtime, tenant_id)) == 1
