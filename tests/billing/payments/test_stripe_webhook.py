"""``POST /webhooks/stripe``: signatures, one stored copy per event, order, bad payloads."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from stockade.runtime import Runtime
from tests.billing.payments.conftest import (
    Subscriber,
    audit_actions,
    event_status,
    plan_of,
    platform_rejections,
    post_stripe,
)
from tests.billing.payments.events import encode, signature, stripe_event

pytestmark = pytest.mark.usefixtures("rejection_audit_unthrottled")


def _subscription_event(subscriber: Subscriber, kind: str, **fields: object) -> dict[str, object]:
    return stripe_event(
        kind,
        tenant_id=subscriber.tenant_id,
        customer=subscriber.customer,
        subscription=subscriber.subscription,
        **fields,  # type: ignore[arg-type]
    )


def test_signed_event_applies_plan(
    client: TestClient,
    runtime: Runtime,
    webhook_secret: str,
    subscriber: Subscriber,
    drain: Callable[[], None],
) -> None:
    event = _subscription_event(subscriber, "customer.subscription.created")

    response = post_stripe(client, event, webhook_secret)
    stored_before_apply = event_status(runtime, str(event["id"]))
    drain()

    assert response.status_code == 200
    assert response.json()["duplicates"] == 0
    assert stored_before_apply[0] == "pending"
    assert event_status(runtime, str(event["id"]))[0] == "processed"
    assert plan_of(runtime, subscriber.tenant_id) == "pro"
    assert audit_actions(runtime, subscriber.tenant_id).count("plan:changed") == 1


def test_forged_signature_is_refused(
    client: TestClient, runtime: Runtime, webhook_secret: str, subscriber: Subscriber
) -> None:
    event = _subscription_event(subscriber, "customer.subscription.created")
    audited_before = len(platform_rejections(runtime))

    response = post_stripe(client, event, "whsec_not_the_endpoint_secret")

    assert response.status_code == 400
    assert response.json()["reason"] == "signature-mismatch"
    with pytest.raises(Exception, match="No row was found"):
        event_status(runtime, str(event["id"]))
    rejections = platform_rejections(runtime)
    assert len(rejections) == audited_before + 1
    assert rejections[-1]["reason"] == "signature-mismatch"
    assert plan_of(runtime, subscriber.tenant_id) == "free"


def test_stale_signature_is_refused(
    client: TestClient, runtime: Runtime, webhook_secret: str, subscriber: Subscriber
) -> None:
    event = _subscription_event(subscriber, "customer.subscription.created")

    response = post_stripe(client, event, webhook_secret, timestamp=int(time.time()) - 301)

    assert response.status_code == 400
    assert response.json()["reason"] == "timestamp-outside-tolerance"
    assert platform_rejections(runtime)[-1]["reason"] == "timestamp-outside-tolerance"


def test_signature_from_future_is_refused(
    client: TestClient, webhook_secret: str, subscriber: Subscriber
) -> None:
    event = _subscription_event(subscriber, "customer.subscription.created")

    response = post_stripe(client, event, webhook_secret, timestamp=int(time.time()) + 301)

    assert response.status_code == 400
    assert response.json()["reason"] == "timestamp-outside-tolerance"


def test_replayed_signature_on_other_body_refused(
    client: TestClient, webhook_secret: str, subscriber: Subscriber
) -> None:
    genuine = encode(_subscription_event(subscriber, "customer.subscription.created"))
    captured = signature(webhook_secret, genuine)
    other = encode(
        _subscription_event(subscriber, "customer.subscription.updated", price="price_enterprise")
    )

    response = client.post("/webhooks/stripe", content=other, headers=captured)

    assert response.status_code == 400
    assert response.json()["reason"] == "signature-mismatch"


def test_reencoded_body_is_refused(
    client: TestClient, webhook_secret: str, subscriber: Subscriber
) -> None:
    body = encode(_subscription_event(subscriber, "customer.subscription.created"))
    headers = signature(webhook_secret, body)
    same_json_other_bytes = json.dumps(json.loads(body), separators=(",", ":")).encode()

    response = client.post("/webhooks/stripe", content=same_json_other_bytes, headers=headers)

    assert response.status_code == 400


def test_replayed_delivery_applies_once(
    client: TestClient,
    runtime: Runtime,
    webhook_secret: str,
    subscriber: Subscriber,
    drain: Callable[[], None],
) -> None:
    body = encode(_subscription_event(subscriber, "customer.subscription.created"))
    headers = signature(webhook_secret, body)

    first = client.post("/webhooks/stripe", content=body, headers=headers)
    drain()
    replay = client.post("/webhooks/stripe", content=body, headers=headers)
    drain()

    assert first.status_code == 200
    assert replay.status_code == 200
    assert replay.json()["duplicates"] == 1
    assert audit_actions(runtime, subscriber.tenant_id).count("plan:changed") == 1


def test_ten_deliveries_give_one_state(
    client: TestClient,
    runtime: Runtime,
    webhook_secret: str,
    subscriber: Subscriber,
    drain: Callable[[], None],
) -> None:
    event = _subscription_event(subscriber, "customer.subscription.created")

    answers = [post_stripe(client, event, webhook_secret) for _ in range(10)]
    drain()

    assert [answer.status_code for answer in answers] == [200] * 10
    assert sum(answer.json()["duplicates"] for answer in answers) == 9
    assert plan_of(runtime, subscriber.tenant_id) == "pro"
    assert audit_actions(runtime, subscriber.tenant_id).count("plan:changed") == 1
    with runtime.db.owner.connect() as conn:
        from sqlalchemy import text

        stored = conn.execute(
            text("select count(*) from payment_events where event_id = :e"), {"e": event["id"]}
        ).scalar_one()
    assert stored == 1


def test_out_of_order_events_keep_newest(
    client: TestClient,
    runtime: Runtime,
    webhook_secret: str,
    subscriber: Subscriber,
    drain: Callable[[], None],
) -> None:
    now = int(time.time())
    upgrade = _subscription_event(
        subscriber, "customer.subscription.created", price="price_enterprise", created=now - 60
    )
    downgrade = _subscription_event(
        subscriber, "customer.subscription.updated", price="price_pro", created=now - 10
    )

    assert post_stripe(client, downgrade, webhook_secret).status_code == 200
    drain()
    assert post_stripe(client, upgrade, webhook_secret).status_code == 200
    drain()

    assert plan_of(runtime, subscriber.tenant_id) == "pro"
    status, outcome = event_status(runtime, str(upgrade["id"]))
    assert status == "ignored"
    assert "older than the stored state" in outcome


def test_cancellation_ends_paid_plan(
    client: TestClient,
    runtime: Runtime,
    webhook_secret: str,
    subscriber: Subscriber,
    drain: Callable[[], None],
) -> None:
    now = int(time.time())
    created = _subscription_event(subscriber, "customer.subscription.created", created=now - 30)
    deleted = _subscription_event(subscriber, "customer.subscription.deleted", created=now)

    post_stripe(client, created, webhook_secret)
    post_stripe(client, deleted, webhook_secret)
    drain()

    assert plan_of(runtime, subscriber.tenant_id) == "free"


def test_rotation_accepts_both_secrets(
    client: TestClient,
    runtime: Runtime,
    webhook_secret: str,
    subscriber: Subscriber,
) -> None:
    from datetime import timedelta

    from stockade.billing.credentials import set_payment_secret

    new_secret = "whsec_rotated" + webhook_secret[-20:]
    set_payment_secret(
        runtime.keystore, "stripe-webhook-secret", new_secret, overlap=timedelta(hours=24)
    )
    old_event = _subscription_event(subscriber, "customer.subscription.created")
    new_event = _subscription_event(subscriber, "customer.subscription.updated")
    both = _subscription_event(subscriber, "customer.subscription.updated")
    both_body = encode(both)
    # During a rotation Stripe signs with both secrets and sends two v1 values.
    stamp = int(time.time())
    old_header = signature(webhook_secret, both_body, stamp)["Stripe-Signature"]
    new_header = signature(new_secret, both_body, stamp)["Stripe-Signature"]
    two_signatures = f"{old_header},{new_header.split(',')[1]}"

    assert post_stripe(client, old_event, webhook_secret).status_code == 200
    assert post_stripe(client, new_event, new_secret).status_code == 200
    answer = client.post(
        "/webhooks/stripe", content=both_body, headers={"Stripe-Signature": two_signatures}
    )
    assert answer.status_code == 200


def test_rotation_without_overlap_retires_old(
    client: TestClient, runtime: Runtime, webhook_secret: str, subscriber: Subscriber
) -> None:
    from datetime import timedelta

    from stockade.billing.credentials import set_payment_secret

    set_payment_secret(
        runtime.keystore, "stripe-webhook-secret", webhook_secret + "x", overlap=timedelta(0)
    )
    event = _subscription_event(subscriber, "customer.subscription.created")

    assert post_stripe(client, event, webhook_secret).status_code == 400
    assert post_stripe(client, event, webhook_secret + "x").status_code == 200


def test_body_not_json_is_kept_and_refused(
    client: TestClient, runtime: Runtime, webhook_secret: str
) -> None:
    body = b"this is not JSON {"

    response = client.post(
        "/webhooks/stripe", content=body, headers=signature(webhook_secret, body)
    )

    assert response.status_code == 400
    assert "not JSON" in response.json()["detail"]
    import hashlib

    status, _ = event_status(runtime, f"malformed:{hashlib.sha256(body).hexdigest()}")
    assert status == "rejected"
    assert platform_rejections(runtime)[-1]["reason"] == "malformed-event"


def test_huge_body_is_refused_unread(client: TestClient, webhook_secret: str) -> None:
    body = b'{"padding": "' + b"x" * (600 * 1024) + b'"}'

    response = client.post(
        "/webhooks/stripe", content=body, headers=signature(webhook_secret, body)
    )

    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("id", 42, "'id' is not a non-empty string"),
        ("created", "yesterday", "'created' is not a Unix time"),
        ("data", [], "'data.object' is not a JSON object"),
        ("livemode", "no", "'livemode' is not a boolean"),
    ],
)
def test_wrong_field_types_get_400(
    client: TestClient,
    webhook_secret: str,
    subscriber: Subscriber,
    field: str,
    value: object,
    message: str,
) -> None:
    event = _subscription_event(subscriber, "customer.subscription.created")
    event[field] = value

    response = post_stripe(client, event, webhook_secret)

    assert response.status_code == 400
    assert message in response.json()["detail"]


def test_wrong_object_type_is_rejected(
    client: TestClient,
    runtime: Runtime,
    webhook_secret: str,
    subscriber: Subscriber,
    drain: Callable[[], None],
) -> None:
    event = _subscription_event(subscriber, "customer.subscription.created")
    event["data"]["object"]["items"] = "not a list"  # type: ignore[index]

    response = post_stripe(client, event, webhook_secret)
    drain()

    assert response.status_code == 200
    status, outcome = event_status(runtime, str(event["id"]))
    assert status == "rejected"
    assert "items.data" in outcome
    assert plan_of(runtime, subscriber.tenant_id) == "free"


def test_unknown_type_is_stored_ignored(
    client: TestClient, runtime: Runtime, webhook_secret: str, subscriber: Subscriber
) -> None:
    event = _subscription_event(subscriber, "customer.subscription.created")
    event["type"] = "customer.tax_id.created"

    response = post_stripe(client, event, webhook_secret)

    assert response.status_code == 200
    status, outcome = event_status(runtime, str(event["id"]))
    assert status == "ignored"
    assert "not handled" in outcome


def test_unexpected_api_version_is_ignored(
    client: TestClient, runtime: Runtime, webhook_secret: str, subscriber: Subscriber
) -> None:
    event = _subscription_event(subscriber, "customer.subscription.created")
    event["api_version"] = "2020-08-27"

    response = post_stripe(client, event, webhook_secret)

    assert response.status_code == 200
    status, outcome = event_status(runtime, str(event["id"]))
    assert status == "ignored"
    assert "2020-08-27" in outcome


def test_missing_signature_is_refused(client: TestClient, webhook_secret: str) -> None:
    response = client.post("/webhooks/stripe", content=b"{}")

    assert response.status_code == 400
    assert response.json()["reason"] == "signature-missing"
