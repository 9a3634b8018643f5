"""Signature checks on their own: header parsing, tolerance, several secrets, Adyen fields."""

from __future__ import annotations

import pytest

from stockade.billing.signatures import (
    Rejection,
    SignatureError,
    adyen_signature,
    adyen_signing_string,
    stripe_header,
    verify_adyen,
    verify_stripe,
)
from stockade.keys import Secret

BODY = b'{"id": "evt_test_signature", "object": "event"}'
NOW = 1_767_225_600
OLD, NEW = Secret("whsec_old_value"), Secret("whsec_new_value")


def _reason(header: str | None, secrets: list[Secret], body: bytes = BODY) -> Rejection:
    with pytest.raises(SignatureError) as caught:
        verify_stripe(header, body, secrets, now=NOW)
    return caught.value.reason


def test_valid_header_returns_timestamp() -> None:
    assert verify_stripe(stripe_header(NEW, NOW, BODY), BODY, [NEW], now=NOW) == NOW


def test_old_secret_verifies_during_rotation() -> None:
    header = stripe_header(OLD, NOW, BODY)

    assert verify_stripe(header, BODY, [NEW, OLD], now=NOW) == NOW
    assert _reason(header, [NEW]) is Rejection.MISMATCH


def test_any_v1_value_may_match() -> None:
    header = f"t={NOW},v1={'0' * 64},v1={stripe_header(NEW, NOW, BODY).split('v1=')[1]}"

    assert verify_stripe(header, BODY, [NEW], now=NOW) == NOW


@pytest.mark.parametrize("skew", [-301, 301])
def test_timestamp_beyond_tolerance_refused(skew: int) -> None:
    assert _reason(stripe_header(NEW, NOW + skew, BODY), [NEW]) is Rejection.STALE


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, Rejection.MISSING),
        ("", Rejection.MISSING),
        ("v1=abc", Rejection.MALFORMED),
        (f"t={NOW}", Rejection.MALFORMED),
        (f"t=soon,v1={'a' * 64}", Rejection.MALFORMED),
        (f"t={NOW},t={NOW},v1={'a' * 64}", Rejection.MALFORMED),
        (f"t={NOW},v0={'a' * 64}", Rejection.MALFORMED),
        ("x" * 5000, Rejection.MALFORMED),
    ],
)
def test_malformed_header_refused(header: str | None, reason: Rejection) -> None:
    assert _reason(header, [NEW]) is reason


def test_no_secret_is_its_own_reason() -> None:
    assert _reason(stripe_header(NEW, NOW, BODY), []) is Rejection.NO_SECRET


def test_adyen_signing_string_has_eight_fields() -> None:
    item = {
        "pspReference": "7914073381342284",
        "originalReference": "",
        "merchantAccountCode": "TestMerchant",
        "merchantReference": "TestPayment-1407325143704",
        "amount": {"value": 1130, "currency": "EUR"},
        "eventCode": "AUTHORISATION",
        "success": "true",
    }

    assert adyen_signing_string(item) == (
        "7914073381342284::TestMerchant:TestPayment-1407325143704:1130:EUR:AUTHORISATION:true"
    )


def test_adyen_changed_field_fails() -> None:
    key = Secret("44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056")
    item: dict[str, object] = {
        "pspReference": "7914073381342284",
        "merchantAccountCode": "TestMerchant",
        "merchantReference": "TestPayment-1407325143704",
        "amount": {"value": 1130, "currency": "EUR"},
        "eventCode": "AUTHORISATION",
        "success": "true",
    }
    item["additionalData"] = {"hmacSignature": adyen_signature(key, item)}
    verify_adyen(item, [key])

    item["success"] = "false"

    with pytest.raises(SignatureError):
        verify_adyen(item, [key])
