"""Signed receipts: one per paid Stripe invoice, handed out as a JWS anyone can check.

A receipt is a JWT (RFC 7519) signed RS256 with the key store's current signing key,
whose public half ``/oauth/jwks`` publishes, with the header ``typ`` set to
``RECEIPT_TYPE`` so that it can never pass for an access or ID token. ``verify_receipt``
checks one offline against a JWKS document.

NOTE: the key store keeps the current signing key and two predecessors, so a receipt
verifies against the live ``/oauth/jwks`` only until its key is rotated out. Keep the
JWKS of the day with receipts that must verify for longer.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey
from joserfc.jws import extract_compact
from joserfc.jwt import JWTClaimsRegistry
from sqlalchemy import Connection, text

from stockade.keys import KeyStore
from stockade.keys.store import SIGNING_ALGORITHM

RECEIPT_TYPE = "stockade-receipt+jwt"
_COLUMNS = (
    "id, tenant_id, invoice_id, subscription_id, customer_id, plan, amount_paid, currency,"
    " period_start, period_end, paid_at, issued_at"
)
_GET = text(f"select {_COLUMNS} from billing_receipts where tenant_id = :tenant and id = :id")  # noqa: S608 - fixed column list
_LIST = text(
    f"select {_COLUMNS} from billing_receipts where tenant_id = :tenant"  # noqa: S608 - fixed column list
    " order by issued_at desc, id limit :limit"
)


class ReceiptInvalid(Exception):
    """A receipt did not verify; the message names the check that failed."""


@dataclass(frozen=True)
class Receipt:
    id: uuid.UUID
    tenant_id: uuid.UUID
    invoice_id: str
    subscription_id: str | None
    customer_id: str
    plan: str | None
    amount_paid: int
    currency: str
    period_start: datetime | None
    period_end: datetime | None
    paid_at: datetime
    issued_at: datetime

    def claims(self, issuer: str) -> dict[str, Any]:
        """Return the signed content; amounts are in the currency's minor unit."""
        return {
            "iss": issuer,
            "sub": str(self.tenant_id),
            "jti": str(self.id),
            "iat": int(self.issued_at.timestamp()),
            "receipt_id": str(self.id),
            "tenant_id": str(self.tenant_id),
            "provider": "stripe",
            "invoice": self.invoice_id,
            "subscription": self.subscription_id,
            "customer": self.customer_id,
            "plan": self.plan,
            "amount_paid": self.amount_paid,
            "currency": self.currency,
            "period_start": _unix(self.period_start),
            "period_end": _unix(self.period_end),
            "paid_at": int(self.paid_at.timestamp()),
        }


def get_receipt(conn: Connection, tenant_id: uuid.UUID, receipt_id: uuid.UUID) -> Receipt | None:
    """Load a receipt of ``tenant_id``; None for one that is missing or not the tenant's."""
    row = conn.execute(_GET, {"tenant": tenant_id, "id": receipt_id}).first()
    # A second check behind RLS: the row must belong to the caller's tenant.
    if row is None or row[1] != tenant_id:
        return None
    return Receipt(*row)


def list_receipts(conn: Connection, tenant_id: uuid.UUID, *, limit: int) -> list[Receipt]:
    rows = conn.execute(_LIST, {"tenant": tenant_id, "limit": limit}).all()
    return [Receipt(*row) for row in rows if row[1] == tenant_id]


def sign_receipt(keystore: KeyStore, issuer: str, receipt: Receipt) -> str:
    """Return the receipt as a compact JWS signed with the current signing key."""
    key = keystore.current_signing_key()
    header = {"alg": SIGNING_ALGORITHM, "kid": key.kid, "typ": RECEIPT_TYPE}
    return jwt.encode(header, receipt.claims(issuer), key.key, algorithms=[SIGNING_ALGORITHM])


def verify_receipt(token: str, jwks: Mapping[str, Any], *, issuer: str | None) -> dict[str, Any]:
    """Check a receipt's signature, type and claims against ``jwks``; return its claims.

    Only RS256 with a key the JWKS lists by ``kid`` is accepted, whatever algorithm the
    token's header names. With ``issuer``, the ``iss`` claim must equal it.
    """
    try:
        header = extract_compact(token.strip().encode()).headers()
    except (JoseError, ValueError, TypeError) as exc:
        raise ReceiptInvalid("not a compact JWS") from exc
    if header.get("alg") != SIGNING_ALGORITHM:
        raise ReceiptInvalid(f"algorithm {header.get('alg')!r} is not {SIGNING_ALGORITHM}")
    if header.get("typ") != RECEIPT_TYPE:
        raise ReceiptInvalid(f"typ {header.get('typ')!r} is not {RECEIPT_TYPE}")
    key = _key_for(jwks, header.get("kid"))
    try:
        decoded = jwt.decode(token.strip(), key, algorithms=[SIGNING_ALGORITHM])
    except (JoseError, ValueError, TypeError) as exc:
        raise ReceiptInvalid("the signature does not verify") from exc
    registry = JWTClaimsRegistry(
        iss={"essential": True, **({"value": issuer} if issuer else {})},
        iat={"essential": True},
        receipt_id={"essential": True},
        tenant_id={"essential": True},
        amount_paid={"essential": True},
        currency={"essential": True},
    )
    try:
        registry.validate(decoded.claims)
    except (JoseError, ValueError, TypeError) as exc:
        raise ReceiptInvalid(f"the claims are not those of a receipt: {exc}") from exc
    return dict(decoded.claims)


def _key_for(jwks: Mapping[str, Any], kid: object) -> RSAKey:
    if not isinstance(kid, str):
        raise ReceiptInvalid("the receipt names no key id")
    keys = jwks.get("keys")
    if not isinstance(keys, list):
        raise ReceiptInvalid("the JWKS has no 'keys' list")
    for entry in keys:
        if isinstance(entry, dict) and entry.get("kid") == kid and entry.get("kty") == "RSA":
            public = {name: value for name, value in entry.items() if name not in ("d", "p", "q")}
            return RSAKey.import_key(public)
    raise ReceiptInvalid(f"the JWKS has no RSA key with kid {kid!r}")


def _unix(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None
