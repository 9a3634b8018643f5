"""``/api/v1/billing/checkout`` and ``/api/v1/billing/receipts``: pay for a plan, get receipts.

Checkout needs ``billing:manage``, which only ``billing-admin`` grants, so the route
guard also demands a sign-in with MFA. Receipts need ``billing:read``, like the
entitlements.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from stockade.access.guard import Principal, require
from stockade.audit.trail import record_event
from stockade.billing import receipts
from stockade.billing.checkout import CheckoutFailed, CheckoutSession, create_checkout_session
from stockade.billing.plans import DEFAULT_PLAN, UnknownPlan
from stockade.billing.stripe_api import StripeNotConfigured, stripe_client
from stockade.db import scoped_transaction
from stockade.errors import NotFound, Problem, Unprocessable

router = APIRouter(prefix="/api/v1/billing", tags=["billing"])

_CUSTOMER = text(
    "select customer_id from billing_customers where tenant_id = :tenant"
    " order by created_at desc limit 1"
)


class PaymentProviderUnavailable(Problem):
    status = 503
    code = "payment-provider-unavailable"
    title = "Payment provider unavailable"


class BadGateway(Problem):
    status = 502
    code = "payment-provider-error"
    title = "Payment provider error"


class CheckoutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plan: Annotated[str, Field(min_length=1, max_length=32)]


class CheckoutOut(BaseModel):
    id: str
    url: str


class ReceiptSummary(BaseModel):
    id: uuid.UUID
    invoice: str
    plan: str | None
    amount_paid: int
    currency: str
    paid_at: datetime


class ReceiptList(BaseModel):
    items: list[ReceiptSummary]


class SignedReceipt(BaseModel):
    id: uuid.UUID
    # The receipt as a compact JWS; `stockade receipt verify` checks it offline.
    jws: str


@router.post("/checkout", response_model=CheckoutOut, status_code=201)
async def start_checkout(
    request: Request, order: CheckoutIn, principal: Principal = require("billing:manage")
) -> CheckoutOut:
    session = await run_in_threadpool(_checkout, request, order.plan, principal)
    return CheckoutOut(id=session.id, url=session.url)


@router.get("/receipts", response_model=ReceiptList)
def list_receipts(
    request: Request,
    principal: Principal = require("billing:read"),
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ReceiptList:
    with scoped_transaction(request.app.state.db.app, principal.scope()) as conn:
        found = receipts.list_receipts(conn, principal.tenant_id, limit=limit)
    return ReceiptList(items=[_summary(receipt) for receipt in found])


@router.get("/receipts/{receipt_id}", response_model=SignedReceipt)
def get_receipt(
    request: Request, receipt_id: uuid.UUID, principal: Principal = require("billing:read")
) -> SignedReceipt:
    with scoped_transaction(request.app.state.db.app, principal.scope()) as conn:
        receipt = receipts.get_receipt(conn, principal.tenant_id, receipt_id)
    if receipt is None:
        raise NotFound("no such receipt")
    settings = request.app.state.settings
    token = receipts.sign_receipt(request.app.state.keystore, settings.issuer, receipt)
    return SignedReceipt(id=receipt.id, jws=token)


def _checkout(request: Request, plan_name: str, principal: Principal) -> CheckoutSession:
    state = request.app.state
    try:
        plan = state.plans.by_name(plan_name)
    except UnknownPlan:
        raise Unprocessable(
            f"unknown plan {plan_name!r}", plans=sorted(state.plans.plans)
        ) from None
    if plan.name == DEFAULT_PLAN:
        raise Unprocessable(f"{DEFAULT_PLAN!r} is the plan without a subscription; pick another")
    try:
        client = stripe_client(state.settings, state.keystore)
    except StripeNotConfigured as exc:
        raise PaymentProviderUnavailable(str(exc)) from None

    with scoped_transaction(state.db.app, principal.scope()) as conn:
        customer_id = conn.execute(_CUSTOMER, {"tenant": principal.tenant_id}).scalar_one_or_none()
    # The tenant's own account page; a front end reads ?checkout= to show the result.
    account = f"{state.settings.issuer}/account"
    try:
        session = create_checkout_session(
            client,
            plan=plan,
            tenant_id=principal.tenant_id,
            customer_id=customer_id,
            success_url=f"{account}?checkout=success",
            cancel_url=f"{account}?checkout=cancelled",
        )
    except CheckoutFailed as exc:
        raise BadGateway(str(exc)) from None

    with scoped_transaction(state.db.app, principal.scope()) as conn:
        record_event(
            conn,
            tenant_id=principal.tenant_id,
            action="checkout:created",
            actor_user_id=principal.user_id,
            subject=session.id,
            data={"plan": plan.name},
        )
    return session


def _summary(receipt: receipts.Receipt) -> ReceiptSummary:
    return ReceiptSummary(
        id=receipt.id,
        invoice=receipt.invoice_id,
        plan=receipt.plan,
        amount_paid=receipt.amount_paid,
        currency=receipt.currency,
        paid_at=receipt.paid_at,
    )
