"""Local subscription state, the tenant a subscription belongs to, and the plan it grants.

A subscription belongs to the tenant that its ``metadata.tenant_id`` names (Checkout
sets it) or, without one, to the tenant linked to its customer. The two must agree, and
a subscription never moves to another tenant.

States are ordered by (``observed_at``, ``rank``): the event's ``created`` time, then
created < updated < deleted for events of the same second. A state older than the
stored one is ignored, and a canceled or expired subscription stays so, because Stripe
never revives one. A tenant's plan is the plan of its most recent subscription that
grants one; with none, the default plan.

Every function here runs on the owner role inside a transaction scoped to the tenant
(``set_plan`` needs the owner role).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import structlog
from sqlalchemy import Connection, Engine, text

from stockade.billing.plans import Plan, PlanCatalog, UnknownPlan, set_plan
from stockade.billing.stripe_events import (
    SUBSCRIPTION_CREATED,
    SUBSCRIPTION_DELETED,
    SUBSCRIPTION_UPDATED,
    SubscriptionState,
    parse_tenant_hint,
)

log = structlog.get_logger(__name__)

EVENT_RANKS = {SUBSCRIPTION_CREATED: 0, SUBSCRIPTION_UPDATED: 1, SUBSCRIPTION_DELETED: 2}
# The API's response ranks like an update: it is the state at the moment of the listing.
RECONCILIATION_RANK = 1
# Stripe's subscription statuses that grant the subscribed plan. past_due keeps it while
# Stripe retries the payment; unpaid, canceled, paused and the incomplete ones do not.
GRANTING_STATUSES = frozenset({"active", "trialing", "past_due"})
TERMINAL_STATUSES = frozenset({"canceled", "incomplete_expired"})

_TENANT_EXISTS = text("select 1 from tenants where id = :tenant")
_CUSTOMER_TENANT = text("select tenant_id from billing_customers where customer_id = :customer")
_SUBSCRIPTION_TENANT = text(
    "select tenant_id from billing_subscriptions where subscription_id = :subscription"
)
_LINK_CUSTOMER = text(
    "insert into billing_customers (customer_id, tenant_id) values (:customer, :tenant)"
    " on conflict (customer_id) do nothing"
)
_LOCK_SUBSCRIPTION = text(
    "select tenant_id, status, price_id, plan, current_period_end, cancel_at_period_end,"
    " state_at, state_rank from billing_subscriptions"
    " where subscription_id = :subscription for update"
)
_UPSERT_SUBSCRIPTION = text(
    "insert into billing_subscriptions (subscription_id, tenant_id, customer_id, status,"
    " price_id, plan, current_period_end, cancel_at_period_end, state_at, state_rank,"
    " state_source, updated_at)"
    " values (:subscription, :tenant, :customer, :status, :price, :plan,"
    " to_timestamp(:period_end), :cancel_at_period_end, :state_at, :state_rank, :source, now())"
    " on conflict (subscription_id) do update set customer_id = excluded.customer_id,"
    " status = excluded.status, price_id = excluded.price_id, plan = excluded.plan,"
    " current_period_end = excluded.current_period_end,"
    " cancel_at_period_end = excluded.cancel_at_period_end, state_at = excluded.state_at,"
    " state_rank = excluded.state_rank, state_source = excluded.state_source, updated_at = now()"
    " where billing_subscriptions.tenant_id = excluded.tenant_id"
)
_GRANTING_PLANS = text(
    "select plan from billing_subscriptions where tenant_id = :tenant and plan is not null"
    " and status = any(:statuses) order by state_at desc, subscription_id limit 1"
)


class TenantConflict(Exception):
    """The event names one tenant and the stored links another; nothing is applied."""


@dataclass(frozen=True)
class Resolution:
    """The tenant an object belongs to, or None while no link is known yet."""

    tenant_id: uuid.UUID | None


@dataclass(frozen=True)
class Applied:
    """The result of ``apply_subscription``; ``changed`` is False for a stale or equal state."""

    outcome: str
    changed: bool
    previous_status: str | None = None
    previous_plan: str | None = None
    plan: str | None = None


def resolve_tenant(
    owner: Engine,
    *,
    hint: str | None,
    customer_id: str | None,
    subscription_id: str | None = None,
) -> Resolution:
    """Find the tenant from ``metadata.tenant_id``, the customer link or the stored subscription.

    Raises ``TenantConflict`` when they disagree or the hint names no tenant.
    """
    named = parse_tenant_hint(hint)
    with owner.connect() as conn:
        if named is not None and conn.execute(_TENANT_EXISTS, {"tenant": named}).first() is None:
            raise TenantConflict(f"metadata.tenant_id names no tenant ({named})")
        linked = _scalar(conn, _CUSTOMER_TENANT, {"customer": customer_id}) if customer_id else None
        stored = (
            _scalar(conn, _SUBSCRIPTION_TENANT, {"subscription": subscription_id})
            if subscription_id
            else None
        )
    found = {tenant for tenant in (named, linked, stored) if tenant is not None}
    if len(found) > 1:
        raise TenantConflict(
            f"metadata names tenant {named}, customer {customer_id} is linked to {linked},"
            f" subscription {subscription_id} belongs to {stored}"
        )
    return Resolution(found.pop() if found else None)


def link_customer(conn: Connection, tenant_id: uuid.UUID, customer_id: str) -> bool:
    """Link a Stripe customer to the tenant; return True if the link is new."""
    return (
        conn.execute(_LINK_CUSTOMER, {"customer": customer_id, "tenant": tenant_id}).rowcount == 1
    )


def apply_subscription(
    conn: Connection,
    catalog: PlanCatalog,
    tenant_id: uuid.UUID,
    state: SubscriptionState,
    *,
    observed_at: int,
    rank: int,
    source: str,
) -> Applied:
    """Store ``state`` unless a newer one is stored, then put the tenant on its plan."""
    row = conn.execute(_LOCK_SUBSCRIPTION, {"subscription": state.subscription_id}).first()
    if row is not None:
        stored_tenant, status, price, plan, period_end, cancel, state_at, state_rank = row
        if stored_tenant != tenant_id:
            raise TenantConflict(f"subscription {state.subscription_id} belongs to another tenant")
        if (observed_at, rank) < (state_at, state_rank):
            return Applied(f"older than the stored state ({state_at})", changed=False)
        if status in TERMINAL_STATUSES and state.status != status:
            return Applied(f"the subscription is {status}, which is final", changed=False)
        stored_state = (status, price, cancel, _epoch(period_end))
        if stored_state == _comparable(state):
            _write(conn, tenant_id, state, plan, observed_at, rank, source)
            return Applied("no change", changed=False, previous_status=status, plan=plan)
        previous_status, previous_plan = status, plan
    else:
        previous_status = previous_plan = None

    plan_name = _plan_of(catalog, state)
    link_customer(conn, tenant_id, state.customer_id)
    _write(conn, tenant_id, state, plan_name, observed_at, rank, source)
    reason = f"Stripe subscription {state.subscription_id} is {state.status} ({source})"
    if plan_name is None and state.price_ids:
        # Say why the plan falls back, so the audit trail shows a missing price mapping.
        reason += f"; its prices {', '.join(state.price_ids)} match no plan in the policy file"
    change = set_plan(
        conn,
        tenant_id,
        effective_plan(conn, catalog, tenant_id),
        reason,
        data={
            "subscription": state.subscription_id,
            "status": state.status,
            "prices": list(state.price_ids),
        },
    )
    outcome = f"{state.status}; plan {change.current}"
    return Applied(
        outcome,
        changed=True,
        previous_status=previous_status,
        previous_plan=previous_plan,
        plan=plan_name,
    )


def effective_plan(conn: Connection, catalog: PlanCatalog, tenant_id: uuid.UUID) -> Plan:
    """Return the plan of the tenant's newest granting subscription, or the default plan."""
    name = conn.execute(
        _GRANTING_PLANS, {"tenant": tenant_id, "statuses": sorted(GRANTING_STATUSES)}
    ).scalar_one_or_none()
    if name is None:
        return catalog.default()
    try:
        return catalog.by_name(name)
    except UnknownPlan:
        log.warning("subscription_plan_unknown", tenant_id=str(tenant_id), plan=name)
        return catalog.default()


