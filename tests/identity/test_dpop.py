"""DPoP (RFC 9449): tokens bound to the client's key at the token endpoint and checked,
with a fresh proof for each request, at resource routes.

Proofs are made here with joserfc and an EC P-256 key, as a client would. Tokens come
from a full sign-in on the live server on 127.0.0.1, except where a test needs an
unbound token of a given tenant.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey
from sqlalchemy import text

from stockade.config import Settings
from stockade.identity import admin
from stockade.identity.dpop import InvalidProof, ProofVerifier, ReplayCache, normalize_uri
from stockade.identity.provider import s256
from stockade.runtime import Runtime
from tests.cli.test_cli import assert_one_line_error, run
from tests.conftest import TEST_PASSWORD, Factory, Member, bearer
from tests.identity.test_oidc_client import REDIRECT_URI, browser_sign_in

# Making proofs, as a client does


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _ath(access_token: str) -> str:
    return _b64url(hashlib.sha256(access_token.encode()).digest())


def _new_key() -> ECKey:
    return ECKey.generate_key("P-256")


def _proof_claims(
    method: str, url: str, access_token: str | None, **changes: Any
) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "jti": secrets.token_urlsafe(16),
        "htm": method,
        "htu": url,
        "iat": int(time.time()),
    }
    if access_token is not None:
        claims["ath"] = _ath(access_token)
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def make_proof(
    key: ECKey, method: str, url: str, access_token: str | None = None, **changes: Any
) -> str:
    """Sign a DPoP proof with ``key``; ``changes`` replace claims (None drops one)."""
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.as_dict(private=False)}
    claims = _proof_claims(method, url, access_token, **changes)
    return jwt.encode(header, claims, key, algorithms=["ES256"])


def _unsigned_proof(header: dict[str, Any], claims: dict[str, Any], signature: bytes) -> str:
    encoded = [_b64url(json.dumps(part).encode()) for part in (header, claims)]
    return f"{encoded[0]}.{encoded[1]}.{_b64url(signature)}"


def _claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


# Signing in with DPoP


def _code_for(live_server: str, client_id: str, member: Member) -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    query = urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": REDIRECT_URI,
            "scope": "openid",
            "state": secrets.token_urlsafe(16),
            "code_challenge": s256(verifier),
            "code_challenge_method": "S256",
        }
    )
    callback = browser_sign_in(
        live_server, f"{live_server}/oauth/authorize?{query}", member.email, TEST_PASSWORD
    )
    codes = parse_qs(urlsplit(callback).query).get("code")
    assert codes, f"the redirect carries no code: {callback}"
    return codes[0], verifier


def _token_request(
    http: httpx.Client,
    registered: admin.RegisteredClient,
    form: dict[str, str],
    proof: str | None,
) -> httpx.Response:
    data = {**form, "client_id": registered.client_id}
    if registered.client_secret:
        data["client_secret"] = registered.client_secret
    headers = {"DPoP": proof} if proof else {}
    return http.post("/oauth/token", data=data, headers=headers)


def _redeem(
    http: httpx.Client,
    registered: admin.RegisteredClient,
    code: str,
    verifier: str,
    proof: str | None,
) -> httpx.Response:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT_URI,
        "code_verifier": verifier,
    }
    return _token_request(http, registered, form, proof)


def _refresh(
    http: httpx.Client, registered: admin.RegisteredClient, refresh_token: str, proof: str | None
) -> httpx.Response:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    return _token_request(http, registered, form, proof)


@dataclass(frozen=True)
class Bound:
    """A member signed in through a client whose tokens are bound to ``key``."""

    member: Member
    registered: admin.RegisteredClient
    key: ECKey
    tokens: dict[str, Any]
    ticket: dict[str, object]
    token_url: str
    ticket_url: str

    @property
    def access_token(self) -> str:
        return str(self.tokens["access_token"])


def sign_in_bound(
    live_server: str, http: httpx.Client, factory: Factory, *, public: bool = True
) -> Bound:
    member = factory.member()
    ticket = factory.ticket(member, title=f"private-{uuid.uuid4().hex}")
    registered = factory.client(REDIRECT_URI, public=public)
    key = _new_key()
    token_url = f"{live_server}/oauth/token"
    code, verifier = _code_for(live_server, registered.client_id, member)
    response = _redeem(http, registered, code, verifier, make_proof(key, "POST", token_url))
    assert response.status_code == 200, response.text
    ticket_url = f"{live_server}/api/v1/tickets/{ticket['id']}"
    return Bound(member, registered, key, response.json(), ticket, token_url, ticket_url)


@pytest.fixture
def bound(live_server: str, http: httpx.Client, factory: Factory) -> Bound:
    return sign_in_bound(live_server, http, factory)


def _read_ticket(http: httpx.Client, bound: Bound, proof: str | None) -> httpx.Response:
    headers = {"Authorization": f"DPoP {bound.access_token}"}
    if proof is not None:
        headers["DPoP"] = proof
    return http.get(bound.ticket_url, headers=headers)


def _assert_refused(response: httpx.Response, bound: Bound, error: str) -> None:
    assert response.status_code == 401
    assert str(bound.ticket["title"]) not in response.text
    challenge = response.headers.get("www-authenticate", "")
    assert challenge.startswith("DPoP ")
    assert f'error="{error}"' in challenge


# Token endpoint


def test_exchange_with_proof_binds_token(bound: Bound) -> None:
    claims = _claims_of(bound.access_token)

    assert bound.tokens["token_type"] == "DPoP"
    assert claims["cnf"] == {"jkt": bound.key.thumbprint()}


def test_discovery_lists_asymmetric_algorithms(http: httpx.Client) -> None:
    algorithms = http.get("/.well-known/openid-configuration").json()[
        "dpop_signing_alg_values_supported"
    ]

    assert "ES256" in algorithms
    assert "RS256" in algorithms
    assert "EdDSA" in algorithms
    assert "none" not in algorithms
    assert not [alg for alg in algorithms if alg.startswith("HS")]


def test_token_proof_for_other_url_refused(
    live_server: str, http: httpx.Client, factory: Factory
) -> None:
    member = factory.member()
    registered = factory.client(REDIRECT_URI, public=True)
    code, verifier = _code_for(live_server, registered.client_id, member)
    proof = make_proof(_new_key(), "POST", f"{live_server}/oauth/revoke")

    response = _redeem(http, registered, code, verifier, proof)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_dpop_proof"
    assert "access_token" not in response.json()


def test_bound_refresh_without_proof_refused(http: httpx.Client, bound: Bound) -> None:
    response = _refresh(http, bound.registered, bound.tokens["refresh_token"], None)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_dpop_proof"
    assert "access_token" not in response.json()


def test_bound_refresh_with_other_key_refused(http: httpx.Client, bound: Bound) -> None:
    proof = make_proof(_new_key(), "POST", bound.token_url)

    response = _refresh(http, bound.registered, bound.tokens["refresh_token"], proof)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_dpop_proof"
    assert "access_token" not in response.json()


def test_bound_refresh_with_same_key_accepted(http: httpx.Client, bound: Bound) -> None:
    # A refused refresh leaves the refresh token unused, so its owner can still use it.
    refused = _refresh(http, bound.registered, bound.tokens["refresh_token"], None)
    proof = make_proof(bound.key, "POST", bound.token_url)

    response = _refresh(http, bound.registered, bound.tokens["refresh_token"], proof)

    assert refused.status_code == 400
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "DPoP"
    assert _claims_of(response.json()["access_token"])["cnf"] == {"jkt": bound.key.thumbprint()}


def test_confidential_refresh_needs_no_proof(
    live_server: str, http: httpx.Client, factory: Factory
) -> None:
    # RFC 9449 section 5: only a public client's refresh tokens are bound to the key.
    bound = sign_in_bound(live_server, http, factory, public=False)

    response = _refresh(http, bound.registered, bound.tokens["refresh_token"], None)

    assert bound.tokens["token_type"] == "DPoP"
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "Bearer"


def test_required_tenant_refuses_unbound_exchange(
    live_server: str, http: httpx.Client, runtime: Runtime, factory: Factory
) -> None:
    member = factory.member()
    admin.set_require_dpop(runtime.db.owner, member.tenant, required=True)
    registered = factory.client(REDIRECT_URI, public=True)
    code, verifier = _code_for(live_server, registered.client_id, member)

    refused = _redeem(http, registered, code, verifier, None)
    # The refusal left the code unused, so the client can retry with a proof.
    retried = _redeem(
        http,
        registered,
        code,
        verifier,
        make_proof(_new_key(), "POST", f"{live_server}/oauth/token"),
    )

    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_dpop_proof"
    assert "access_token" not in refused.json()
    assert retried.status_code == 200, retried.text
    assert retried.json()["token_type"] == "DPoP"


def test_required_tenant_refuses_unbound_token(
    http: httpx.Client, runtime: Runtime, factory: Factory
) -> None:
    member = factory.member()
    ticket = factory.ticket(member, title=f"private-{uuid.uuid4().hex}")
    token = factory.token(member)
    before = http.get(f"/api/v1/tickets/{ticket['id']}", headers=bearer(token))
    admin.set_require_dpop(runtime.db.owner, member.tenant, required=True)

    after = http.get(f"/api/v1/tickets/{ticket['id']}", headers=bearer(token))

    assert before.status_code == 200
    assert after.status_code == 401
    assert str(ticket["title"]) not in after.text
    assert after.headers["www-authenticate"].startswith("DPoP ")


# Resource routes


def test_bound_token_with_proof_reads_ticket(http: httpx.Client, bound: Bound) -> None:
    proof = make_proof(bound.key, "GET", bound.ticket_url, bound.access_token)

    response = _read_ticket(http, bound, proof)

    assert response.status_code == 200, response.text
    assert response.json()["title"] == bound.ticket["title"]


def test_query_and_case_do_not_matter(live_server: str, http: httpx.Client, bound: Bound) -> None:
    # RFC 9449 section 4.3 step 9: htu is compared without the query, after normalization.
    htu = live_server.replace("http://", "HTTP://") + "/api/v1/./tickets"
    proof = make_proof(bound.key, "GET", htu, bound.access_token)

    response = http.get(
        "/api/v1/tickets?status=open",
        headers={"Authorization": f"DPoP {bound.access_token}", "DPoP": proof},
    )

    assert response.status_code == 200, response.text
    assert [item["id"] for item in response.json()["items"]] == [bound.ticket["id"]]


def test_replayed_proof_is_refused(http: httpx.Client, bound: Bound) -> None:
    proof = make_proof(bound.key, "GET", bound.ticket_url, bound.access_token)
    first = _read_ticket(http, bound, proof)

    replayed = _read_ticket(http, bound, proof)

    assert first.status_code == 200
    _assert_refused(replayed, bound, "invalid_dpop_proof")


def test_reused_jti_is_refused(http: httpx.Client, bound: Bound) -> None:
    jti = secrets.token_urlsafe(16)
    first = _read_ticket(
        http, bound, make_proof(bound.key, "GET", bound.ticket_url, bound.access_token, jti=jti)
    )
    later = make_proof(
        bound.key, "GET", bound.ticket_url, bound.access_token, jti=jti, iat=int(time.time()) - 1
    )

    response = _read_ticket(http, bound, later)

    assert first.status_code == 200
    _assert_refused(response, bound, "invalid_dpop_proof")


def test_proof_for_other_url_refused(live_server: str, http: httpx.Client, bound: Bound) -> None:
    proof = make_proof(bound.key, "GET", f"{live_server}/api/v1/tickets", bound.access_token)

    _assert_refused(_read_ticket(http, bound, proof), bound, "invalid_dpop_proof")


def test_proof_for_other_host_refused(http: httpx.Client, bound: Bound) -> None:
    # The expected URL comes from the configured issuer, not from the Host header.
    url = bound.ticket_url.replace("127.0.0.1", "localhost")
    proof = make_proof(bound.key, "GET", url, bound.access_token)

    response = http.get(
        bound.ticket_url,
        headers={
            "Authorization": f"DPoP {bound.access_token}",
            "DPoP": proof,
            "Host": urlsplit(url).netloc,
        },
    )

    _assert_refused(response, bound, "invalid_dpop_proof")


def test_proof_for_other_method_refused(http: httpx.Client, bound: Bound) -> None:
    proof = make_proof(bound.key, "DELETE", bound.ticket_url, bound.access_token)

    _assert_refused(_read_ticket(http, bound, proof), bound, "invalid_dpop_proof")


@pytest.mark.parametrize("age", [120, 61], ids=["two-minutes", "just-over-window"])
def test_old_proof_is_refused(http: httpx.Client, bound: Bound, age: int) -> None:
    iat = int(time.time()) - age
    proof = make_proof(bound.key, "GET", bound.ticket_url, bound.access_token, iat=iat)

    _assert_refused(_read_ticket(http, bound, proof), bound, "invalid_dpop_proof")


def test_future_proof_is_refused(http: httpx.Client, bound: Bound) -> None:
    iat = int(time.time()) + 60
    proof = make_proof(bound.key, "GET", bound.ticket_url, bound.access_token, iat=iat)

    _assert_refused(_read_ticket(http, bound, proof), bound, "invalid_dpop_proof")


def test_proof_from_other_key_refused(http: httpx.Client, bound: Bound) -> None:
    proof = make_proof(_new_key(), "GET", bound.ticket_url, bound.access_token)

    _assert_refused(_read_ticket(http, bound, proof), bound, "invalid_dpop_proof")


@pytest.mark.parametrize(
    "ath",
    [_ath("another.access.token"), None, ""],
    ids=["other-token", "missing", "empty"],
)
def test_proof_with_wrong_ath_refused(http: httpx.Client, bound: Bound, ath: str | None) -> None:
    proof = make_proof(bound.key, "GET", bound.ticket_url, bound.access_token, ath=ath)

    _assert_refused(_read_ticket(http, bound, proof), bound, "invalid_dpop_proof")


@pytest.mark.parametrize("claim", ["jti", "htm", "htu", "iat"])
def test_proof_missing_claim_refused(http: httpx.Client, bound: Bound, claim: str) -> None:
    proof = make_proof(bound.key, "GET", bound.ticket_url, bound.access_token, **{claim: None})

    _assert_refused(_read_ticket(http, bound, proof), bound, "invalid_dpop_proof")


def test_bound_token_as_bearer_refused(http: httpx.Client, bound: Bound) -> None:
    proof = make_proof(bound.key, "GET", bound.ticket_url, bound.access_token)

    response = http.get(bound.ticket_url, headers={**bearer(bound.access_token), "DPoP": proof})

    _assert_refused(response, bound, "invalid_token")


def test_bound_token_without_proof_refused(http: httpx.Client, bound: Bound) -> None:
    _assert_refused(_read_ticket(http, bound, None), bound, "invalid_dpop_proof")


def test_two_proof_headers_refused(http: httpx.Client, bound: Bound) -> None:
    headers = [
        ("Authorization", f"DPoP {bound.access_token}"),
        ("DPoP", make_proof(bound.key, "GET", bound.ticket_url, bound.access_token)),
        ("DPoP", make_proof(bound.key, "GET", bound.ticket_url, bound.access_token)),
    ]

    _assert_refused(http.get(bound.ticket_url, headers=headers), bound, "invalid_dpop_proof")


def test_unbound_token_as_dpop_refused(
    live_server: str, http: httpx.Client, factory: Factory
) -> None:
    member = factory.member()
    ticket = factory.ticket(member, title=f"private-{uuid.uuid4().hex}")
    token = factory.token(member)
    url = f"{live_server}/api/v1/tickets/{ticket['id']}"
    proof = make_proof(_new_key(), "GET", url, token)

    response = http.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": proof})

    assert response.status_code == 401
    assert str(ticket["title"]) not in response.text
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


@pytest.mark.parametrize("alg", ["none", "None"])
def test_unsigned_proof_is_refused(http: httpx.Client, bound: Bound, alg: str) -> None:
    header = {"typ": "dpop+jwt", "alg": alg, "jwk": bound.key.as_dict(private=False)}
    claims = _proof_claims("GET", bound.ticket_url, bound.access_token)

    proof = _unsigned_proof(header, claims, b"")

    _assert_refused(_read_ticket(http, bound, proof), bound, "invalid_dpop_proof")


@pytest.mark.parametrize("jwk_kind", ["ec-public", "oct"])
def test_hs256_proof_is_refused(http: httpx.Client, bound: Bound, jwk_kind: str) -> None:
    secret = secrets.token_bytes(32)
    jwk = (
        bound.key.as_dict(private=False)
        if jwk_kind == "ec-public"
        else {"kty": "oct", "k": _b64url(secret)}
    )
    header = {"typ": "dpop+jwt", "alg": "HS256", "jwk": jwk}
    claims = _proof_claims("GET", bound.ticket_url, bound.access_token)
    encoded = _unsigned_proof(header, claims, b"").rstrip(".")
    signature = hmac.new(secret, encoded.encode(), hashlib.sha256).digest()

    proof = f"{encoded}.{_b64url(signature)}"

    _assert_refused(_read_ticket(http, bound, proof), bound, "invalid_dpop_proof")


def test_proof_with_private_jwk_refused(http: httpx.Client, bound: Bound) -> None:
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": bound.key.as_dict(private=True)}
    claims = _proof_claims("GET", bound.ticket_url, bound.access_token)

    proof = jwt.encode(header, claims, bound.key, algorithms=["ES256"])

    _assert_refused(_read_ticket(http, bound, proof), bound, "invalid_dpop_proof")


def test_proof_with_jwt_typ_refused(http: httpx.Client, bound: Bound) -> None:
    header = {"typ": "JWT", "alg": "ES256", "jwk": bound.key.as_dict(private=False)}
    claims = _proof_claims("GET", bound.ticket_url, bound.access_token)

    proof = jwt.encode(header, claims, bound.key, algorithms=["ES256"])

    _assert_refused(_read_ticket(http, bound, proof), bound, "invalid_dpop_proof")


def test_userinfo_bad_proof_names_error(live_server: str, http: httpx.Client, bound: Bound) -> None:
    url = f"{live_server}/oauth/userinfo"
    proof = make_proof(_new_key(), "GET", url, bound.access_token)

    response = http.get(url, headers={"Authorization": f"DPoP {bound.access_token}", "DPoP": proof})

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_dpop_proof"


# The verifier and its replay cache


@pytest.mark.parametrize(
    ("presented", "expected"),
    [
        ("HTTPS://Example.COM:443/a/b", "https://example.com/a/b"),
        ("http://example.com:80", "http://example.com/"),
        ("https://example.com/a/%7euser/%2fx", "https://example.com/a/~user/%2Fx"),
        ("https://example.com/a/./b/../c?q=1#frag", "https://example.com/a/c"),
        ("https://[::1]:8443/x", "https://[::1]:8443/x"),
    ],
    ids=["case-and-port", "empty-path", "escapes", "dots-query-fragment", "ipv6"],
)
def test_equivalent_urls_normalize_alike(presented: str, expected: str) -> None:
    assert normalize_uri(presented) == normalize_uri(expected)


@pytest.mark.parametrize(
    "uri",
    ["ftp://example.com/x", "https://user@example.com/x", "/relative/path", "https:///x"],
    ids=["other-scheme", "userinfo", "relative", "no-host"],
)
def test_unusable_url_fails_normalization(uri: str) -> None:
    with pytest.raises(ValueError):
        normalize_uri(uri)


def test_replay_cache_shared_between_verifiers(settings: Settings, runtime: Runtime) -> None:
    # Two verifiers with their own caches stand for two server processes.
    first = ProofVerifier(settings.issuer, ReplayCache(runtime.db.app))
    second = ProofVerifier(settings.issuer, ReplayCache(runtime.db.app))
    proof = make_proof(_new_key(), "POST", f"{settings.issuer}/oauth/token")

    first.verify(proof, method="POST", path="/oauth/token")

    with pytest.raises(InvalidProof, match="replay"):
        second.verify(proof, method="POST", path="/oauth/token")


def test_expired_replay_rows_are_purged(settings: Settings, runtime: Runtime) -> None:
    stale = secrets.token_bytes(32)
    with runtime.db.owner.begin() as conn:
        conn.execute(
            text(
                "insert into dpop_proofs (proof_hash, expires_at)"
                " values (:hash, now() - interval '1 minute')"
            ),
            {"hash": stale},
        )
    verifier = ProofVerifier(settings.issuer, ReplayCache(runtime.db.app))

    # A new cache purges on its first record.
    verifier.verify(
        make_proof(_new_key(), "POST", f"{settings.issuer}/oauth/token"),
        method="POST",
        path="/oauth/token",
    )

    with runtime.db.owner.begin() as conn:
        left = conn.execute(
            text("select count(*) from dpop_proofs where proof_hash = :hash"), {"hash": stale}
        ).scalar_one()
    assert left == 0


def test_ed25519_proof_is_accepted(settings: Settings, runtime: Runtime) -> None:
    key = OKPKey.generate_key("Ed25519")
    header = {"typ": "dpop+jwt", "alg": "Ed25519", "jwk": key.as_dict(private=False)}
    claims = _proof_claims("POST", f"{settings.issuer}/oauth/token", None)
    verifier = ProofVerifier(settings.issuer, ReplayCache(runtime.db.app))

    proof = verifier.verify(
        jwt.encode(header, claims, key, algorithms=["Ed25519"]),
        method="POST",
        path="/oauth/token",
    )

    assert proof.jkt == key.thumbprint()


@pytest.mark.filterwarnings("ignore:Key size should be:joserfc.errors.SecurityWarning")
def test_short_rsa_key_is_refused(settings: Settings, runtime: Runtime) -> None:
    key = RSAKey.generate_key(1024)
    header = {"typ": "dpop+jwt", "alg": "RS256", "jwk": key.as_dict(private=False)}
    claims = _proof_claims("POST", f"{settings.issuer}/oauth/token", None)
    verifier = ProofVerifier(settings.issuer, ReplayCache(runtime.db.app))
    proof = jwt.encode(header, claims, key, algorithms=["RS256"])

    with pytest.raises(InvalidProof, match="shorter than 2048 bits"):
        verifier.check(proof, method="POST", path="/oauth/token")


# Command line


def test_cli_switches_dpop_requirement(
    settings: Settings, runtime: Runtime, factory: Factory
) -> None:
    _, name = factory.tenant()

    switched_on = run(settings, "tenant", "require-dpop", name)
    with runtime.db.owner.begin() as conn:
        required = conn.execute(
            text("select require_dpop from tenants where name = :name"), {"name": name}
        ).scalar_one()
    switched_off = run(settings, "tenant", "require-dpop", name, "--off")
    with runtime.db.owner.begin() as conn:
        required_after = conn.execute(
            text("select require_dpop from tenants where name = :name"), {"name": name}
        ).scalar_one()

    assert switched_on.returncode == 0, switched_on.stderr
    assert required is True
    assert switched_off.returncode == 0, switched_off.stderr
    assert required_after is False


def test_cli_unknown_tenant_is_one_line(settings: Settings, runtime: Runtime) -> None:
    result = run(settings, "tenant", "require-dpop", f"missing-{uuid.uuid4().hex[:8]}")

    assert_one_line_error(result, "not found")


def test_requiring_dpop_revokes_unbound_families(runtime: Runtime, factory: Factory) -> None:
    member = factory.member(roles=("viewer",))

    admin.set_require_dpop(runtime.db.owner, member.tenant, required=True)

    with runtime.db.owner.begin() as conn:
        revoked = conn.execute(
            text("select revoked_reason from token_families where id = :id"),
            {"id": member.family_id},
        ).scalar_one()
    assert revoked == "dpop required"
