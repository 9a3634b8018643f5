"""DPoP proofs (RFC 9449): verify a proof JWT and remember its ``jti`` in PostgreSQL.

A client proves possession of a private key by sending, with each request, a JWT signed
with that key whose header carries the public key (``jwk``) and whose claims name the
request (``htm``, ``htu``), the time (``iat``), a unique id (``jti``) and, at resource
routes, the access token's hash (``ath``). Tokens bound to the key carry its RFC 7638
thumbprint as ``cnf.jkt``. joserfc parses and verifies the JWS and computes the
thumbprint; this module applies the checks of RFC 9449 section 4.3 around it.

Server-provided nonces (RFC 9449 section 8 and 9) are not offered, so the ``iat``
window and the replay cache alone bound how long a captured proof stays useful.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import string
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import structlog
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry, Key, RSAKey
from joserfc.jwt import JWTClaimsRegistry
from joserfc.util import urlsafe_b64encode
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from stockade.errors import Unauthorized

log = structlog.get_logger(__name__)

PROOF_TYPE = "dpop+jwt"
# RFC 9449 section 4.3 step 5: asymmetric algorithms only, so never "none" or HS*.
# "EdDSA" is the RFC 8037 name that most clients send; "Ed25519" is its RFC 9864 name.
ALGORITHMS = (
    "ES256",
    "ES384",
    "ES512",
    "PS256",
    "PS384",
    "PS512",
    "RS256",
    "RS384",
    "RS512",
    "EdDSA",
    "Ed25519",
)
# A client makes a proof just before its request. One minute covers network delay and a
# client clock that runs somewhat slow, and it is how long the replay cache keeps a jti.
MAX_AGE_SECONDS = 60
# A client clock may run a little ahead of ours, but not by more than this.
MAX_FUTURE_SECONDS = 5
# RSA keys shorter than this are rejected, as NIST SP 800-131A disallows them for signing.
_MIN_RSA_BITS = 2048
# A whole proof is under 2 kB even with an RSA-4096 key, so a longer one is rejected unparsed.
_MAX_PROOF_CHARS = 4096
# Each process deletes expired replay cache rows at most this often, in batches.
_PURGE_INTERVAL_SECONDS = 60.0
_PURGE_BATCH = 10_000

# joserfc's default header limit of 512 bytes is too small for an RSA-2048 public key in
# the header. This registry allows 2 kB, because an RSA-4096 key needs about 1 kB. The
# payload is five short claims, so 1 kB is plenty.
_REGISTRY = jws.JWSRegistry(algorithms=ALGORITHMS)
_REGISTRY.max_header_length = 2048
_REGISTRY.max_payload_length = 1024

_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class InvalidProof(Exception):
    """A DPoP proof failed a check. The message names the check, never the proof."""


@dataclass(frozen=True)
class Proof:
    """A verified DPoP proof: the thumbprint of its key, its id and its creation time."""

    jkt: str
    jti: str
    issued_at: int


def single_proof(values: list[str]) -> str | None:
    """Return the request's one DPoP header value, or None when there is none.

    RFC 9449 section 4.3 step 1 rejects a request with more than one DPoP header.
    """
    if len(values) > 1:
        raise InvalidProof("more than one DPoP header")
    return values[0] if values else None


def access_token_hash(access_token: str) -> str:
    """Return the ``ath`` value for a token: base64url of its SHA-256, without padding."""
    return urlsafe_b64encode(hashlib.sha256(access_token.encode()).digest()).decode()


def unauthorized(detail: str, error: str) -> Unauthorized:
    """Build the 401 of a DPoP request, with the challenge of RFC 9449 section 7.1."""
    return Unauthorized(detail, error=error, scheme="DPoP", params={"algs": " ".join(ALGORITHMS)})


def normalize_uri(uri: str) -> str:
    """Normalize an http(s) URI for comparison, dropping its query and fragment.

    RFC 9449 section 4.3 step 9 recommends syntax-based and scheme-based normalization
    (RFC 3986 sections 6.2.2 and 6.2.3): lowercase scheme and host, no default port,
    upper-case percent escapes, unreserved characters unescaped, no dot segments, and
    "/" for an empty path. Raises ``ValueError`` for anything but an http(s) URL with a
    host and without user information.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host or parts.username is not None:
        raise ValueError("not an http(s) URL with a host")
    netloc = f"[{host}]" if ":" in host else host
    port = parts.port
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc = f"{netloc}:{port}"
    path = _ESCAPE.sub(_normalize_escape, parts.path) or "/"
    return f"{scheme}://{netloc}{_remove_dot_segments(path)}"


