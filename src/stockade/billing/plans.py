"""Plans and their entitlements, read from the policy file, and changing a tenant's plan.

The policy file declares each plan under ``[plans.NAME]`` with every key of
``PLAN_KEYS``, and the feature flags that plans may use in ``plan_features``. Start-up
stops with a ``PolicyError`` on an unknown or missing key, a negative or non-integer
limit, an unknown feature flag, a malformed or duplicate Stripe price id, or a missing
``free`` plan, which new tenants start on.

A tenant's plan is the ``tenants.plan`` column. Only ``set_plan`` changes it, on the
owner role, and it records a ``plan:changed`` audit event in the same transaction.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import structlog
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import ProgrammingError

from stockade.access.policy import PolicyError, read_policy_document
from stockade.audit.trail import record_event
from stockade.billing.scope import tenant_transaction

log = structlog.get_logger(__name__)

# The plan of a new tenant: the database default of tenants.plan.
DEFAULT_PLAN = "free"
PLAN_KEYS = frozenset(
    {
        "stripe_price",
        "llm_calls_per_day",
        "llm_tokens_per_month",
        "seats",
        "documents",
        "document_bytes",
        "features",
    }
)
_LIMIT_KEYS = ("llm_calls_per_day", "llm_tokens_per_month", "seats", "documents", "document_bytes")
# Counters are bigint columns that add a limit to usage; this bound keeps the sum far
# from overflow.
MAX_LIMIT = 10**15
_PLAN_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_FEATURE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
# Stripe price ids start with "price_"; the prefix catches a pasted product id (prod_…).
_STRIPE_PRICE = re.compile(r"^price_[A-Za-z0-9_]{1,200}$")
_MAX_REASON = 200


class UnknownPlan(LookupError):
    """No plan has this name or Stripe price id."""


class PlanChangeError(RuntimeError):
    """``set_plan`` could not change the plan: an unknown tenant or the wrong database role."""


@dataclass(frozen=True)
class Plan:
    """One plan's entitlements. A limit of 0 allows nothing."""

    name: str
    stripe_price: str
    llm_calls_per_day: int
    llm_tokens_per_month: int
    seats: int
    # The knowledge base: how many documents a tenant may keep, and the largest upload.
    documents: int
    document_bytes: int
    features: frozenset[str]

    def has_feature(self, feature: str) -> bool:
        return feature in self.features

    def limits(self) -> dict[str, int]:
        return {key: getattr(self, key) for key in _LIMIT_KEYS}


@dataclass(frozen=True)
class PlanCatalog:
    """The plans of the policy file, found by name or by Stripe price id."""

    plans: Mapping[str, Plan]
    features: frozenset[str]

    def by_name(self, name: str) -> Plan:
        plan = self.plans.get(name)
        if plan is None:
            raise UnknownPlan(f"unknown plan {name!r}; plans are {sorted(self.plans)}")
        return plan

    def by_stripe_price(self, price_id: str) -> Plan:
        for plan in self.plans.values():
            if plan.stripe_price == price_id:
                return plan
        raise UnknownPlan(f"no plan has the Stripe price {price_id!r}")

    def default(self) -> Plan:
        return self.plans[DEFAULT_PLAN]


@dataclass(frozen=True)
class PlanChange:
    """The outcome of ``set_plan``. ``changed`` is False when the tenant was on ``current``."""

    tenant_id: uuid.UUID
    previous: str
    current: str
    changed: bool


# Reading the policy file


def load_plans(path: Path | None = None) -> PlanCatalog:
    """Read and validate the plans of the policy file: the packaged one unless ``path``."""
    document, source = read_policy_document(path)
    return parse_plans(document, source)


def parse_plans(document: Mapping[str, object], source: str) -> PlanCatalog:
    """Validate the ``plan_features`` list and the ``[plans]`` tables of a parsed file."""
    features = _parse_features(document.get("plan_features", []), source)
    raw_plans = document.get("plans")
    if not isinstance(raw_plans, dict) or not raw_plans:
        raise PolicyError(f"{source}: '[plans]' must declare at least the {DEFAULT_PLAN!r} plan")

    plans: dict[str, Plan] = {}
    price_owner: dict[str, str] = {}
    for name, table in raw_plans.items():
        plan = _parse_plan(name, table, features, source)
        if plan.stripe_price in price_owner:
            raise PolicyError(
                f"{source}: plans {price_owner[plan.stripe_price]!r} and {name!r} share the"
                f" Stripe price {plan.stripe_price!r}; each plan needs its own"
            )
        price_owner[plan.stripe_price] = name
        plans[name] = plan

    if DEFAULT_PLAN not in plans:
        raise PolicyError(f"{source}: '[plans]' must declare {DEFAULT_PLAN!r}, the default plan")
    return PlanCatalog(plans=plans, features=features)


