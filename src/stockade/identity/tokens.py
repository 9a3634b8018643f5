"""Access tokens (RFC 9068 JWT profile) and ID tokens, signed with key store keys."""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import uuid
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey
from joserfc.jwt import JWTClaimsRegistry

from stockade.access.guard import Principal
from stockade.config import Settings
from stockade.keys import KeyStore
from stockade.keys.store import SIGNING_ALGORITHM

ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 - a media type, not a secret
# Clock skew tolerated between this server and the machines that check its tokens.
_LEEWAY_SECONDS = 30
# An unknown kid triggers at most one keyring reload in this many seconds, so a flood of
# forged kids cannot make every request re-read the key store.
_KEY_RELOAD_SECONDS = 5.0


class InvalidToken(Exception):
    """The token failed a check. The reason is for logs, never for the client."""


class TokenService:
    def __init__(self, settings: Settings, keystore: KeyStore) -> None:
        self.settings = settings
        self.keystore = keystore
        self._verify_keys: dict[str, RSAKey] = {}
        self._loaded_at = 0.0
        self._lock = threading.Lock()
        self._reload_keys()
        self._claims = JWTClaimsRegistry(
            leeway=_LEEWAY_SECONDS,
            iss={"essential": True, "value": settings.issuer},
            aud={"essential": True, "value": settings.audience},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
            jti={"essential": True},
            tenant_id={"essential": True},
            client_id={"essential": True},
            roles={"essential": True},
            sid={"essential": True},
        )

    # Issuing

    def issue_access_token(
        self,
        *,
        user_id: uuid.UUID,
        tenant_id: uuid.UUID,
        roles: list[str],
        client_id: str,
        scope: str,
        amr: list[str],
        auth_time: int,
        family_id: uuid.UUID,
        dpop_jkt: str | None = None,
    ) -> tuple[str, int]:
        """Sign an access token; with ``dpop_jkt`` it is bound to that DPoP key."""
        now = int(time.time())
        lifetime = self.settings.access_token_minutes * 60
        claims: dict[str, Any] = {
            "iss": self.settings.issuer,
            "sub": str(user_id),
            "aud": self.settings.audience,
            "exp": now + lifetime,
            "iat": now,
            "jti": secrets.token_urlsafe(16),
            "client_id": client_id,
            "scope": scope,
            "auth_time": auth_time,
            "tenant_id": str(tenant_id),
            "roles": roles,
            "amr": amr,
            "sid": str(family_id),
        }
        if dpop_jkt is not None:
            # RFC 9449 section 6.1: the confirmation claim names the key's thumbprint.
            claims["cnf"] = {"jkt": dpop_jkt}
        return self._sign(claims, ACCESS_TOKEN_TYPE), lifetime

    def issue_id_token(
        self,
        *,
        user_id: uuid.UUID,
        client_id: str,
        nonce: str | None,
        auth_time: int,
        amr: list[str],
        tenant_id: uuid.UUID,
        email: str | None,
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.settings.issuer,
            "sub": str(user_id),
            "aud": client_id,
            "exp": now + self.settings.access_token_minutes * 60,
            "iat": now,
            "auth_time": auth_time,
            "amr": amr,
            "tenant_id": str(tenant_id),
        }
        if nonce:
            claims["nonce"] = nonce
        if email:
            claims["email"] = email
        return self._sign(claims, "JWT")

    def _sign(self, claims: dict[str, Any], token_type: str) -> str:
        key = self.keystore.current_signing_key()
        header = {"alg": SIGNING_ALGORITHM, "kid": key.kid, "typ": token_type}
        return jwt.encode(header, claims, key.key, algorithms=[SIGNING_ALGORITHM])

    def jwks(self) -> dict[str, list[dict[str, object]]]:
        return {"keys": [key.public_jwk() for key in self.keystore.signing_keys()]}

    # Verifying

    def verify_access_token(self, token: str) -> Principal:
        """Check signature, type, issuer, audience, lifetime and claims; return who."""
        header = _unverified_header(token)
        # Only RS256 from our own keys: this rejects "none", HS256 keyed with the public
        # key, and any algorithm or key the token itself names.
        if header.get("alg") != SIGNING_ALGORITHM:
            raise InvalidToken(f"algorithm {header.get('alg')!r} is not accepted")
        if header.get("typ") != ACCESS_TOKEN_TYPE:
            raise InvalidToken("not an access token (RFC 9068 typ at+jwt)")
        key = self._key_for(header.get("kid"))
        try:
            decoded = jwt.decode(token, key, algorithms=[SIGNING_ALGORITHM])
            self._claims.validate(decoded.claims)
        except (JoseError, ValueError, TypeError) as exc:
            raise InvalidToken(f"token rejected: {type(exc).__name__}") from exc
        return _principal_from(decoded.claims)

    def _key_for(self, kid: object) -> RSAKey:
        if not isinstance(kid, str):
            raise InvalidToken("token names no key id")
        key = self._verify_keys.get(kid)
        if key is None and time.monotonic() - self._loaded_at > _KEY_RELOAD_SECONDS:
            self._reload_keys()
            key = self._verify_keys.get(kid)
        if key is None:
            raise InvalidToken("token names an unknown key id")
        return key

    def _reload_keys(self) -> None:
        with self._lock:
            self.keystore.current_signing_key()
            self._verify_keys = {
                key.kid: RSAKey.import_key(key.public_jwk())  # type: ignore[arg-type]
                for key in self.keystore.signing_keys()
            }
            self._loaded_at = time.monotonic()


def _unverified_header(token: str) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken("not a compact JWS")
    try:
        padded = parts[0] + "=" * (-len(parts[0]) % 4)
        header = json.loads(base64.urlsafe_b64decode(padded))
    except (ValueError, TypeError) as exc:
        raise InvalidToken("token header is not base64url JSON") from exc
    if not isinstance(header, dict):
        raise InvalidToken("token header is not a JSON object")
    return header


def _principal_from(claims: dict[str, Any]) -> Principal:
    roles = claims["roles"]
    amr = claims.get("amr", [])
    if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
        raise InvalidToken("roles claim is not a list of strings")
    if not isinstance(amr, list):
        raise InvalidToken("amr claim is not a list")
    try:
        dpop_jkt = _dpop_thumbprint(claims.get("cnf"))
    except (TypeError, KeyError) as exc:
        raise InvalidToken("cnf claim does not name a DPoP key thumbprint") from exc
    try:
        return Principal(
            user_id=uuid.UUID(claims["sub"]),
            tenant_id=uuid.UUID(claims["tenant_id"]),
            roles=tuple(roles),
            client_id=str(claims["client_id"]),
            amr=tuple(str(method) for method in amr),
            token_id=str(claims["jti"]),
            family_id=uuid.UUID(claims["sid"]),
            issued_at=int(claims["iat"]),
            dpop_jkt=dpop_jkt,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidToken("sub, tenant_id or sid is not a UUID") from exc


def _dpop_thumbprint(cnf: object) -> str | None:
    """Return the DPoP key thumbprint of a ``cnf`` claim, or None for an unbound token.

    Stockade issues no other confirmation method, so a ``cnf`` without a string ``jkt``
    raises instead of passing a token whose binding would go unchecked.
    """
    if cnf is None:
        return None
    if not isinstance(cnf, dict):
        raise TypeError("cnf is not an object")
    jkt = cnf["jkt"]
    if not isinstance(jkt, str) or not jkt:
        raise TypeError("cnf.jkt is not a string")
    return jkt