def _normalize_escape(match: re.Match[str]) -> str:
    character = chr(int(match.group(1), 16))
    return character if character in _UNRESERVED else f"%{match.group(1).upper()}"


def _remove_dot_segments(path: str) -> str:
    """Apply RFC 3986 section 5.2.4 to an absolute path."""
    segments = path.split("/")[1:]
    kept: list[str] = []
    for index, segment in enumerate(segments):
        if segment in (".", ".."):
            if segment == ".." and kept:
                kept.pop()
            if index == len(segments) - 1:
                # "/a/b/." and "/a/b/.." end in a slash.
                kept.append("")
        else:
            kept.append(segment)
    return "/" + "/".join(kept)


class ReplayCache:
    """The ``jti`` of every accepted proof, in PostgreSQL so that all processes share it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # The write is one statement, so it runs in autocommit mode: one round trip,
        # with no separate BEGIN and COMMIT.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._next_purge = 0.0
        self._purge_lock = threading.Lock()

    def record(self, proof: Proof) -> bool:
        """Store the proof's id; return False when it was stored before (a replay).

        A row lives as long as the proof could pass the ``iat`` check, counted on the
        database clock so that the processes' clocks do not matter. The statement turns
        ``synchronous_commit`` off for its own transaction only, so the commit does not
        wait for the WAL flush, which more than halves the cost of the write (see
        docs/benchmarks.md). In exchange, a database crash may lose the jtis of the last
        fraction of a second, and those proofs could then be replayed once.
        """
        with self._autocommit.connect() as conn:
            inserted = conn.execute(
                text(
                    "insert into dpop_proofs (proof_hash, expires_at)"
                    " select :hash, now() + make_interval(secs => :ttl)"
                    " from (select set_config('synchronous_commit', 'off', true)) as setting"
                    " on conflict (proof_hash) do nothing"
                ),
                {"hash": _replay_key(proof), "ttl": MAX_AGE_SECONDS + MAX_FUTURE_SECONDS},
            ).rowcount
        self._purge_if_due()
        return inserted == 1

    def _purge_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_purge or not self._purge_lock.acquire(blocking=False):
            return
        try:
            self._next_purge = now + _PURGE_INTERVAL_SECONDS
            with self.engine.begin() as conn:
                deleted = conn.execute(
                    text(
                        "delete from dpop_proofs where proof_hash in (select proof_hash"
                        " from dpop_proofs where expires_at < now() limit :batch)"
                    ),
                    {"batch": _PURGE_BATCH},
                ).rowcount
            if deleted:
                log.info("dpop_replay_cache_purged", deleted=deleted)
        except SQLAlchemyError as exc:
            # The proof was recorded already; a purge that fails waits for the next turn.
            log.warning("dpop_replay_cache_purge_failed", error=type(exc).__name__)
        finally:
            self._purge_lock.release()


def _replay_key(proof: Proof) -> bytes:
    # The key's thumbprint is part of the digest, so two clients that happen to pick the
    # same jti do not collide. A base64url thumbprint never contains the ":" separator.
    return hashlib.sha256(f"{proof.jkt}:{proof.jti}".encode()).digest()


class ProofVerifier:
    """Check DPoP proofs for requests to this server, whose URLs start at ``issuer``.

    The expected ``htu`` is built from the configured issuer and the request path,
    never from the Host header, so a client or proxy cannot choose the URL to match.
    """

    def __init__(self, issuer: str, replay_cache: ReplayCache) -> None:
        self.issuer = issuer.rstrip("/")
        self.replay_cache = replay_cache

    def verify(
        self,
        proof: str,
        *,
        method: str,
        path: str,
        access_token: str | None = None,
        bound_to: str | None = None,
    ) -> Proof:
        """Check a proof, then record its ``jti`` so that it is accepted only once.

        ``access_token`` is given at resource routes (the proof must carry its ``ath``),
        and ``bound_to`` is the thumbprint that the token or refresh token is bound to.
        """
        checked = self.check(proof, method=method, path=path, access_token=access_token)
        if bound_to is not None and not hmac.compare_digest(checked.jkt, bound_to):
            raise InvalidProof("the proof key is not the key the token is bound to")
        if not self.replay_cache.record(checked):
            raise InvalidProof("the proof jti was used before (replay)")
        return checked

    def check(
        self, proof: str, *, method: str, path: str, access_token: str | None = None
    ) -> Proof:
        """Apply every check of RFC 9449 section 4.3 except the ``jti`` replay check."""
        if len(proof) > _MAX_PROOF_CHARS:
            raise InvalidProof("the proof is too long")
        try:
            signed = jws.extract_compact(proof.encode("ascii"), registry=_REGISTRY)
        except (JoseError, ValueError, TypeError) as exc:
            raise InvalidProof(f"the proof is not a compact JWS: {type(exc).__name__}") from None
        header = signed.headers()
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() != PROOF_TYPE:
            raise InvalidProof("the proof typ is not dpop+jwt")
        if header.get("alg") not in ALGORITHMS:
            raise InvalidProof("the proof alg is not an accepted asymmetric algorithm")
        key = _public_key(header.get("jwk"))
        try:
            valid = jws.validate_compact(signed, key, registry=_REGISTRY)
        except (JoseError, ValueError, TypeError) as exc:
            raise InvalidProof(f"the proof signature failed: {type(exc).__name__}") from None
        if not valid:
            raise InvalidProof("the proof signature does not verify under its jwk")
        claims = _claims(signed.payload, method, access_token)
        self._check_target(claims["htu"], path)
        return Proof(jkt=key.thumbprint(), jti=claims["jti"], issued_at=int(claims["iat"]))

    def _check_target(self, htu: object, path: str) -> None:
        if not isinstance(htu, str):
            raise InvalidProof("the proof htu is not a string")
        try:
            presented = normalize_uri(htu)
            expected = normalize_uri(self.issuer + path)
        except ValueError:
            raise InvalidProof("the proof htu is not an http(s) URL") from None
        if presented != expected:
            raise InvalidProof("the proof htu is not this request's URL")


def _public_key(jwk: object) -> Key:
    """Import the proof's ``jwk`` header, rejecting symmetric, private and short keys."""
    if not isinstance(jwk, dict):
        raise InvalidProof("the proof has no jwk header")
    key_class = JWKRegistry.key_types.get(str(jwk.get("kty")))
    if key_class is None or key_class.key_type == "oct":
        raise InvalidProof("the proof jwk is not an asymmetric public key")
    # RFC 9449 section 4.3 step 7: the jwk must not contain a private key.
    private_members = {name for name, member in key_class.value_registry.items() if member.private}
    if private_members & jwk.keys():
        raise InvalidProof("the proof jwk contains private key members")
    try:
        key = JWKRegistry.import_key(jwk)
    except (JoseError, ValueError, TypeError) as exc:
        raise InvalidProof(f"the proof jwk is not a valid key: {type(exc).__name__}") from None
    if key.is_private:
        raise InvalidProof("the proof jwk contains private key members")
    if isinstance(key, RSAKey) and key.public_key.key_size < _MIN_RSA_BITS:
        raise InvalidProof(f"the proof RSA key is shorter than {_MIN_RSA_BITS} bits")
    return key


