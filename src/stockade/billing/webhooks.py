"""``POST /webhooks/stripe`` and ``POST /webhooks/adyen``: verify, store once, respond fast.

Each delivery passes these steps, in order, and a failed step returns an error at once:

1. The body is read raw, up to ``MAX_BODY_BYTES`` (413 beyond).
2. The signature is verified over the raw bytes with every secret active in the
   rotation window (400, or 503 while no secret is set).
3. The body is parsed strictly. A signed Stripe body that is not an event of the
   expected shape is stored as 'rejected' under a digest of its bytes, then refused
   with 400, so it is never lost.
4. Stripe events whose type is not on the allow-list, or whose ``api_version`` is not
   the expected one, are stored as 'ignored'.
5. The event is inserted once per event id, and the job that applies it is deferred in
   the same transaction. A duplicate changes nothing and also gets 200.

Rejections are logged and recorded as ``webhook:rejected`` platform events (no tenant
is known for an unverified request), at most one per provider and reason every
``AUDIT_INTERVAL_SECONDS`` with a count of the ones left out, so a flood of forged
requests cannot flood the audit chain.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from stockade.access.guard import require
from stockade.access.policy import PUBLIC
from stockade.audit.trail import record_platform_event
from stockade.billing import adyen, credentials, stripe_events
from stockade.billing.events import EventKey, IncomingEvent, store_event
from stockade.billing.signatures import Rejection, SignatureError, verify_adyen, verify_stripe
from stockade.billing.stripe_events import MalformedEvent
from stockade.billing.worker import defer_apply
from stockade.errors import Problem
from stockade.keys import KeyStore

log = structlog.get_logger(__name__)

router = APIRouter(tags=["webhooks"])

# Stripe's events and Adyen's batches are far smaller; a larger body is refused unread.
MAX_BODY_BYTES = 512 * 1024
AUDIT_INTERVAL_SECONDS = 10.0


class WebhookRejected(Problem):
    status = 400
    code = "webhook-rejected"
    title = "Webhook rejected"


class PayloadTooLarge(Problem):
    status = 413
    code = "payload-too-large"
    title = "Payload too large"


class WebhookNotConfigured(Problem):
    status = 503
    code = "webhook-not-configured"
    title = "Webhook not configured"


@dataclass(frozen=True)
class Accepted:
    """The response body for a stored delivery."""

    event_ids: tuple[str, ...]
    duplicates: int

    def body(self) -> dict[str, Any]:
        return {"received": True, "events": list(self.event_ids), "duplicates": self.duplicates}


class RejectionAudit:
    """Record ``webhook:rejected`` platform events, at most one per key per interval."""

    def __init__(self, engine: Engine, interval: float = AUDIT_INTERVAL_SECONDS) -> None:
        self.engine = engine
        self.interval = interval
        self._lock = threading.Lock()
        # (provider, reason) -> (monotonic time of the last recorded event, left out since)
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def record(self, provider: str, reason: str, data: dict[str, Any] | None = None) -> None:
        key = (provider, reason)
        now = time.monotonic()
        with self._lock:
            last, left_out = self._last.get(key, (float("-inf"), 0))
            if now - last < self.interval:
                self._last[key] = (last, left_out + 1)
                return
            self._last[key] = (now, 0)
        log.info("webhook_rejection_audited", provider=provider, reason=reason)
        record_platform_event(
            self.engine,
            action="webhook:rejected",
            subject=provider,
            data={**(data or {}), "provider": provider, "reason": reason, "left_out": left_out},
        )


class WebhookIntake:
    """Verify and store deliveries; one per application."""

    def __init__(self, engine: Engine, keystore: KeyStore) -> None:
        self.engine = engine
        self.keystore = keystore
        self.audit = RejectionAudit(engine)

    def receive_stripe(self, body: bytes, header: str | None) -> Accepted:
        secrets = credentials.webhook_secrets(self.keystore, credentials.STRIPE_WEBHOOK_SECRET)
        try:
            verify_stripe(header, body, secrets, now=int(time.time()))
        except SignatureError as exc:
            raise self._refused("stripe", exc.reason) from None
        try:
            event = stripe_events.parse_event(body)
        except MalformedEvent as exc:
            self._store_malformed(body, str(exc))
            self.reject("stripe", "malformed-event", {"detail": str(exc)})
            raise WebhookRejected(f"the body is not a valid Stripe event: {exc}") from None
        incoming = _stripe_incoming(event, body)
        return self._store("stripe", [incoming])

    def receive_adyen(self, body: bytes) -> Accepted:
        keys = credentials.webhook_secrets(self.keystore, credentials.ADYEN_HMAC_KEY)
        if not keys:
            raise self._refused("adyen", Rejection.NO_SECRET)
        try:
            items = adyen.parse_notification(body)
        except adyen.MalformedNotification as exc:
            self.reject("adyen", "malformed-notification", {"detail": str(exc)})
            raise WebhookRejected(f"the body is not a valid Adyen notification: {exc}") from None
        try:
            for item in items:
                verify_adyen(item.fields, keys)
        except SignatureError as exc:
            raise self._refused("adyen", exc.reason) from None
        return self._store("adyen", [item.incoming() for item in items])

    def reject(self, provider: str, reason: str, data: dict[str, Any] | None = None) -> None:
        log.info("webhook_rejected", provider=provider, reason=reason)
        self.audit.record(provider, reason, data)

    def _refused(self, provider: str, reason: Rejection) -> Problem:
        self.reject(provider, reason.value)
        if reason is Rejection.NO_SECRET:
            name = (
                credentials.STRIPE_WEBHOOK_SECRET
                if provider == "stripe"
                else credentials.ADYEN_HMAC_KEY
            )
            return WebhookNotConfigured(
                f"no {name} is set; an operator sets it with 'stockade secrets set {name} --stdin'"
            )
        return WebhookRejected("the webhook signature does not verify", reason=reason.value)

    def _store(self, provider: str, incoming: list[IncomingEvent]) -> Accepted:
        duplicates = 0
        # A plain transaction, with no tenant settings to clear: set_config(..., true)
        # settings never outlive their transaction, and these policies read none.
        with self.engine.begin() as conn:
            for event in incoming:
                if not store_event(conn, event):
                    duplicates += 1
                elif event.status == "pending":
                    defer_apply(conn, EventKey(provider, event.event_id))
        return Accepted(tuple(event.event_id for event in incoming), duplicates)

    def _store_malformed(self, body: bytes, reason: str) -> None:
        digest = hashlib.sha256(body).hexdigest()
        event = IncomingEvent(
            provider="stripe",
            event_id=f"malformed:{digest}",
            event_type="malformed",
            body=body,
            status="rejected",
            outcome=reason,
        )
        with self.engine.begin() as conn:
            store_event(conn, event)


def _stripe_incoming(event: stripe_events.StripeEvent, body: bytes) -> IncomingEvent:
    status, outcome = "pending", None
    if event.type not in stripe_events.HANDLED_TYPES:
        status, outcome = "ignored", f"event type {event.type} is not handled"
    elif event.api_version != stripe_events.EXPECTED_API_VERSION:
        status = "ignored"
        outcome = (
            f"api_version {event.api_version} is not {stripe_events.EXPECTED_API_VERSION};"
            " set the endpoint's API version in Stripe"
        )
        log.warning("stripe_event_version_unexpected", event_id=event.id, version=event.api_version)
    return IncomingEvent(
        provider="stripe",
        event_id=event.id,
        event_type=event.type,
        body=body,
        provider_created_at=datetime.fromtimestamp(event.created, UTC),
        api_version=event.api_version,
        object_id=event.object_id,
        customer_id=_customer_or_none(event),
        status=status,
        outcome=outcome,
    )


def _customer_or_none(event: stripe_events.StripeEvent) -> str | None:
    try:
        return event.customer_id
    except MalformedEvent:
        return None


def intake_for(request: Request) -> WebhookIntake:
    """Return the application's ``WebhookIntake``, creating it on first use."""
    state = request.app.state
    intake: WebhookIntake | None = getattr(state, "webhook_intake", None)
    if intake is None:
        intake = WebhookIntake(state.db.app, state.keystore)
        state.webhook_intake = intake
    return intake


async def read_body(request: Request, provider: str, limit: int = MAX_BODY_BYTES) -> bytes:
    """Read the raw body, refusing one over ``limit`` bytes before or while reading it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        await run_in_threadpool(intake_for(request).reject, provider, "payload-too-large")
        raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            await run_in_threadpool(intake_for(request).reject, provider, "payload-too-large")
            raise PayloadTooLarge(f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/webhooks/stripe", include_in_schema=False, dependencies=[require(PUBLIC)])
async def stripe_webhook(request: Request) -> JSONResponse:
    body = await read_body(request, "stripe")
    accepted = await run_in_threadpool(
        intake_for(request).receive_stripe, body, request.headers.get("stripe-signature")
    )
    return JSONResponse(accepted.body())


@router.post("/webhooks/adyen", include_in_schema=False, dependencies=[require(PUBLIC)])
async def adyen_webhook(request: Request) -> PlainTextResponse:
    body = await read_body(request, "adyen")
    await run_in_threadpool(intake_for(request).receive_adyen, body)
    # Adyen marks a notification delivered only when the response body is exactly this text.
    return PlainTextResponse("[accepted]")
