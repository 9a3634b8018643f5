"""Metered usage: reserve before the work, settle the real amount after it.

A caller such as the model gateway calls ``reserve`` before a provider call and
``settle`` with the real amount afterwards, or ``release`` when the call failed. Only
``settle`` writes the usage ledger (``usage_ledger``), which the application role may
append to but never change. No API writes usage, so no figure that a client sends is
trusted.

Windows. A reservation counts against one window of its kind: a UTC day (reset at
00:00 UTC) or a UTC calendar month (reset at 00:00 UTC on the 1st). A settled amount
counts in the window it was reserved in, even when the call ends after the reset.

Why a counter row. Each (tenant, kind, window) has one ``usage_counters`` row with
``used`` and ``reserved``. A reservation is one conditional UPDATE::

    update usage_counters set reserved = reserved + :amount
    where <the row> and used + reserved + :amount <= :limit

PostgreSQL serialises writers of one row: a second UPDATE waits for the first to
commit, then re-checks its WHERE clause against the new row version (READ COMMITTED
re-evaluation), so the sum never passes the limit, however many run at once. The row
lock is held only from that UPDATE to the commit of the same short transaction. An
advisory lock would serialise the same writers but costs one more round trip per
call, and a count over the ledger grows slower with every row.

Expiry. A reservation that is neither settled nor released within its ``ttl`` stops
counting: when a reservation does not fit, ``reserve`` first marks the window's expired
reservations ``expired``, subtracts them from ``reserved``, and tries once more. A late
``settle`` of an expired reservation still records its real usage.

Deadlocks. ``settle`` and ``release`` lock their reservation row, then the counter row.
``reserve`` waits only for the counter row, because it inserts a new reservation and its
expiry sweep skips locked reservations. So calls that each run in their own transaction
(an Engine target) cannot deadlock one another. A caller's transaction that settles
several reservations of one window can deadlock with another such transaction, and
PostgreSQL then aborts one of them.

Errors::

    Problem (stockade.errors)
    └── BudgetExceeded   402, Retry-After: seconds until the window resets
    LookupError
    └── ReservationClosed   settle of a reservation that was settled or released
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cached_property
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, text

from stockade.billing.scope import tenant_transaction
from stockade.db.scope import execute_on_driver
from stockade.errors import Problem

log = structlog.get_logger(__name__)

# How long a reservation counts when it is never settled or released. A provider call
# with its retries and fallbacks ends well within this.
RESERVATION_TTL = timedelta(minutes=15)
_KIND = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

# The two reserving statements differ only in where the limit comes from: a number, or
# the tenant's plan, looked up in the same statement to save a round trip. The statements
# of reserve, settle and release run through execute_on_driver, so they use psycopg's
# %(name)s placeholders. The others are SQLAlchemy text() with :name placeholders.
_RESERVE = (
    "with counted as ("
    " update usage_counters set reserved = reserved + %(amount)s"
    " where tenant_id = %(tenant)s and kind = %(kind)s and period = %(period)s"
    " and window_start = %(window_start)s"
    " and used + reserved + %(amount)s <= cast(%(limit)s as bigint)"
    " returning tenant_id)"
    " insert into usage_reservations"
    " (id, tenant_id, kind, period, window_start, amount, created_at, expires_at)"
    " select %(id)s, tenant_id, %(kind)s, %(period)s, %(window_start)s, %(amount)s,"
    " %(now)s, %(expires_at)s"
    " from counted"
)
_RESERVE_BY_PLAN = (
    "with counted as ("
    " update usage_counters set reserved = reserved + %(amount)s"
    " where tenant_id = %(tenant)s and kind = %(kind)s and period = %(period)s"
    " and window_start = %(window_start)s"
    " and used + reserved + %(amount)s <= coalesce("
    "  (select cast(cast(%(plan_limits)s as jsonb) ->> t.plan as bigint)"
    "   from tenants t where t.id = %(tenant)s),"
    "  cast(%(default_limit)s as bigint))"
    " returning tenant_id)"
    " insert into usage_reservations"
    " (id, tenant_id, kind, period, window_start, amount, created_at, expires_at)"
    " select %(id)s, tenant_id, %(kind)s, %(period)s, %(window_start)s, %(amount)s,"
    " %(now)s, %(expires_at)s"
    " from counted"
)
_TENANT_PLAN = text("select plan from tenants where id = :tenant")
_CREATE_COUNTER = text(
    "insert into usage_counters (tenant_id, kind, period, window_start)"
    " values (:tenant, :kind, :period, :window_start) on conflict do nothing"
)
# SKIP LOCKED: a reservation that a settle or release holds is closing anyway, and the
# sweep never waits for a reservation row, so it cannot take part in a deadlock.
_EXPIRE = text(
    "update usage_reservations set status = 'expired', closed_at = :now"
    " where status = 'reserved' and id in ("
    "  select id from usage_reservations"
    "  where tenant_id = :tenant and kind = :kind and period = :period"
    "  and window_start = :window_start and status = 'reserved' and expires_at <= :now"
    "  for update skip locked)"
    " returning amount"
)
_UNRESERVE = text(
    "update usage_counters set reserved = reserved - :amount"
    " where tenant_id = :tenant and kind = :kind and period = :period"
    " and window_start = :window_start"
)
_LOCK_COUNTER = text(
    "select 1 from usage_counters"
    " where tenant_id = :tenant and kind = :kind and period = :period"
    " and window_start = :window_start for update"
)
_COUNTER = text(
    "select used, reserved from usage_counters"
    " where tenant_id = :tenant and kind = :kind and period = :period"
    " and window_start = :window_start"
)
# from_status is 'reserved', or 'expired' for a late settle; held is 1 when the amount
# still counts in `reserved` and must leave it, 0 when the expiry sweep took it out.
_SETTLE = (
    "with settled as ("
    " update usage_reservations"
    " set status = 'settled', closed_at = %(now)s, actual = %(actual)s"
    " where id = %(id)s and tenant_id = %(tenant)s and status = %(from_status)s"
    " returning kind, period, window_start, amount),"
    " counted as ("
    " update usage_counters c"
    " set used = c.used + %(actual)s, reserved = c.reserved - s.amount * %(held)s"
    " from settled s where c.tenant_id = %(tenant)s and c.kind = s.kind"
    " and c.period = s.period and c.window_start = s.window_start)"
    " insert into usage_ledger (tenant_id, kind, quantity, occurred_at, reservation_id, data)"
    " select %(tenant)s, s.kind, %(actual)s, %(now)s, %(id)s, cast(%(data)s as jsonb)"
    " from settled s"
)
_RELEASE = (
    "with released as ("
    " update usage_reservations set status = 'released', closed_at = %(now)s"
    " where id = %(id)s and tenant_id = %(tenant)s and status = 'reserved'"
    " returning kind, period, window_start, amount)"
    " update usage_counters c set reserved = c.reserved - r.amount"
    " from released r where c.tenant_id = %(tenant)s and c.kind = r.kind"
    " and c.period = r.period and c.window_start = r.window_start"
)
_WINDOW_USAGE = text(
    "select coalesce((select used from usage_counters where tenant_id = :tenant"
    "   and kind = :kind and period = :period and window_start = :window_start), 0),"
    " coalesce((select sum(amount) from usage_reservations where tenant_id = :tenant"
    "   and kind = :kind and period = :period and window_start = :window_start"
    "   and status = 'reserved' and expires_at > :now), 0)"
)


class Window(StrEnum):
    """The period a limit applies to, in UTC."""

    DAY = "day"
    MONTH = "month"

    def bounds(self, now: datetime) -> tuple[datetime, datetime]:
        """Return the start and the end (the reset time) of the window that contains ``now``."""
        moment = now.astimezone(UTC)
        if self is Window.DAY:
            start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
            return start, start + timedelta(days=1)
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        # Day 1 plus 32 days is always in the next month.
        return start, (start + timedelta(days=32)).replace(day=1)


@dataclass(frozen=True)
class PlanLimits:
    """The limits of one kind for each plan name, applied to the tenant's current plan.

    ``reserve`` reads ``tenants.plan`` in the statement that reserves, so a plan change
    that has committed applies to the next reservation. ``default`` applies to a plan
    name missing from ``by_plan``.
    """

    by_plan: Mapping[str, int]
    default: int

    def for_plan(self, name: str | None) -> int:
        return self.by_plan.get(name or "", self.default)

    @cached_property
    def as_json(self) -> str:
        """Return ``by_plan`` as the JSON object that the reserving statement looks up."""
        return json.dumps(dict(self.by_plan))


class BudgetExceeded(Problem):
    """A reservation does not fit in what is left of its window's limit.

    ``retry_after`` is the whole number of seconds until the window resets. When the
    requested amount is larger than the limit itself, no window will ever fit it.
    """

    status = 402
    code = "budget-exceeded"
    title = "Usage limit reached"

    def __init__(
        self,
        *,
        kind: str,
        limit: int,
        used: int,
        reserved: int,
        requested: int,
        resets_at: datetime,
        now: datetime,
    ) -> None:
        self.kind = kind
        self.limit = limit
        self.used = used
        self.reserved = reserved
        self.requested = requested
        self.resets_at = resets_at
        self.retry_after = max(1, math.ceil((resets_at - now).total_seconds()))
        if requested > limit:
            detail = f"{requested} {kind} is more than the limit of {limit} for one window"
        else:
            detail = (
                f"the {kind} limit of {limit} is reached ({used} used, {reserved} reserved);"
                f" it resets at {resets_at.isoformat()}"
            )
        super().__init__(
            detail,
            headers={"Retry-After": str(self.retry_after)},
            kind=kind,
            limit=limit,
            used=used,
            requested=requested,
            retry_after=self.retry_after,
            resets_at=resets_at.isoformat(),
        )


class ReservationClosed(LookupError):
    """The reservation was settled or released already, or belongs to another tenant."""


@dataclass(frozen=True)
class Reservation:
    """An amount held against a tenant's limit until it is settled, released or expires."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    kind: str
    amount: int
    window: Window
    window_start: datetime
    resets_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class Settlement:
    """A settled reservation: ``actual`` went to the ledger, ``returned`` back to the limit.

    ``late`` is True when the reservation had expired before it was settled.
    """

    reservation_id: uuid.UUID
    actual: int
    returned: int
    late: bool


