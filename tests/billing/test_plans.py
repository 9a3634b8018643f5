"""Plans from the policy file: validation at start, lookups, and ``set_plan``."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from stockade.access.policy import PolicyError, load_policy
from stockade.billing.plans import (
    PlanChangeError,
    UnknownPlan,
    load_plans,
    set_plan,
    tenant_plan,
)
from stockade.config import Settings
from stockade.db import Scope, scoped_transaction
from stockade.runtime import Runtime
from tests.cli.test_cli import assert_one_line_error, run
from tests.conftest import Factory

FREE = """
[plans.free]
stripe_price = "price_free"
llm_calls_per_day = 50
llm_tokens_per_month = 1000
seats = 3
documents = 10
document_bytes = 100_000
features = []
"""


def write_policy(tmp_path: Path, plans: str, features: str = "[]") -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(f"plan_features = {features}\n{plans}")
    return path


def plan_actions(runtime: Runtime, tenant_id: uuid.UUID) -> list[tuple[str, dict[str, object]]]:
    with runtime.db.owner.begin() as conn:
        rows = conn.execute(
            text("select action, data from audit_events where tenant_id = :t order by seq"),
            {"t": tenant_id},
        ).all()
    return [(row[0], row[1]) for row in rows]


def stored_plan(runtime: Runtime, tenant_id: uuid.UUID) -> str:
    with runtime.db.owner.begin() as conn:
        return str(
            conn.execute(text("select plan from tenants where id = :t"), {"t": tenant_id}).scalar()
        )


# The policy file


def test_packaged_plans_have_limits() -> None:
    catalog = load_plans()

    free = catalog.by_name("free")
    pro = catalog.by_name("pro")

    assert free.llm_calls_per_day == 50
    assert pro.llm_calls_per_day == 2_000
    assert catalog.by_name("enterprise").llm_calls_per_day > pro.llm_calls_per_day
    assert free.llm_tokens_per_month < pro.llm_tokens_per_month
    assert free.seats < pro.seats
    assert catalog.default() == free


def test_stripe_price_finds_plan() -> None:
    catalog = load_plans()

    assert catalog.by_stripe_price("price_free").name == "free"
    assert catalog.by_stripe_price("price_pro").name == "pro"
    assert catalog.by_stripe_price("price_enterprise").name == "enterprise"


def test_unknown_plan_lookups_raise() -> None:
    catalog = load_plans()

    with pytest.raises(UnknownPlan, match="unknown plan 'gold'"):
        catalog.by_name("gold")
    with pytest.raises(UnknownPlan, match="price_nope"):
        catalog.by_stripe_price("price_nope")


def test_features_declared_per_plan() -> None:
    catalog = load_plans()

    assert catalog.by_name("free").has_feature("retrieval")
    assert not catalog.by_name("free").has_feature("sandboxed_tools")
    assert catalog.by_name("enterprise").features <= catalog.features


@pytest.mark.parametrize(
    ("plans", "message"),
    [
        (FREE.replace("seats = 3", "seats = 3\ncolour = 'blue'"), r"unknown keys \['colour'\]"),
        (FREE.replace("seats = 3\n", ""), r"missing \['seats'\]"),
        (FREE.replace("= 50", "= -1"), "between 0 and"),
        (FREE.replace("= 50", "= true"), "whole number"),
        (FREE.replace("= 50", "= 2.5"), "whole number"),
        (FREE.replace('"price_free"', '"prod_free"'), "Stripe price id"),
        (FREE.replace("features = []", 'features = ["sso"]'), r"features \['sso'\]"),
        (FREE.replace("plans.free", "plans.starter"), "must declare 'free'"),
        (FREE.replace("plans.free", "plans.Free"), "lowercase"),
        (FREE + FREE.replace("plans.free", "plans.pro"), "share the Stripe price 'price_free'"),
        ("", "at least the 'free' plan"),
    ],
)
def test_malformed_plans_refused(tmp_path: Path, plans: str, message: str) -> None:
    path = write_policy(tmp_path, plans)

    with pytest.raises(PolicyError, match=message):
        load_plans(path)


def test_malformed_plan_features_refused(tmp_path: Path) -> None:
    path = write_policy(tmp_path, FREE, features='["Bad Flag"]')

    with pytest.raises(PolicyError, match="feature 'Bad Flag'"):
        load_plans(path)


def test_billing_read_matches_usage_or_manage() -> None:
    # The entitlements route needs billing:read; the roles that have it must be exactly
    # those with usage:read or billing:manage.
    policy = load_policy()

    readers = {role for role in policy.roles if policy.decide([role], "billing:read").allowed}
    expected = {
        role
        for role in policy.roles
        if policy.decide([role], "usage:read").allowed
        or policy.decide([role], "billing:manage").allowed
    }

    assert readers == expected
    assert readers == {"auditor", "billing-admin", "admin"}


# The tenant's plan


def test_set_plan_audits_change(runtime: Runtime, factory: Factory) -> None:
    tenant_id, _ = factory.tenant("plan")
    pro = runtime.plans.by_name("pro")

    change = set_plan(runtime.db.owner, tenant_id, pro, "stripe customer.subscription.updated")

    assert change.changed
    assert (change.previous, change.current) == ("free", "pro")
    assert stored_plan(runtime, tenant_id) == "pro"
    action, data = plan_actions(runtime, tenant_id)[-1]
    assert action == "plan:changed"
    assert data["from"] == "free"
    assert data["to"] == "pro"
    assert data["reason"] == "stripe customer.subscription.updated"


def test_same_plan_records_nothing(runtime: Runtime, factory: Factory) -> None:
    tenant_id, _ = factory.tenant("plan")
    pro = runtime.plans.by_name("pro")
    set_plan(runtime.db.owner, tenant_id, pro, "first delivery")

    repeated = set_plan(runtime.db.owner, tenant_id, pro, "second delivery")

    assert not repeated.changed
    assert [action for action, _ in plan_actions(runtime, tenant_id)] == ["plan:changed"]


def test_set_plan_joins_owner_transaction(runtime: Runtime, factory: Factory) -> None:
    tenant_id, _ = factory.tenant("plan")
    free = runtime.plans.by_name("free")
    enterprise = runtime.plans.by_name("enterprise")

    with scoped_transaction(runtime.db.owner, Scope(tenant_id=tenant_id)) as conn:
        set_plan(conn, tenant_id, enterprise, "contract signed", data={"contract": "c-1"})
        set_plan(conn, tenant_id, free, "contract ended")

    assert stored_plan(runtime, tenant_id) == "free"
    changes = plan_actions(runtime, tenant_id)
    assert [data["to"] for _, data in changes] == ["enterprise", "free"]
    assert changes[0][1]["contract"] == "c-1"


def test_app_role_cannot_set_plan(runtime: Runtime, factory: Factory) -> None:
    tenant_id, _ = factory.tenant("plan")

    with pytest.raises(PlanChangeError, match="owner role"):
        set_plan(runtime.db.app, tenant_id, runtime.plans.by_name("pro"), "try")

    assert stored_plan(runtime, tenant_id) == "free"


def test_set_plan_unknown_tenant_raises(runtime: Runtime) -> None:
    with pytest.raises(PlanChangeError, match="not found"):
        set_plan(runtime.db.owner, uuid.uuid4(), runtime.plans.by_name("pro"), "try")


def test_set_plan_needs_reason(runtime: Runtime, factory: Factory) -> None:
    tenant_id, _ = factory.tenant("plan")

    with pytest.raises(ValueError, match="reason"):
        set_plan(runtime.db.owner, tenant_id, runtime.plans.by_name("pro"), "  ")


def test_removed_plan_falls_back_to_free(runtime: Runtime, factory: Factory) -> None:
    tenant_id, _ = factory.tenant("plan")
    with runtime.db.owner.begin() as conn:
        conn.execute(text("update tenants set plan = 'retired' where id = :t"), {"t": tenant_id})

    with scoped_transaction(runtime.db.app, Scope(tenant_id=tenant_id)) as conn:
        plan = tenant_plan(conn, runtime.plans, tenant_id)

    assert plan.name == "free"


def test_cli_rejects_unknown_plan(settings: Settings, runtime: Runtime) -> None:
    name = f"cli-{uuid.uuid4().hex[:10]}"

    result = run(settings, "tenant", "create", name, "--plan", "gold")

    assert_one_line_error(result, "unknown plan 'gold'")
