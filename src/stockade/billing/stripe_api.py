"""A client for Stripe's API, keyed from the key store and pointed at the configured base URL."""

from __future__ import annotations

import stripe

from stockade.billing.credentials import STRIPE_API_KEY
from stockade.billing.stripe_events import EXPECTED_API_VERSION
from stockade.config import Settings
from stockade.keys import KeyStore

# Seconds before a call to Stripe gives up; stripe's own default is 80.
TIMEOUT_SECONDS = 15
MAX_RETRIES = 2


class StripeNotConfigured(RuntimeError):
    """No Stripe API key is in the key store."""


def stripe_client(settings: Settings, keystore: KeyStore) -> stripe.StripeClient:
    """Return a client for ``settings.stripe_api_base`` with the key store's API key.

    The API version is pinned to the one the events are parsed for, so the objects that
    the reconciliation job lists have the same shape as those in webhooks.
    """
    key = keystore.get_secret(STRIPE_API_KEY)
    if key is None:
        raise StripeNotConfigured(
            f"no {STRIPE_API_KEY} is set; run 'stockade secrets set {STRIPE_API_KEY} --stdin'"
        )
    return stripe.StripeClient(
        key.reveal(),
        stripe_version=EXPECTED_API_VERSION,
        base_addresses={"api": settings.stripe_api_base},
        max_network_retries=MAX_RETRIES,
        # stripe's own default transport (requests, a dependency of stripe), with a timeout.
        http_client=stripe.RequestsClient(timeout=TIMEOUT_SECONDS),
    )
