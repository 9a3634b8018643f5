"""``POST /api/v1/billing/checkout``: a Checkout Session for billing admins with MFA."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from stockade.keys import Secret
from stockade.runtime import Runtime
from stockade.web.app import create_app
from tests.billing.payments.conftest import audit_actions
from tests.billing.payments.stripe_stub import StripeStub
from tests.conftest import Factory, Member, bearer

PATH = "/api/v1/billing/checkout"
Mint = Callable[..., str]


@pytest.fixture
def stub_client(
    runtime: Runtime, stripe_stub: StripeStub, tmp_path: Path, factory: Factory
) -> Iterator[tuple[TestClient, Mint]]:
    """Return an app with its own key store, containing the stub's API key, aimed at the stub."""
    from stockade.keys import LocalKeyStore

    keystore = LocalKeyStore(tmp_path / "keys")
    keystore.set_secret("stripe-api-key", Secret(stripe_stub.api_key))
    settings = dataclasses.replace(runtime.settings, stripe_api_base=stripe_stub.url)
    app = create_app(dataclasses.replace(runtime, settings=settings, keystore=keystore))

    def mint(member: Member, amr: tuple[str, ...] = ("pwd", "otp", "mfa")) -> str:
        token, _ = app.state.tokens.issue_access_token(
            user_id=member.user_id,
            tenant_id=member.tenant_id,
            roles=list(member.roles),
            client_id=factory.test_client_id(),
            scope="openid",
            amr=list(amr),
            auth_time=int(time.time()),
            family_id=member.family_id,
        )
        return str(token)

    with TestClient(app, base_url=settings.issuer, raise_server_exceptions=False) as test_client:
        yield test_client, mint


def test_billing_admin_gets_checkout_url(
    stub_client: tuple[TestClient, Mint],
    stripe_stub: StripeStub,
    factory: Factory,
    runtime: Runtime,
) -> None:
    client, mint = stub_client
    admin = factory.member(roles=("billing-admin",))

    response = client.post(PATH, json={"plan": "pro"}, headers=bearer(mint(admin)))

    assert response.status_code == 201, response.text
    assert response.json()["url"].startswith("https://checkout.stripe.com/")
    sent = stripe_stub.sessions[-1]
    assert sent["mode"] == "subscription"
    assert sent["line_items[0][price]"] == "price_pro"
    assert sent["metadata[tenant_id]"] == str(admin.tenant_id)
    assert sent["subscription_data[metadata][tenant_id]"] == str(admin.tenant_id)
    assert sent["client_reference_id"] == str(admin.tenant_id)
    assert "checkout:created" in audit_actions(runtime, admin.tenant_id)


def test_checkout_without_mfa_is_401(
    stub_client: tuple[TestClient, Mint], factory: Factory
) -> None:
    client, mint = stub_client
    admin = factory.member(roles=("billing-admin",))

    response = client.post(PATH, json={"plan": "pro"}, headers=bearer(mint(admin, ("pwd",))))

    assert response.status_code == 401
    assert "insufficient_user_authentication" in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize("role", ["admin", "auditor", "viewer"])
def test_other_roles_cannot_check_out(
    stub_client: tuple[TestClient, Mint], factory: Factory, role: str
) -> None:
    client, mint = stub_client
    member = factory.member(roles=(role,))

    response = client.post(PATH, json={"plan": "pro"}, headers=bearer(mint(member)))

    assert response.status_code == 403


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"plan": "platinum"}, "unknown plan"),
        ({"plan": "free"}, "without a subscription"),
    ],
)
def test_unknown_or_free_plan_is_422(
    stub_client: tuple[TestClient, Mint], factory: Factory, body: dict[str, str], message: str
) -> None:
    client, mint = stub_client
    admin = factory.member(roles=("billing-admin",))

    response = client.post(PATH, json=body, headers=bearer(mint(admin)))

    assert response.status_code == 422
    assert message in response.json()["detail"]


def test_linked_customer_is_reused(
    stub_client: tuple[TestClient, Mint],
    stripe_stub: StripeStub,
    factory: Factory,
    runtime: Runtime,
) -> None:
    from sqlalchemy import text

    client, mint = stub_client
    admin = factory.member(roles=("billing-admin",))
    with runtime.db.owner.begin() as conn:
        conn.execute(
            text("insert into billing_customers (customer_id, tenant_id) values (:c, :t)"),
            {"c": f"cus_reuse{admin.tenant_id.hex[:10]}", "t": admin.tenant_id},
        )

    client.post(PATH, json={"plan": "enterprise"}, headers=bearer(mint(admin)))

    assert stripe_stub.sessions[-1]["customer"] == f"cus_reuse{admin.tenant_id.hex[:10]}"


def test_stripe_error_is_502(
    stub_client: tuple[TestClient, Mint], stripe_stub: StripeStub, factory: Factory
) -> None:
    client, mint = stub_client
    admin = factory.member(roles=("billing-admin",))
    stripe_stub.api_key = "sk_test_rotated_elsewhere"

    response = client.post(PATH, json={"plan": "pro"}, headers=bearer(mint(admin)))

    assert response.status_code == 502
    assert "AuthenticationError" in response.json()["detail"]


def test_missing_api_key_is_503(client: TestClient, factory: Factory) -> None:
    admin = factory.member(roles=("billing-admin",))

    response = client.post(PATH, json={"plan": "pro"}, headers=bearer(factory.token(admin)))

    assert response.status_code == 503
    assert "stockade secrets set stripe-api-key" in response.json()["detail"]