def _plan_of(catalog: PlanCatalog, state: SubscriptionState) -> str | None:
    """Return the plan of the first price that the policy file declares, else None."""
    for price in state.price_ids:
        try:
            return catalog.by_stripe_price(price).name
        except UnknownPlan:
            continue
    if state.price_ids:
        log.warning(
            "subscription_price_unknown",
            subscription=state.subscription_id,
            prices=list(state.price_ids),
        )
    return None


def _write(
    conn: Connection,
    tenant_id: uuid.UUID,
    state: SubscriptionState,
    plan: str | None,
    observed_at: int,
    rank: int,
    source: str,
) -> None:
    conn.execute(
        _UPSERT_SUBSCRIPTION,
        {
            "subscription": state.subscription_id,
            "tenant": tenant_id,
            "customer": state.customer_id,
            "status": state.status,
            "price": _first_price(state),
            "plan": plan,
            "period_end": state.current_period_end,
            "cancel_at_period_end": state.cancel_at_period_end,
            "state_at": observed_at,
            "state_rank": rank,
            "source": source[:200],
        },
    )


def _comparable(state: SubscriptionState) -> tuple[object, ...]:
    return (
        state.status,
        _first_price(state),
        state.cancel_at_period_end,
        state.current_period_end,
    )


def _first_price(state: SubscriptionState) -> str | None:
    return state.price_ids[0] if state.price_ids else None


def _epoch(moment: object) -> int | None:
    timestamp = getattr(moment, "timestamp", None)
    return int(timestamp()) if callable(timestamp) else None


def _scalar(conn: Connection, statement: object, params: dict[str, object]) -> uuid.UUID | None:
    row = conn.execute(statement, params).first()  # type: ignore[call-overload]
    return row[0] if row else None
