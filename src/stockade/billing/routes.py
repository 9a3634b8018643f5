"""``GET /api/v1/billing/entitlements``: the tenant's plan, its limits and current usage.

The route needs ``billing:read``, which the policy file grants to every role that has
``usage:read`` or ``billing:manage``. There is no route that writes usage.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from pydantic import BaseModel

from stockade.access.guard import Principal, require
from stockade.billing.entitlements import (
    LLM_CALLS,
    LLM_TOKENS,
    Entitlements,
    MeterUsage,
    read_entitlements,
)
from stockade.db import scoped_transaction

router = APIRouter(prefix="/api/v1/billing", tags=["billing"])


class PlanView(BaseModel):
    name: str
    features: list[str]


class Limits(BaseModel):
    llm_calls_per_day: int
    llm_tokens_per_month: int
    seats: int
    documents: int
    document_bytes: int


class MeterView(BaseModel):
    limit: int
    # Settled usage in the current window.
    used: int
    # Held by calls in progress, not yet settled.
    reserved: int
    remaining: int
    window: str
    window_start: datetime
    resets_at: datetime


class SeatsView(BaseModel):
    limit: int
    used: int


class Usage(BaseModel):
    llm_calls_today: MeterView
    llm_tokens_this_month: MeterView
    seats: SeatsView


class EntitlementsView(BaseModel):
    plan: PlanView
    limits: Limits
    usage: Usage


@router.get("/entitlements", response_model=EntitlementsView)
def get_entitlements(
    request: Request, principal: Principal = require("billing:read")
) -> EntitlementsView:
    with scoped_transaction(request.app.state.db.app, principal.scope()) as conn:
        found = read_entitlements(conn, request.app.state.plans, principal.tenant_id)
    return _view(found)


def _view(found: Entitlements) -> EntitlementsView:
    plan = found.plan
    return EntitlementsView(
        plan=PlanView(name=plan.name, features=sorted(plan.features)),
        limits=Limits(**plan.limits()),
        usage=Usage(
            llm_calls_today=_meter(found.usage_of(LLM_CALLS)),
            llm_tokens_this_month=_meter(found.usage_of(LLM_TOKENS)),
            seats=SeatsView(limit=plan.seats, used=found.seats_used),
        ),
    )


def _meter(meter: MeterUsage) -> MeterView:
    usage = meter.usage
    return MeterView(
        limit=meter.limit,
        used=usage.used,
        reserved=usage.reserved,
        remaining=meter.remaining,
        window=usage.window.value,
        window_start=usage.window_start,
        resets_at=usage.resets_at,
    )
