"""Webhook signatures: Stripe's ``Stripe-Signature`` header and Adyen's notification HMAC.

Both are HMAC-SHA256. Every comparison goes through ``_same``, which compares in
constant time, and every active secret of a rotation window is tried, so a delivery
signed with the old or the new secret verifies while both are active.

Stripe (https://docs.stripe.com/webhooks#verify-manually): the header contains ``t=`` (a
Unix time) and one or more ``v1=`` signatures, each the hex HMAC-SHA256, keyed with the
endpoint secret, of ``t``, a full stop and the raw request body. Stripe sends several
``v1`` values while an endpoint has two secrets.

Adyen (https://docs.adyen.com/development-resources/webhooks/verify-hmac-signatures):
each notification item carries ``additionalData.hmacSignature``, the base64 HMAC-SHA256,
keyed with the hex-decoded HMAC key, of eight item fields joined by colons.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from stockade.keys import Secret

# Stripe's libraries accept a signature up to 300 seconds old, and so does Stockade. It
# also rejects one stamped more than 300 seconds in the future.
STRIPE_TOLERANCE_SECONDS = 300
# A header longer than this, or with more v1 values, is not one that Stripe sends.
_MAX_HEADER_LENGTH = 4096
_MAX_SIGNATURES = 8


class Rejection(StrEnum):
    """Why a signature was refused; used in logs and in ``webhook:rejected`` audit events."""

    NO_SECRET = "no-secret-configured"  # noqa: S105 - a reason code, not a secret
    MISSING = "signature-missing"
    MALFORMED = "signature-malformed"
    MISMATCH = "signature-mismatch"
    STALE = "timestamp-outside-tolerance"


class SignatureError(Exception):
    """A webhook signature did not verify; ``reason`` names the check that failed."""

    def __init__(self, reason: Rejection) -> None:
        super().__init__(reason.value)
        self.reason = reason


@dataclass(frozen=True)
class StripeSignatureHeader:
    timestamp: int
    signatures: tuple[str, ...]


def _same(expected: str, presented: str) -> bool:
    """Compare two signatures in constant time."""
    return hmac.compare_digest(expected.encode(), presented.encode())


# Stripe


def parse_stripe_header(header: str | None) -> StripeSignatureHeader:
    """Split a ``Stripe-Signature`` header into its timestamp and ``v1`` signatures."""
    if not header:
        raise SignatureError(Rejection.MISSING)
    if len(header) > _MAX_HEADER_LENGTH:
        raise SignatureError(Rejection.MALFORMED)
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, separator, value = item.strip().partition("=")
        if not separator:
            raise SignatureError(Rejection.MALFORMED)
        if key == "t":
            if timestamp is not None or not value.isdigit() or len(value) > 12:
                raise SignatureError(Rejection.MALFORMED)
            timestamp = int(value)
        elif key == "v1":
            signatures.append(value)
        # Other schemes (v0 is Stripe's test-mode scheme) are not accepted, so skipped.
    if timestamp is None or not signatures or len(signatures) > _MAX_SIGNATURES:
        raise SignatureError(Rejection.MALFORMED)
    return StripeSignatureHeader(timestamp, tuple(signatures))


def stripe_signature(secret: Secret, timestamp: int, body: bytes) -> str:
    """Return the hex ``v1`` signature of ``body`` at ``timestamp`` under ``secret``."""
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.reveal().encode(), signed, hashlib.sha256).hexdigest()


def verify_stripe(
    header: str | None,
    body: bytes,
    secrets: Sequence[Secret],
    *,
    now: int,
    tolerance: int = STRIPE_TOLERANCE_SECONDS,
) -> int:
    """Verify a ``Stripe-Signature`` header over the raw ``body``; return its timestamp.

    A signature verifies when any ``v1`` value equals the signature under any active
    secret. The timestamp is checked after the signature, so that the audit trail
    can distinguish a forged request from a stale genuine one.
    """
    if not secrets:
        raise SignatureError(Rejection.NO_SECRET)
    parsed = parse_stripe_header(header)
    matched = False
    for secret in secrets:
        expected = stripe_signature(secret, parsed.timestamp, body)
        for presented in parsed.signatures:
            # No early exit: every pair is compared, so timing shows only how many
            # secrets and signatures there are.
            matched = _same(expected, presented) or matched
    if not matched:
        raise SignatureError(Rejection.MISMATCH)
    if abs(now - parsed.timestamp) > tolerance:
        raise SignatureError(Rejection.STALE)
    return parsed.timestamp


def stripe_header(secret: Secret, timestamp: int, body: bytes) -> str:
    """Build a ``Stripe-Signature`` header as Stripe sends it (for tests and the benchmark)."""
    return f"t={timestamp},v1={stripe_signature(secret, timestamp, body)}"


# Adyen

# The fields of a notification item that the signature covers, in order.
ADYEN_SIGNED_FIELDS = (
    "pspReference",
    "originalReference",
    "merchantAccountCode",
    "merchantReference",
    "amount.value",
    "amount.currency",
    "eventCode",
    "success",
)


def adyen_signing_string(item: Mapping[str, object]) -> str:
    """Join the signed fields of a notification item with colons; a missing field is empty."""
    amount = item.get("amount")
    amount = amount if isinstance(amount, Mapping) else {}
    values: list[object] = []
    for name in ADYEN_SIGNED_FIELDS:
        if name.startswith("amount."):
            values.append(amount.get(name.removeprefix("amount."), ""))
        else:
            values.append(item.get(name, ""))
    return ":".join("" if value is None else str(value) for value in values)


def adyen_signature(key: Secret, item: Mapping[str, object]) -> str:
    """Return the base64 HMAC-SHA256 of an item's signing string under the hex ``key``."""
    try:
        raw_key = binascii.unhexlify(key.reveal())
    except (binascii.Error, ValueError):
        raise SignatureError(Rejection.NO_SECRET) from None
    digest = hmac.new(raw_key, adyen_signing_string(item).encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def verify_adyen(item: Mapping[str, object], keys: Sequence[Secret]) -> None:
    """Verify one notification item's ``additionalData.hmacSignature`` with every active key."""
    if not keys:
        raise SignatureError(Rejection.NO_SECRET)
    additional = item.get("additionalData")
    presented = additional.get("hmacSignature") if isinstance(additional, Mapping) else None
    if not isinstance(presented, str) or not presented:
        raise SignatureError(Rejection.MISSING)
    matched = False
    for key in keys:
        matched = _same(adyen_signature(key, item), presented) or matched
    if not matched:
        raise SignatureError(Rejection.MISMATCH)
