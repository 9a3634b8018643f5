"""Entitlements: the limits of a tenant's plan, and reservations against them.

The model gateway is to call ``reserve_within_plan``, which reads the tenant's plan in the
statement that reserves, so a plan change (``plans.set_plan``) caps the very next
reservation. ``read_entitlements`` gathers the plan, its limits and the current usage
for ``GET /api/v1/billing/entitlements``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, text

from stockade.billing.ledger import (
    PlanLimits,
    Reservation,
    Window,
    WindowUsage,
    reserve,
    window_usage,
)
from stockade.billing.plans import Plan, PlanCatalog, tenant_plan
from stockade.errors import Problem


@dataclass(frozen=True)
class Meter:
    """A metered kind of usage, its window, and the plan field that limits it."""

    kind: str
    window: Window
    limit_of: Callable[[Plan], int]


LLM_CALLS = Meter("llm_call", Window.DAY, lambda plan: plan.llm_calls_per_day)
LLM_TOKENS = Meter("llm_tokens", Window.MONTH, lambda plan: plan.llm_tokens_per_month)
METERS = (LLM_CALLS, LLM_TOKENS)


@dataclass(frozen=True)
class MeterUsage:
    usage: WindowUsage
    limit: int

    @property
    def remaining(self) -> int:
        return max(self.limit - self.usage.used - self.usage.reserved, 0)


@dataclass(frozen=True)
class Entitlements:
    """A tenant's plan, its usage of each meter in the current windows, and its seats."""

    tenant_id: uuid.UUID
    plan: Plan
    meters: tuple[MeterUsage, ...]
    seats_used: int

    def usage_of(self, meter: Meter) -> MeterUsage:
        for usage in self.meters:
            if usage.usage.kind == meter.kind:
                return usage
        raise KeyError(f"no usage read for {meter.kind}")


def reserve_within_plan(
    target: Engine | Connection,
    catalog: PlanCatalog,
    tenant_id: uuid.UUID,
    meter: Meter,
    amount: int,
    *,
    now: datetime | None = None,
) -> Reservation:
    """Reserve ``amount`` of ``meter`` within the tenant's current plan.

    Raises ``BudgetExceeded`` (HTTP 402 with ``Retry-After``) when it does not fit.
    ``target`` is as for ``ledger.reserve``; settle or release the result there. The
    plan is read in the statement that reserves, so a plan change that has committed
    caps the very next reservation. A plan name that the policy file does not declare
    gets the default plan's limit.

    NOTE: a reservation whose statement started before a plan change committed is
    still checked against the old plan's limit.
    """
    return reserve(
        target,
        tenant_id,
        meter.kind,
        amount,
        limit=plan_limits(catalog, meter),
        window=meter.window,
        now=now,
    )


def plan_limits(catalog: PlanCatalog, meter: Meter) -> PlanLimits:
    """Map each plan of ``catalog`` to its limit of ``meter``."""
    return PlanLimits(
        by_plan={name: meter.limit_of(plan) for name, plan in catalog.plans.items()},
        default=meter.limit_of(catalog.default()),
    )


def read_entitlements(
    conn: Connection,
    catalog: PlanCatalog,
    tenant_id: uuid.UUID,
    *,
    now: datetime | None = None,
) -> Entitlements:
    """Read the plan, each meter's usage and the seats in use, in ``conn``'s transaction."""
    moment = now or datetime.now(UTC)
    plan = tenant_plan(conn, catalog, tenant_id)
    meters = tuple(
        MeterUsage(
            window_usage(conn, tenant_id, meter.kind, meter.window, now=moment),
            meter.limit_of(plan),
        )
        for meter in METERS
    )
    return Entitlements(tenant_id, plan, meters, count_seats(conn, tenant_id))


def count_seats(conn: Connection, tenant_id: uuid.UUID) -> int:
    """Count the tenant's members: a seat is a user with at least one role in the tenant."""
    seats = conn.execute(
        text("select count(distinct user_id) from memberships where tenant_id = :tenant"),
        {"tenant": tenant_id},
    ).scalar_one()
    return int(seats)


# Any constant works; it keeps seat locks apart from the other advisory locks.
_SEAT_LOCK_NAMESPACE = 5_310_742


class SeatLimitReached(Problem):
    """Adding a member would use more seats than the tenant's plan has."""

    status = 402
    code = "seat-limit-reached"
    title = "Seat limit reached"


def check_seat_available(conn: Connection, catalog: PlanCatalog, tenant_id: uuid.UUID) -> None:
    """Raise ``SeatLimitReached`` unless the tenant's plan has a seat for one more member.

    Call it in the transaction that adds the membership. It takes a per-tenant advisory
    lock until that transaction ends, so two concurrent invitations cannot both take the
    last seat.

    NOTE: it does not take the tenant row lock that ``set_plan`` takes, so a plan change
    that races an invitation may let that one invitation through on the old plan.
    """
    conn.execute(
        text("select pg_advisory_xact_lock(:namespace, hashtext(cast(:tenant as text)))"),
        {"namespace": _SEAT_LOCK_NAMESPACE, "tenant": tenant_id},
    )
    plan = tenant_plan(conn, catalog, tenant_id)
    used = count_seats(conn, tenant_id)
    if used >= plan.seats:
        raise SeatLimitReached(
            f"the {plan.name} plan has {plan.seats} seats and all are in use; "
            "remove a member or change the plan",
            seats=plan.seats,
            used=used,
        )
