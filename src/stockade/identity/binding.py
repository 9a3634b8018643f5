"""DPoP binding at the token endpoint (RFC 9449 section 5).

A token request with a valid proof gets an access token bound to the proof's key
(``cnf.jkt``, token type ``DPoP``). For a public client the refresh token family is
bound to that key too, and a refresh of a bound family needs a proof from the same key.
A tenant with ``require_dpop`` refuses token requests without a proof.
"""

from __future__ import annotations

import hmac
import uuid

import structlog
from sqlalchemy import Connection

from stockade.errors import OAuthError
from stockade.identity import sessions, store
from stockade.identity.dpop import InvalidProof, ProofVerifier
from stockade.identity.store import Client, Grant

log = structlog.get_logger(__name__)

TOKEN_PATH = "/oauth/token"  # noqa: S105 - a URL path, not a secret


def proof_thumbprint(proofs: ProofVerifier, proof: str | None) -> str | None:
    """Verify a token request's proof (it has no ``ath``) and return its key's thumbprint,
    or None when the request carries no proof."""
    if proof is None:
        return None
    try:
        return proofs.verify(proof, method="POST", path=TOKEN_PATH).jkt
    except InvalidProof as exc:
        log.info("dpop_proof_rejected", reason=str(exc), path=TOKEN_PATH)
        raise OAuthError("invalid_dpop_proof", "the DPoP proof is invalid") from None


def require_proof_if_tenant_requires(
    conn: Connection, tenant_id: uuid.UUID, dpop_jkt: str | None
) -> None:
    """Raise ``invalid_dpop_proof`` for a request without a proof to a tenant that
    requires DPoP."""
    if dpop_jkt is None and store.tenant_requires_dpop(conn, tenant_id):
        raise OAuthError(
            "invalid_dpop_proof", "this tenant requires a DPoP proof with every token request"
        )


def family_key(client: Client, dpop_jkt: str | None) -> str | None:
    """Return the key to bind a new or refreshed token family to, if any."""
    # Only public clients get DPoP-bound refresh tokens. A confidential client's refresh
    # tokens are already bound to it by client authentication (RFC 9449 section 5).
    return dpop_jkt if client.is_public else None


def check_family_key(conn: Connection, grant: Grant, dpop_jkt: str | None) -> None:
    """Raise unless the proof's key is the key the refresh token's family is bound to."""
    assert grant.family_id is not None
    bound = sessions.family_dpop_key(conn, grant.family_id)
    if bound is None:
        return
    if dpop_jkt is None:
        raise OAuthError(
            "invalid_dpop_proof", "this refresh token is DPoP-bound: send a proof from its key"
        )
    if not hmac.compare_digest(bound, dpop_jkt):
        raise OAuthError(
            "invalid_dpop_proof", "the DPoP proof is not signed by the refresh token's key"
        )