def _parse_features(value: object, source: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise PolicyError(f"{source}: 'plan_features' must be a list of strings")
    for feature in value:
        if not _FEATURE_NAME.match(feature):
            raise PolicyError(
                f"{source}: feature {feature!r} must be lowercase letters, digits and '_'"
            )
    return frozenset(value)


def _parse_plan(name: str, table: object, features: frozenset[str], source: str) -> Plan:
    where = f"{source}: plan {name!r}"
    if not _PLAN_NAME.match(name):
        raise PolicyError(f"{where}: a name is 1-32 lowercase letters, digits and hyphens")
    if not isinstance(table, dict):
        raise PolicyError(f"{where} must be a table such as [plans.{name}]")
    unknown = sorted(set(table) - PLAN_KEYS)
    if unknown:
        raise PolicyError(f"{where} has unknown keys {unknown}; keys are {sorted(PLAN_KEYS)}")
    missing = sorted(PLAN_KEYS - set(table))
    if missing:
        raise PolicyError(f"{where} is missing {missing}")

    price = table["stripe_price"]
    if not isinstance(price, str) or not _STRIPE_PRICE.match(price):
        raise PolicyError(f"{where}: stripe_price must be a Stripe price id such as 'price_…'")
    limits = {key: _parse_limit(table[key], f"{where}: {key}") for key in _LIMIT_KEYS}
    flags = table["features"]
    if not isinstance(flags, list) or not all(isinstance(flag, str) for flag in flags):
        raise PolicyError(f"{where}: features must be a list of strings")
    undeclared = sorted(set(flags) - features)
    if undeclared:
        raise PolicyError(f"{where} names features {undeclared} missing from plan_features")
    return Plan(name=name, stripe_price=price, features=frozenset(flags), **limits)


def _parse_limit(value: object, where: str) -> int:
    # TOML booleans arrive as Python bool, a subclass of int; they are no limit.
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(f"{where} must be a whole number, not {value!r}")
    if not 0 <= value <= MAX_LIMIT:
        raise PolicyError(f"{where} must be between 0 and {MAX_LIMIT}, not {value}")
    return value


# The tenant's plan


def tenant_plan(conn: Connection, catalog: PlanCatalog, tenant_id: uuid.UUID) -> Plan:
    """Return the plan of ``tenant_id`` in ``conn``'s scoped transaction.

    A stored name that the policy file no longer declares falls back to the default
    plan, with a warning in the log, so a removed plan never lifts every limit.
    """
    name = conn.execute(
        text("select plan from tenants where id = :tenant"), {"tenant": tenant_id}
    ).scalar_one_or_none()
    if name is None:
        raise UnknownPlan(f"tenant {tenant_id} is not visible in this transaction")
    try:
        return catalog.by_name(name)
    except UnknownPlan:
        log.warning("tenant_plan_unknown", tenant_id=str(tenant_id), plan=name)
        return catalog.default()


def set_plan(
    target: Engine | Connection,
    tenant_id: uuid.UUID,
    plan: Plan,
    reason: str,
    *,
    actor_user_id: uuid.UUID | None = None,
    data: Mapping[str, Any] | None = None,
) -> PlanChange:
    """Put ``tenant_id`` on ``plan`` and record ``plan:changed`` in its audit trail.

    ``target`` is the owner engine, or a connection of the owner role in a transaction
    scoped to ``tenant_id``; the application role may not change a plan. ``reason``
    says what caused the change (e.g. the Stripe event type and id) and goes into the
    audit event with ``data``. Setting the plan the tenant already has changes nothing
    and records nothing, so a repeated webhook is harmless. The tenant's row stays
    locked until the transaction ends, so concurrent changes apply one after the other.
    Entitlements follow at once: the next reservation reads the new plan.
    """
    reason = reason.strip()
    if not reason or len(reason) > _MAX_REASON:
        raise ValueError(f"reason must be 1 to {_MAX_REASON} characters")
    with tenant_transaction(target, tenant_id) as conn:
        previous = _lock_plan(conn, tenant_id)
        if previous == plan.name:
            return PlanChange(tenant_id, previous, plan.name, changed=False)
        conn.execute(
            text("update tenants set plan = :plan where id = :tenant"),
            {"plan": plan.name, "tenant": tenant_id},
        )
        record_event(
            conn,
            tenant_id=tenant_id,
            action="plan:changed",
            actor_user_id=actor_user_id,
            subject=plan.name,
            data={**(data or {}), "from": previous, "to": plan.name, "reason": reason},
        )
    log.info("plan_changed", tenant_id=str(tenant_id), previous=previous, plan=plan.name)
    return PlanChange(tenant_id, previous, plan.name, changed=True)


def _lock_plan(conn: Connection, tenant_id: uuid.UUID) -> str:
    try:
        previous = conn.execute(
            text("select plan from tenants where id = :tenant for update"), {"tenant": tenant_id}
        ).scalar_one_or_none()
    except ProgrammingError as exc:
        if isinstance(exc.orig, psycopg.errors.InsufficientPrivilege):
            raise PlanChangeError(
                "set_plan needs the owner role, not the application role"
            ) from exc
        raise
    if previous is None:
        raise PlanChangeError(f"tenant {tenant_id} not found")
    return str(previous)