def _claims(payload: bytes | None, method: str, access_token: str | None) -> dict[str, Any]:
    """Decode the claims and check ``jti``, ``htm``, ``iat`` and, if given, ``ath``."""
    try:
        claims = json.loads(payload or b"")
    except ValueError:
        raise InvalidProof("the proof payload is not JSON") from None
    if not isinstance(claims, dict):
        raise InvalidProof("the proof payload is not a JSON object")
    required: dict[str, Any] = {name: {"essential": True} for name in ("jti", "htm", "htu", "iat")}
    if access_token is not None:
        required["ath"] = {"essential": True}
    try:
        # The leeway bounds how far in the future iat may lie; the age check follows.
        JWTClaimsRegistry(leeway=MAX_FUTURE_SECONDS, **required).validate(claims)
    except JoseError as exc:
        raise InvalidProof(f"the proof claims are invalid: {exc}") from None
    # Compared here, because joserfc's value check would also accept a list naming it.
    if claims["htm"] != method:
        raise InvalidProof("the proof htm is not this request's method")
    if claims["iat"] < time.time() - MAX_AGE_SECONDS:
        raise InvalidProof(f"the proof iat is more than {MAX_AGE_SECONDS} s old")
    ath = claims.get("ath")
    if access_token is not None and not (
        isinstance(ath, str)
        and hmac.compare_digest(ath.encode(), access_token_hash(access_token).encode())
    ):
        raise InvalidProof("the proof ath is not the hash of the access token")
    return claims
