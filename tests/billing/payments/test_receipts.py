"""Signed receipts: listed and fetched as JWS, verified offline with the published JWKS."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from stockade.billing.receipts import ReceiptInvalid, verify_receipt
from stockade.runtime import Runtime
from tests.billing.payments.conftest import Subscriber, post_stripe
from tests.billing.payments.events import stripe_event
from tests.conftest import Factory, bearer

STOCKADE = str(Path(sys.executable).with_name("stockade"))


@pytest.fixture
def paid(
    client: TestClient,
    webhook_secret: str,
    subscriber: Subscriber,
    drain: Callable[[], None],
) -> Subscriber:
    """A subscriber with one paid invoice, so one receipt."""
    for kind in ("customer.subscription.created", "invoice.paid"):
        event = stripe_event(
            kind,
            tenant_id=subscriber.tenant_id,
            customer=subscriber.customer,
            subscription=subscriber.subscription,
        )
        assert post_stripe(client, event, webhook_secret).status_code == 200
    drain()
    return subscriber


def _receipt(client: TestClient, token: str) -> dict[str, str]:
    listing = client.get("/api/v1/billing/receipts", headers=bearer(token))
    assert listing.status_code == 200, listing.text
    receipt_id = listing.json()["items"][0]["id"]
    response = client.get(f"/api/v1/billing/receipts/{receipt_id}", headers=bearer(token))
    assert response.status_code == 200, response.text
    document: dict[str, str] = response.json()
    return document


def _verify_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own entry point with fixed arguments
        [STOCKADE, "receipt", "verify", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_receipt_verifies_with_published_jwks(
    client: TestClient, factory: Factory, paid: Subscriber, runtime: Runtime
) -> None:
    auditor = factory.member((paid.tenant_id, paid.tenant), roles=("auditor",))

    receipt = _receipt(client, factory.token(auditor))
    claims = verify_receipt(
        receipt["jws"], client.get("/oauth/jwks").json(), issuer=runtime.settings.issuer
    )

    assert claims["receipt_id"] == receipt["id"]
    assert claims["tenant_id"] == str(paid.tenant_id)
    assert claims["amount_paid"] == 4900
    assert claims["currency"] == "usd"
    assert claims["plan"] == "pro"


def test_cli_verifies_receipt_with_jwks_file(
    client: TestClient, factory: Factory, paid: Subscriber, tmp_path: Path
) -> None:
    admin = factory.member((paid.tenant_id, paid.tenant), roles=("billing-admin",))
    receipt = _receipt(client, factory.token(admin))
    (tmp_path / "receipt.json").write_text(json.dumps(receipt))
    (tmp_path / "jwks.json").write_text(client.get("/oauth/jwks").text)

    result = _verify_cli(str(tmp_path / "receipt.json"), "--jwks", str(tmp_path / "jwks.json"))

    assert result.returncode == 0, result.stderr
    assert f"receipt {receipt['id']} is valid" in result.stdout
    assert "4900 USD" in result.stdout


def test_cli_fetches_jwks_from_issuer(
    client: TestClient, factory: Factory, paid: Subscriber, live_server: str, tmp_path: Path
) -> None:
    auditor = factory.member((paid.tenant_id, paid.tenant), roles=("auditor",))
    (tmp_path / "receipt.jws").write_text(_receipt(client, factory.token(auditor))["jws"])

    result = _verify_cli(str(tmp_path / "receipt.jws"), "--issuer", live_server)

    assert result.returncode == 0, result.stderr
    assert "is valid" in result.stdout


def test_tampered_receipt_fails_verification(
    client: TestClient, factory: Factory, paid: Subscriber, tmp_path: Path
) -> None:
    auditor = factory.member((paid.tenant_id, paid.tenant), roles=("auditor",))
    header, payload, signed = _receipt(client, factory.token(auditor))["jws"].split(".")
    import base64

    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["amount_paid"] = 1
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    (tmp_path / "receipt.jws").write_text(f"{header}.{forged}.{signed}")
    (tmp_path / "jwks.json").write_text(client.get("/oauth/jwks").text)

    result = _verify_cli(str(tmp_path / "receipt.jws"), "--jwks", str(tmp_path / "jwks.json"))

    assert result.returncode == 1
    assert "does not verify" in result.stderr
    with pytest.raises(ReceiptInvalid, match="signature"):
        verify_receipt(f"{header}.{forged}.{signed}", client.get("/oauth/jwks").json(), issuer=None)


def test_cli_needs_one_key_source(tmp_path: Path) -> None:
    (tmp_path / "receipt.jws").write_text("a.b.c")

    result = _verify_cli(str(tmp_path / "receipt.jws"))

    assert result.returncode == 2
    assert "give either --jwks FILE or --issuer URL" in result.stderr


def test_access_token_is_no_receipt(client: TestClient, factory: Factory) -> None:
    member = factory.member(roles=("auditor",))

    with pytest.raises(ReceiptInvalid, match="typ"):
        verify_receipt(factory.token(member), client.get("/oauth/jwks").json(), issuer=None)


def test_receipt_is_no_access_token(client: TestClient, factory: Factory, paid: Subscriber) -> None:
    auditor = factory.member((paid.tenant_id, paid.tenant), roles=("auditor",))
    receipt = _receipt(client, factory.token(auditor))

    response = client.get("/api/v1/billing/receipts", headers=bearer(receipt["jws"]))

    assert response.status_code == 401


def test_other_tenant_gets_404(client: TestClient, factory: Factory, paid: Subscriber) -> None:
    owner = factory.member((paid.tenant_id, paid.tenant), roles=("auditor",))
    receipt_id = _receipt(client, factory.token(owner))["id"]
    stranger = factory.member(roles=("auditor",))

    response = client.get(
        f"/api/v1/billing/receipts/{receipt_id}", headers=bearer(factory.token(stranger))
    )
    listing = client.get("/api/v1/billing/receipts", headers=bearer(factory.token(stranger)))

    assert response.status_code == 404
    assert listing.json()["items"] == []


def test_viewer_cannot_read_receipts(client: TestClient, factory: Factory) -> None:
    viewer = factory.member(roles=("viewer",))

    response = client.get(
        f"/api/v1/billing/receipts/{uuid.uuid4()}", headers=bearer(factory.token(viewer))
    )

    assert response.status_code == 403