@dataclass(frozen=True)
class WindowUsage:
    """Usage of one kind in the current window: settled, and reserved and not expired."""

    kind: str
    window: Window
    used: int
    reserved: int
    window_start: datetime
    resets_at: datetime


def reserve(
    target: Engine | Connection,
    tenant_id: uuid.UUID,
    kind: str,
    amount: int,
    *,
    limit: int | PlanLimits,
    window: Window,
    ttl: timedelta = RESERVATION_TTL,
    now: datetime | None = None,
) -> Reservation:
    """Hold ``amount`` of ``kind`` for ``tenant_id`` or raise ``BudgetExceeded``.

    The reservation fits when the window's used and reserved amounts plus ``amount``
    stay within ``limit``: a number, or ``PlanLimits`` for the limit of the tenant's
    current plan. With an Engine, the reservation commits at once in its own
    transaction. With a Connection in a transaction scoped to ``tenant_id``, it joins
    that transaction, and the window's counter row stays locked until that transaction
    ends, so keep such a transaction short.
    """
    _check_kind(kind)
    _check_count(amount, "amount", minimum=1)
    limits = [*limit.by_plan.values(), limit.default] if isinstance(limit, PlanLimits) else [limit]
    for value in limits:
        _check_count(value, "limit", minimum=0)
    if ttl <= timedelta(0):
        raise ValueError("ttl must be positive")
    moment = _moment(now)
    window_start, resets_at = window.bounds(moment)
    reservation = Reservation(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        kind=kind,
        amount=amount,
        window=window,
        window_start=window_start,
        resets_at=resets_at,
        expires_at=moment + ttl,
    )
    with tenant_transaction(target, tenant_id) as conn:
        outcome = _reserve_in(conn, reservation, limit, moment)
    # Raised after the commit, so the expiry sweep of the slow path is kept.
    if isinstance(outcome, BudgetExceeded):
        raise outcome
    return outcome


