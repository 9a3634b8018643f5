"""Reconciliation: list subscriptions from Stripe's API and repair local drift.

Webhooks can be lost, delayed past Stripe's retries, or refused while a secret is being
rotated. This job reads every subscription (``status=all``) and applies each as the state
at the moment the listing began, through the same ordering rules as events: a state
that an event newer than the listing already set is left alone. Each repair is a
``subscription:repaired`` audit event, and a plan change also a ``plan:changed`` one.

NOTE: a subscription stored locally but missing from Stripe's listing (Stripe lists
canceled ones too, so only a deleted test-mode object) is not looked for.
"""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass, field

import stripe
import structlog

from stockade.audit.trail import record_event
from stockade.billing import subscriptions
from stockade.billing.context import BillingContext
from stockade.billing.stripe_api import StripeNotConfigured, stripe_client
from stockade.billing.stripe_events import MalformedEvent, SubscriptionState, subscription_state
from stockade.billing.subscriptions import TenantConflict
from stockade.db import Scope, scoped_transaction

log = structlog.get_logger(__name__)

PAGE_SIZE = 100
# Bounds one run; an account with more subscriptions is reconciled in part each run.
MAX_SUBSCRIPTIONS = 20_000


class ReconcileFailed(RuntimeError):
    """Stripe's API could not be read; nothing after the failure was reconciled."""


@dataclass
class ReconcileReport:
    listed: int = 0
    repaired: int = 0
    unchanged: int = 0
    unresolved: int = 0
    rejected: int = 0
    repairs: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.listed} subscriptions listed: {self.repaired} repaired,"
            f" {self.unchanged} already right, {self.unresolved} without a known tenant,"
            f" {self.rejected} rejected"
        )


def reconcile(context: BillingContext) -> ReconcileReport:
    """Compare every Stripe subscription with the local state and repair the differences."""
    report = ReconcileReport()
    try:
        client = stripe_client(context.settings, context.keystore)
    except StripeNotConfigured as exc:
        log.info("reconcile_skipped", reason=str(exc))
        return report
    started = int(time.time())
    try:
        listing = client.v1.subscriptions.list(params={"status": "all", "limit": PAGE_SIZE})
        for subscription in itertools.islice(listing.auto_paging_iter(), MAX_SUBSCRIPTIONS):
            report.listed += 1
            _reconcile_one(context, subscription.to_dict(), started, report)
    except stripe.StripeError as exc:
        log.warning("reconcile_failed", error=type(exc).__name__, status=exc.http_status)
        raise ReconcileFailed(
            f"listing subscriptions from Stripe's API failed ({type(exc).__name__})"
        ) from exc
    log.info(
        "reconcile_finished",
        listed=report.listed,
        repaired=report.repaired,
        unresolved=report.unresolved,
        rejected=report.rejected,
    )
    return report


def _reconcile_one(
    context: BillingContext, raw: dict[str, object], started: int, report: ReconcileReport
) -> None:
    try:
        state = subscription_state(raw)
        resolution = subscriptions.resolve_tenant(
            context.owner,
            hint=state.tenant_hint,
            customer_id=state.customer_id,
            subscription_id=state.subscription_id,
        )
    except (MalformedEvent, TenantConflict) as exc:
        _reject(raw.get("id"), str(exc), report)
        return
    if resolution.tenant_id is None:
        report.unresolved += 1
        return
    try:
        _repair(context, state, resolution.tenant_id, started, report)
    except TenantConflict as exc:
        _reject(state.subscription_id, str(exc), report)


def _repair(
    context: BillingContext,
    state: SubscriptionState,
    tenant_id: uuid.UUID,
    started: int,
    report: ReconcileReport,
) -> None:
    with scoped_transaction(context.owner, Scope(tenant_id=tenant_id)) as conn:
        applied = subscriptions.apply_subscription(
            conn,
            context.catalog,
            tenant_id,
            state,
            observed_at=started,
            rank=subscriptions.RECONCILIATION_RANK,
            source="reconciliation",
        )
        if not applied.changed:
            report.unchanged += 1
            return
        record_event(
            conn,
            tenant_id=tenant_id,
            action="subscription:repaired",
            subject=state.subscription_id,
            data={
                "from_status": applied.previous_status,
                "to_status": state.status,
                "from_plan": applied.previous_plan,
                "to_plan": applied.plan,
            },
        )
    report.repaired += 1
    report.repairs.append(f"{state.subscription_id}: {applied.previous_status} -> {state.status}")
    log.info(
        "subscription_repaired",
        subscription=state.subscription_id,
        tenant_id=str(tenant_id),
        previous=applied.previous_status,
        status=state.status,
    )


def _reject(subject: object, reason: str, report: ReconcileReport) -> None:
    # Logged, not audited: the same subscription would be reported at every run.
    report.rejected += 1
    log.warning("reconcile_rejected", subscription=subject, reason=reason)
