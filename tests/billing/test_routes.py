"""``GET /api/v1/billing/entitlements``: plan, limits and usage for auditors and billing admins."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from stockade.billing.entitlements import LLM_CALLS, LLM_TOKENS, reserve_within_plan
from stockade.billing.ledger import settle
from stockade.billing.plans import set_plan
from stockade.runtime import Runtime
from tests.conftest import Factory, bearer

PATH = "/api/v1/billing/entitlements"


def test_auditor_reads_plan_and_usage(
    client: TestClient, runtime: Runtime, factory: Factory
) -> None:
    tenant = factory.tenant("ent")
    auditor = factory.member(tenant, roles=("auditor",))
    factory.member(tenant, roles=("viewer", "contributor"))
    for _ in range(3):
        settle(
            runtime.db.app,
            reserve_within_plan(runtime.db.app, runtime.plans, tenant[0], LLM_CALLS, 1),
            1,
        )
    tokens = reserve_within_plan(runtime.db.app, runtime.plans, tenant[0], LLM_TOKENS, 800)
    settle(runtime.db.app, tokens, 300)
    reserve_within_plan(runtime.db.app, runtime.plans, tenant[0], LLM_CALLS, 1)  # in flight

    response = client.get(PATH, headers=bearer(factory.token(auditor)))

    assert response.status_code == 200, response.text
    body = response.json()
    free = runtime.plans.by_name("free")
    assert body["plan"] == {"name": "free", "features": sorted(free.features)}
    assert body["limits"] == {
        "llm_calls_per_day": free.llm_calls_per_day,
        "llm_tokens_per_month": free.llm_tokens_per_month,
        "seats": free.seats,
        "documents": free.documents,
        "document_bytes": free.document_bytes,
    }
    calls = body["usage"]["llm_calls_today"]
    assert (calls["used"], calls["reserved"]) == (3, 1)
    assert calls["remaining"] == free.llm_calls_per_day - 4
    assert calls["window"] == "day"
    tokens_used = body["usage"]["llm_tokens_this_month"]
    assert (tokens_used["used"], tokens_used["reserved"]) == (300, 0)
    assert tokens_used["window"] == "month"
    assert body["usage"]["seats"] == {"limit": free.seats, "used": 2}


def test_reset_times_are_next_windows(
    client: TestClient, runtime: Runtime, factory: Factory
) -> None:
    auditor = factory.member(roles=("auditor",))
    before = datetime.now(UTC)

    body = client.get(PATH, headers=bearer(factory.token(auditor))).json()

    day_reset = datetime.fromisoformat(body["usage"]["llm_calls_today"]["resets_at"])
    month_reset = datetime.fromisoformat(body["usage"]["llm_tokens_this_month"]["resets_at"])
    assert (day_reset.hour, day_reset.minute, day_reset.second) == (0, 0, 0)
    assert timedelta(0) < day_reset - before <= timedelta(days=1)
    assert month_reset.day == 1
    assert (month_reset.hour, month_reset.minute) == (0, 0)
    assert timedelta(0) < month_reset - before <= timedelta(days=31)
    assert day_reset.utcoffset() == timedelta(0)


def test_billing_admin_sees_new_plan(
    client: TestClient, runtime: Runtime, factory: Factory
) -> None:
    tenant = factory.tenant("ent")
    billing_admin = factory.member(tenant, roles=("billing-admin",))
    set_plan(runtime.db.owner, tenant[0], runtime.plans.by_name("pro"), "checkout completed")

    response = client.get(PATH, headers=bearer(factory.token(billing_admin)))

    assert response.status_code == 200, response.text
    assert response.json()["plan"]["name"] == "pro"
    assert response.json()["limits"]["llm_calls_per_day"] == 2_000


def test_billing_admin_without_mfa_gets_401(client: TestClient, factory: Factory) -> None:
    billing_admin = factory.member(roles=("billing-admin",))

    response = client.get(PATH, headers=bearer(factory.token(billing_admin, amr=("pwd",))))

    assert response.status_code == 401
    assert "insufficient_user_authentication" in response.headers["WWW-Authenticate"]


def test_viewer_gets_forbidden_problem(client: TestClient, factory: Factory) -> None:
    viewer = factory.member(roles=("viewer", "contributor"))

    response = client.get(PATH, headers=bearer(factory.token(viewer)))

    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert "billing:read" in response.json()["detail"]


def test_other_tenant_usage_never_shown(
    client: TestClient, runtime: Runtime, factory: Factory
) -> None:
    busy = factory.member(roles=("auditor",))
    quiet = factory.member(roles=("auditor",))
    for _ in range(2):
        settle(
            runtime.db.app,
            reserve_within_plan(runtime.db.app, runtime.plans, busy.tenant_id, LLM_CALLS, 1),
            1,
        )

    busy_body = client.get(PATH, headers=bearer(factory.token(busy))).json()
    quiet_body = client.get(PATH, headers=bearer(factory.token(quiet))).json()

    assert busy_body["usage"]["llm_calls_today"]["used"] == 2
    assert quiet_body["usage"]["llm_calls_today"]["used"] == 0
    assert quiet_body["usage"]["seats"]["used"] == 1


def test_no_route_writes_usage(client: TestClient, factory: Factory) -> None:
    admin = factory.member(roles=("admin",))
    headers = bearer(factory.token(admin))

    for method in ("POST", "PUT", "PATCH", "DELETE"):
        response = client.request(method, PATH, headers=headers, json={"used": 0})
        assert response.status_code == 405, method
        assert response.headers["content-type"] == "application/problem+json", method
