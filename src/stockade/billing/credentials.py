"""The payment secrets kept in the key store, and how a new value is checked and rotated.

Setting a secret again starts a rotation window: the previous values keep verifying
webhooks for ``DEFAULT_OVERLAP`` (or the overlap given), so the provider and Stockade
need not switch at the same second. An overlap of zero retires the old values at once,
which is what to do when a secret has leaked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from stockade.keys import KeyStore, Secret

STRIPE_WEBHOOK_SECRET = "stripe-webhook-secret"  # noqa: S105 - a key store name
STRIPE_API_KEY = "stripe-api-key"
ADYEN_HMAC_KEY = "adyen-hmac-key"

DEFAULT_OVERLAP = timedelta(hours=24)
MAX_OVERLAP = timedelta(days=7)
_MAX_LENGTH = 500


class CredentialError(ValueError):
    """A payment secret name or value is invalid. The message never contains the value."""


@dataclass(frozen=True)
class _Format:
    pattern: re.Pattern[str]
    expected: str


_FORMATS = {
    # Stripe shows endpoint secrets as "whsec_…" and API keys as "sk_…" or, restricted, "rk_…".
    STRIPE_WEBHOOK_SECRET: _Format(
        re.compile(r"^whsec_[A-Za-z0-9_]+$"), "a Stripe endpoint secret starting with whsec_"
    ),
    STRIPE_API_KEY: _Format(
        re.compile(r"^(sk|rk)_(test|live)_[A-Za-z0-9_]+$"),
        "a Stripe secret key starting with sk_test_, sk_live_, rk_test_ or rk_live_",
    ),
    # Adyen's HMAC key is shown as hex; 32 bytes (64 digits) in current Customer Areas.
    ADYEN_HMAC_KEY: _Format(
        re.compile(r"^(?:[0-9A-Fa-f]{2}){16,}$"), "an Adyen HMAC key of at least 32 hex digits"
    ),
}

NAMES = tuple(_FORMATS)


def check_secret(name: str, value: str) -> None:
    """Raise ``CredentialError`` unless ``name`` is a payment secret and ``value`` fits it."""
    expected = _FORMATS.get(name)
    if expected is None:
        raise CredentialError(f"unknown secret {name!r}; the names are: {', '.join(NAMES)}")
    if not value:
        raise CredentialError(f"no value for {name} on standard input")
    if len(value) > _MAX_LENGTH or not expected.pattern.match(value):
        raise CredentialError(f"the value for {name} is not {expected.expected}")


def set_payment_secret(
    keystore: KeyStore, name: str, value: str, *, overlap: timedelta = DEFAULT_OVERLAP
) -> bool:
    """Store a new value of a payment secret; return True if it replaced an older value.

    The older values keep verifying for ``overlap``.
    """
    check_secret(name, value)
    if not timedelta(0) <= overlap <= MAX_OVERLAP:
        raise CredentialError(f"the rotation overlap must be between 0 and {MAX_OVERLAP}")
    replaced = keystore.get_secret(name) is not None
    keystore.set_secret(name, Secret(value), overlap=overlap)
    return replaced


def webhook_secrets(keystore: KeyStore, name: str) -> list[Secret]:
    """Return every value of ``name`` that verifies now, the newest first."""
    return keystore.active_secrets(name)