def settle(
    target: Engine | Connection,
    reservation: Reservation,
    actual: int,
    *,
    data: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> Settlement:
    """Record ``actual`` in the ledger and give back what the reservation held beyond it.

    ``actual`` may exceed the reserved amount: the ledger records what was really used,
    and later reservations see it. ``data`` (JSON, e.g. the model name) is stored with
    the ledger entry. Raises ``ReservationClosed`` when the reservation was settled or
    released already.
    """
    _check_count(actual, "actual", minimum=0)
    moment = _moment(now)
    params = {
        "id": reservation.id,
        "tenant": reservation.tenant_id,
        "actual": actual,
        "now": moment,
        "data": json.dumps(dict(data or {})),
    }
    with tenant_transaction(target, reservation.tenant_id) as conn:
        late = False
        settled = execute_on_driver(conn, _SETTLE, {**params, "from_status": "reserved", "held": 1})
        if settled == 0:
            late = True
            settled = execute_on_driver(
                conn, _SETTLE, {**params, "from_status": "expired", "held": 0}
            )
    if settled == 0:
        raise ReservationClosed(f"reservation {reservation.id} is settled or released already")
    returned = 0 if late else max(reservation.amount - actual, 0)
    return Settlement(reservation.id, actual, returned, late)


def release(target: Engine | Connection, reservation: Reservation) -> bool:
    """Give the whole reservation back, for a call that failed before using anything.

    Returns False when there was nothing to give back: the reservation was settled,
    released or had expired.
    """
    params = {"id": reservation.id, "tenant": reservation.tenant_id, "now": datetime.now(UTC)}
    with tenant_transaction(target, reservation.tenant_id) as conn:
        return execute_on_driver(conn, _RELEASE, params) == 1


def window_usage(
    conn: Connection,
    tenant_id: uuid.UUID,
    kind: str,
    window: Window,
    *,
    now: datetime | None = None,
) -> WindowUsage:
    """Read the used and the live reserved amounts of ``kind`` in the current window."""
    moment = _moment(now)
    window_start, resets_at = window.bounds(moment)
    used, reserved = conn.execute(
        _WINDOW_USAGE,
        {
            "tenant": tenant_id,
            "kind": kind,
            "period": window.value,
            "window_start": window_start,
            "now": moment,
        },
    ).one()
    return WindowUsage(kind, window, int(used), int(reserved), window_start, resets_at)


def _reserve_in(
    conn: Connection, reservation: Reservation, limit: int | PlanLimits, now: datetime
) -> Reservation | BudgetExceeded:
    statement, params = _reserve_statement(reservation, limit, now)
    if execute_on_driver(conn, statement, params) == 1:
        return reservation

    # Slow path: the window has no counter row yet, or it is full. Create the row, take
    # out expired reservations, and try once more.
    window_params = _window_params(reservation)
    scoped = conn.execute(text("select stockade_tenant()")).scalar_one()
    if scoped != reservation.tenant_id:
        raise ValueError(
            f"the transaction is scoped to tenant {scoped}, not {reservation.tenant_id}"
        )
    conn.execute(_CREATE_COUNTER, window_params)
    # Hold the counter while sweeping: a concurrent sweep skips the reservations this one
    # has locked, so without this it could retry before this sweep has given their
    # amounts back, and refuse a call that fits.
    conn.execute(_LOCK_COUNTER, window_params)
    _expire_reservations(conn, window_params, now)
    if execute_on_driver(conn, statement, params) == 1:
        return reservation

    used, reserved = conn.execute(_COUNTER, window_params).one()
    if isinstance(limit, PlanLimits):
        plan = conn.execute(_TENANT_PLAN, {"tenant": reservation.tenant_id}).scalar_one()
        limit = limit.for_plan(plan)
    return BudgetExceeded(
        kind=reservation.kind,
        limit=limit,
        used=int(used),
        reserved=int(reserved),
        requested=reservation.amount,
        resets_at=reservation.resets_at,
        now=now,
    )


def _expire_reservations(conn: Connection, window_params: dict[str, Any], now: datetime) -> None:
    amounts = conn.execute(_EXPIRE, {**window_params, "now": now}).scalars().all()
    if not amounts:
        return
    conn.execute(_UNRESERVE, {**window_params, "amount": sum(amounts)})
    # Reservations that expire were never settled or released: a caller has a bug or
    # crashed mid-call, which is worth seeing in the log.
    log.info(
        "usage_reservations_expired",
        tenant_id=str(window_params["tenant"]),
        kind=window_params["kind"],
        count=len(amounts),
        amount=sum(amounts),
    )


def _window_params(reservation: Reservation) -> dict[str, Any]:
    return {
        "tenant": reservation.tenant_id,
        "kind": reservation.kind,
        "period": reservation.window.value,
        "window_start": reservation.window_start,
    }


def _reserve_statement(
    reservation: Reservation, limit: int | PlanLimits, now: datetime
) -> tuple[str, dict[str, Any]]:
    params = {
        **_window_params(reservation),
        "id": reservation.id,
        "amount": reservation.amount,
        "now": now,
        "expires_at": reservation.expires_at,
    }
    if isinstance(limit, PlanLimits):
        params["plan_limits"] = limit.as_json
        params["default_limit"] = limit.default
        return _RESERVE_BY_PLAN, params
    params["limit"] = limit
    return _RESERVE, params


def _moment(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now


def _check_kind(kind: str) -> None:
    if not _KIND.match(kind):
        raise ValueError(f"invalid usage kind {kind!r}: use lowercase letters, digits and '_'")


def _check_count(value: int, name: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be a whole number of at least {minimum}, not {value!r}")
