"""Forged, altered, replayed and misdirected tokens, codes and client credentials.

Every request goes to the in-process app or to the live server on 127.0.0.1. Forged
access tokens are signed here with the server's real key (or a stand-in) so that each
test breaks exactly one property of an otherwise valid token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import RSAKey

from stockade.config import Settings
from stockade.identity.provider import s256
from stockade.runtime import Runtime
from tests.conftest import TEST_PASSWORD, Factory, Member, bearer
from tests.identity.test_oidc_client import REDIRECT_URI, browser_sign_in

# Rounds of each refresh race test. A round is one sign-in and two refreshes.
RACE_ROUNDS = 5


# Building access tokens by hand


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_json(value: dict[str, Any]) -> str:
    return _b64url(json.dumps(value).encode())


def _access_claims(member: Member, settings: Settings, **changes: Any) -> dict[str, Any]:
    """Build the claims the server puts in an access token for ``member``, then apply
    ``changes``."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": settings.issuer,
        "sub": str(member.user_id),
        "aud": settings.audience,
        "exp": now + 600,
        "iat": now,
        "jti": secrets.token_urlsafe(16),
        "client_id": "test-client",
        "scope": "openid",
        "auth_time": now,
        "tenant_id": str(member.tenant_id),
        "roles": list(member.roles),
        "amr": ["pwd"],
        "sid": str(member.family_id),
    }
    claims.update(changes)
    return claims


def _sign_with_server_key(runtime: Runtime, claims: dict[str, Any], typ: str = "at+jwt") -> str:
    key = runtime.keystore.current_signing_key()
    header = {"alg": "RS256", "kid": key.kid, "typ": typ}
    return jwt.encode(header, claims, key.key, algorithms=["RS256"])


def _sign_hs256(secret: bytes, header: dict[str, Any], claims: dict[str, Any]) -> str:
    signing_input = f"{_b64url_json(header)}.{_b64url_json(claims)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"


def _published_key(client: TestClient) -> dict[str, Any]:
    """Return the current signing key as the JWKS endpoint publishes it."""
    keys = client.get("/oauth/jwks").json()["keys"]
    assert keys, "the JWKS endpoint publishes no key"
    return dict(keys[0])


def _private_ticket(factory: Factory, member: Member) -> dict[str, object]:
    """Create a ticket whose unique title shows up in a body only if the ticket leaked."""
    return factory.ticket(member, title=f"private-{uuid.uuid4().hex}")


# Driving the authorization code flow on the live server


def _authorize_params(client_id: str, verifier: str, **changes: str | None) -> dict[str, str]:
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT_URI,
        "scope": "openid",
        "state": secrets.token_urlsafe(16),
        "code_challenge": s256(verifier),
        "code_challenge_method": "S256",
    }
    params.update(changes)
    return {name: value for name, value in params.items() if value is not None}


def _sign_in_for_code(live_server: str, client_id: str, member: Member) -> tuple[str, str]:
    """Sign ``member`` in through the browser pages and return the code and its verifier."""
    verifier = secrets.token_urlsafe(48)
    query = urlencode(_authorize_params(client_id, verifier))
    callback = browser_sign_in(
        live_server, f"{live_server}/oauth/authorize?{query}", member.email, TEST_PASSWORD
    )
    codes = parse_qs(urlsplit(callback).query).get("code")
    assert codes, f"the redirect carries no code: {callback}"
    return codes[0], verifier


def _redeem(http: httpx.Client, client_id: str, code: str, verifier: str) -> httpx.Response:
    return http.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "client_id": client_id,
            "code_verifier": verifier,
        },
    )


def _refresh(http: httpx.Client, client_id: str, refresh_token: str) -> httpx.Response:
    return http.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": client_id,
        },
    )


def _signed_in_tokens(
    live_server: str, http: httpx.Client, factory: Factory
) -> tuple[str, dict[str, Any]]:
    """Register a public client and sign a new member in. Return the client id and tokens."""
    member = factory.member()
    registered = factory.client(REDIRECT_URI, public=True)
    code, verifier = _sign_in_for_code(live_server, registered.client_id, member)
    response = _redeem(http, registered.client_id, code, verifier)
    assert response.status_code == 200, response.text
    return registered.client_id, response.json()


# Access tokens at a resource endpoint


def test_hand_signed_token_is_accepted(
    client: TestClient, runtime: Runtime, settings: Settings, factory: Factory
) -> None:
    # The forgeries below change one thing each in tokens built this way.
    member = factory.member()
    ticket = _private_ticket(factory, member)
    token = _sign_with_server_key(runtime, _access_claims(member, settings))

    response = client.get(f"/api/v1/tickets/{ticket['id']}", headers=bearer(token))

    assert response.status_code == 200, response.text
    assert response.json()["title"] == ticket["title"]


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_unsigned_token_is_rejected(
    client: TestClient, settings: Settings, factory: Factory, alg: str
) -> None:
    member = factory.member()
    ticket = _private_ticket(factory, member)
    header = {"alg": alg, "typ": "at+jwt", "kid": _published_key(client)["kid"]}
    token = f"{_b64url_json(header)}.{_b64url_json(_access_claims(member, settings))}."

    response = client.get(f"/api/v1/tickets/{ticket['id']}", headers=bearer(token))

    assert response.status_code == 401
    assert str(ticket["title"]) not in response.text


@pytest.mark.parametrize("secret_source", ["pem", "jwk_n"])
def test_hs256_with_public_key_rejected(
    client: TestClient, settings: Settings, factory: Factory, secret_source: str
) -> None:
    member = factory.member()
    ticket = _private_ticket(factory, member)
    published = _published_key(client)
    if secret_source == "pem":
        secret = RSAKey.import_key(published).as_pem(private=False)
    else:
        modulus = str(published["n"])
        secret = base64.urlsafe_b64decode(modulus + "=" * (-len(modulus) % 4))
    header = {"alg": "HS256", "typ": "at+jwt", "kid": published["kid"]}
    token = _sign_hs256(secret, header, _access_claims(member, settings))

    response = client.get(f"/api/v1/tickets/{ticket['id']}", headers=bearer(token))

    assert response.status_code == 401
    assert str(ticket["title"]) not in response.text


def test_unknown_kid_is_rejected(client: TestClient, settings: Settings, factory: Factory) -> None:
    member = factory.member()
    ticket = _private_ticket(factory, member)
    header = {"alg": "RS256", "typ": "at+jwt", "kid": f"forged-{uuid.uuid4().hex}"}
    token = jwt.encode(
        header, _access_claims(member, settings), RSAKey.generate_key(2048), algorithms=["RS256"]
    )

    response = client.get(f"/api/v1/tickets/{ticket['id']}", headers=bearer(token))

    assert response.status_code == 401
    assert str(ticket["title"]) not in response.text


def test_foreign_key_under_real_kid_rejected(
    client: TestClient, settings: Settings, factory: Factory
) -> None:
    member = factory.member()
    ticket = _private_ticket(factory, member)
    header = {"alg": "RS256", "typ": "at+jwt", "kid": _published_key(client)["kid"]}
    token = jwt.encode(
        header, _access_claims(member, settings), RSAKey.generate_key(2048), algorithms=["RS256"]
    )

    response = client.get(f"/api/v1/tickets/{ticket['id']}", headers=bearer(token))

    assert response.status_code == 401
    assert str(ticket["title"]) not in response.text


def test_expired_token_is_rejected(
    client: TestClient, runtime: Runtime, settings: Settings, factory: Factory
) -> None:
    member = factory.member()
    ticket = _private_ticket(factory, member)
    now = int(time.time())
    # The server tolerates 30 seconds of clock skew; this token expired 60 seconds ago.
    claims = _access_claims(member, settings, iat=now - 960, auth_time=now - 960, exp=now - 60)
    token = _sign_with_server_key(runtime, claims)

    response = client.get(f"/api/v1/tickets/{ticket['id']}", headers=bearer(token))

    assert response.status_code == 401
    assert str(ticket["title"]) not in response.text


@pytest.mark.parametrize("audience", ["https://api.other.invalid", "test-client"])
def test_wrong_audience_is_rejected(
    client: TestClient, runtime: Runtime, settings: Settings, factory: Factory, audience: str
) -> None:
    member = factory.member()
    ticket = _private_ticket(factory, member)
    token = _sign_with_server_key(runtime, _access_claims(member, settings, aud=audience))

    response = client.get(f"/api/v1/tickets/{ticket['id']}", headers=bearer(token))

    assert response.status_code == 401
    assert str(ticket["title"]) not in response.text


def test_wrong_issuer_is_rejected(
    client: TestClient, runtime: Runtime, settings: Settings, factory: Factory
) -> None:
    member = factory.member()
    ticket = _private_ticket(factory, member)
    claims = _access_claims(member, settings, iss="https://issuer.other.invalid")
    token = _sign_with_server_key(runtime, claims)

    response = client.get(f"/api/v1/tickets/{ticket['id']}", headers=bearer(token))

    assert response.status_code == 401
    assert str(ticket["title"]) not in response.text


def test_typ_jwt_access_token_rejected(
    client: TestClient, runtime: Runtime, settings: Settings, factory: Factory
) -> None:
    member = factory.member()
    ticket = _private_ticket(factory, member)
    token = _sign_with_server_key(runtime, _access_claims(member, settings), typ="JWT")

    response = client.get(f"/api/v1/tickets/{ticket['id']}", headers=bearer(token))

    assert response.status_code == 401
    assert str(ticket["title"]) not in response.text


def test_id_token_as_access_token_rejected(
    live_server: str, http: httpx.Client, factory: Factory
) -> None:
    member = factory.member()
    ticket = _private_ticket(factory, member)
    registered = factory.client(REDIRECT_URI, public=True)
    code, verifier = _sign_in_for_code(live_server, registered.client_id, member)
    tokens = _redeem(http, registered.client_id, code, verifier).json()

    response = http.get(f"/api/v1/tickets/{ticket['id']}", headers=bearer(tokens["id_token"]))

    assert response.status_code == 401
    assert str(ticket["title"]) not in response.text


def test_tampered_tenant_id_is_rejected(client: TestClient, factory: Factory) -> None:
    member = factory.member()
    victim = factory.member()
    ticket = _private_ticket(factory, victim)
    header, payload, signature = factory.token(member).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["tenant_id"] = str(victim.tenant_id)
    token = f"{header}.{_b64url_json(claims)}.{signature}"

    response = client.get(f"/api/v1/tickets/{ticket['id']}", headers=bearer(token))

    assert response.status_code == 401
    assert str(ticket["title"]) not in response.text


def test_cross_tenant_read_is_not_found(client: TestClient, factory: Factory) -> None:
    intruder = factory.member(roles=("contributor",))
    victim = factory.member()
    ticket = _private_ticket(factory, victim)

    response = client.get(
        f"/api/v1/tickets/{ticket['id']}", headers=bearer(factory.token(intruder))
    )

    assert response.status_code == 404
    assert str(ticket["title"]) not in response.text


def test_cross_tenant_patch_is_not_found(client: TestClient, factory: Factory) -> None:
    intruder = factory.member(roles=("contributor",))
    victim = factory.member()
    ticket = _private_ticket(factory, victim)

    response = client.patch(
        f"/api/v1/tickets/{ticket['id']}",
        json={"title": "overwritten"},
        headers=bearer(factory.token(intruder)),
    )
    after = client.get(f"/api/v1/tickets/{ticket['id']}", headers=bearer(factory.token(victim)))

    assert response.status_code == 404
    assert str(ticket["title"]) not in response.text
    assert after.status_code == 200
    assert after.json()["title"] == ticket["title"]


def test_cross_tenant_delete_is_not_found(client: TestClient, factory: Factory) -> None:
    intruder = factory.member(roles=("contributor",))
    victim = factory.member()
    ticket = _private_ticket(factory, victim)

    response = client.delete(
        f"/api/v1/tickets/{ticket['id']}", headers=bearer(factory.token(intruder))
    )
    after = client.get(f"/api/v1/tickets/{ticket['id']}", headers=bearer(factory.token(victim)))

    assert response.status_code == 404
    assert str(ticket["title"]) not in response.text
    assert after.status_code == 200


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer garbage",
        "Bearer a.b.c",
        "Bearer ..",
        "Basic dXNlcjpwYXNz",
        "Token {token}",
        "{token}",
    ],
    ids=[
        "absent",
        "empty",
        "scheme-only",
        "scheme-space",
        "garbage",
        "three-parts",
        "empty-parts",
        "basic",
        "other-scheme",
        "no-scheme",
    ],
)
def test_bad_authorization_header_challenged(
    client: TestClient, factory: Factory, authorization: str | None
) -> None:
    member = factory.member()
    ticket = _private_ticket(factory, member)
    headers = {}
    if authorization is not None:
        # A valid token under the wrong scheme must not count either.
        headers["Authorization"] = authorization.format(token=factory.token(member))

    response = client.get(f"/api/v1/tickets/{ticket['id']}", headers=headers)

    assert response.status_code == 401
    assert response.headers.get("www-authenticate", "").startswith("Bearer")
    assert str(ticket["title"]) not in response.text


# Refresh tokens at the token endpoint


def test_reused_refresh_token_revokes_family(
    live_server: str, http: httpx.Client, factory: Factory
) -> None:
    client_id, tokens = _signed_in_tokens(live_server, http, factory)

    first = _refresh(http, client_id, tokens["refresh_token"])
    reused = _refresh(http, client_id, tokens["refresh_token"])
    successor = _refresh(http, client_id, first.json()["refresh_token"])

    assert first.status_code == 200, first.text
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"
    assert successor.status_code == 400
    assert successor.json()["error"] == "invalid_grant"


def _refresh_at_once(live_server: str, client_id: str, refresh_token: str) -> list[httpx.Response]:
    """Send two refreshes with one token, released together, each on its own connection."""
    barrier = threading.Barrier(2, timeout=15)
    responses: list[httpx.Response] = []
    failures: list[Exception] = []

    def send() -> None:
        try:
            with httpx.Client(base_url=live_server, timeout=30) as own_client:
                barrier.wait()
                responses.append(_refresh(own_client, client_id, refresh_token))
        except Exception as exc:  # reported by the assert below, not lost in the thread
            failures.append(exc)

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures, failures
    assert len(responses) == 2, "a refresh did not finish within 60 seconds"
    return responses


@pytest.mark.parametrize("round_number", range(RACE_ROUNDS))
def test_concurrent_refresh_one_wins(
    live_server: str, http: httpx.Client, factory: Factory, round_number: int
) -> None:
    client_id, tokens = _signed_in_tokens(live_server, http, factory)

    responses = _refresh_at_once(live_server, client_id, tokens["refresh_token"])

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200, 400], [response.text for response in responses]
    loser = next(response for response in responses if response.status_code == 400)
    assert loser.json()["error"] == "invalid_grant"


@pytest.mark.parametrize("round_number", range(RACE_ROUNDS))
def test_concurrent_refresh_revokes_winner(
    live_server: str, http: httpx.Client, factory: Factory, round_number: int
) -> None:
    # The losing refresh is a reuse, so it revokes the family, including the refresh
    # token that the winning request returned, whichever finished first.
    client_id, tokens = _signed_in_tokens(live_server, http, factory)
    responses = _refresh_at_once(live_server, client_id, tokens["refresh_token"])
    winners = [response for response in responses if response.status_code == 200]
    assert len(winners) == 1, [response.text for response in responses]

    successor = _refresh(http, client_id, winners[0].json()["refresh_token"])

    assert successor.status_code == 400
    assert successor.json()["error"] == "invalid_grant"


# Authorization codes


def test_reused_code_revokes_its_tokens(
    live_server: str, http: httpx.Client, factory: Factory
) -> None:
    member = factory.member()
    registered = factory.client(REDIRECT_URI, public=True)
    code, verifier = _sign_in_for_code(live_server, registered.client_id, member)

    first = _redeem(http, registered.client_id, code, verifier)
    reused = _redeem(http, registered.client_id, code, verifier)
    refreshed = _refresh(http, registered.client_id, first.json()["refresh_token"])

    assert first.status_code == 200, first.text
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"
    assert refreshed.status_code == 400
    assert refreshed.json()["error"] == "invalid_grant"


def test_wrong_code_verifier_is_rejected(
    live_server: str, http: httpx.Client, factory: Factory
) -> None:
    member = factory.member()
    registered = factory.client(REDIRECT_URI, public=True)
    code, _ = _sign_in_for_code(live_server, registered.client_id, member)

    response = _redeem(http, registered.client_id, code, secrets.token_urlsafe(48))

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert "access_token" not in response.json()


def test_code_for_other_client_rejected(
    live_server: str, http: httpx.Client, factory: Factory
) -> None:
    member = factory.member()
    issued_to = factory.client(REDIRECT_URI, public=True)
    other = factory.client(REDIRECT_URI, public=True)
    code, verifier = _sign_in_for_code(live_server, issued_to.client_id, member)

    response = _redeem(http, other.client_id, code, verifier)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert "access_token" not in response.json()


@pytest.mark.parametrize(
    "changes",
    [
        {"code_challenge_method": "plain", "code_challenge": "v" * 43},
        {"code_challenge_method": None},
        {"code_challenge": None},
        {"code_challenge": None, "code_challenge_method": None},
    ],
    ids=["plain", "method-missing", "challenge-missing", "both-missing"],
)
def test_authorize_without_s256_redirects_error(
    client: TestClient, factory: Factory, changes: dict[str, str | None]
) -> None:
    registered = factory.client(REDIRECT_URI, public=True)
    params = _authorize_params(registered.client_id, secrets.token_urlsafe(48), **changes)

    response = client.get("/oauth/authorize", params=params, follow_redirects=False)

    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith(f"{REDIRECT_URI}?")
    query = parse_qs(urlsplit(location).query)
    assert query["error"] == ["invalid_request"]
    assert query["state"] == [params["state"]]
    assert "code" not in query


@pytest.mark.parametrize(
    "redirect_uri",
    [
        f"{REDIRECT_URI}/extra",
        f"{REDIRECT_URI}?next=1",
        f"{REDIRECT_URI}/",
        REDIRECT_URI.replace("/callback", "/Callback"),
        REDIRECT_URI.replace(":8765", ":8766"),
    ],
    ids=["extra-path", "extra-query", "trailing-slash", "other-case", "other-port"],
)
def test_unregistered_redirect_uri_shows_error(
    client: TestClient, factory: Factory, redirect_uri: str
) -> None:
    registered = factory.client(REDIRECT_URI, public=True)
    params = _authorize_params(
        registered.client_id, secrets.token_urlsafe(48), redirect_uri=redirect_uri
    )

    response = client.get("/oauth/authorize", params=params, follow_redirects=False)

    assert response.status_code == 400
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")


# Bad input at the token endpoint


def test_json_token_request_is_invalid(client: TestClient, factory: Factory) -> None:
    registered = factory.client(REDIRECT_URI, public=True)

    response = client.post(
        "/oauth/token",
        json={
            "grant_type": "authorization_code",
            "code": "0" * 32 + ".code",
            "redirect_uri": REDIRECT_URI,
            "client_id": registered.client_id,
            "code_verifier": secrets.token_urlsafe(48),
        },
    )

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert "access_token" not in response.json()


@pytest.mark.parametrize("grant_type", ["password", "client_credentials", "implicit"])
def test_unknown_grant_type_is_unsupported(
    client: TestClient, factory: Factory, grant_type: str
) -> None:
    registered = factory.client(REDIRECT_URI, public=True)

    response = client.post(
        "/oauth/token",
        data={
            "grant_type": grant_type,
            "client_id": registered.client_id,
            "username": "someone@example.test",
            "password": "not-a-real-password",
        },
    )

    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


def test_missing_grant_type_is_invalid_request(client: TestClient, factory: Factory) -> None:
    registered = factory.client(REDIRECT_URI, public=True)
    response = client.post(
        "/oauth/token", data={"grant_type": "", "client_id": registered.client_id}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_wrong_secret_basic_is_invalid_client(
    live_server: str, http: httpx.Client, factory: Factory
) -> None:
    member = factory.member()
    registered = factory.client(REDIRECT_URI, public=False)
    code, verifier = _sign_in_for_code(live_server, registered.client_id, member)

    response = http.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
        },
        auth=(registered.client_id, f"wrong-{secrets.token_urlsafe(16)}"),
    )

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers.get("www-authenticate", "").startswith("Basic")
    assert "access_token" not in response.json()


@pytest.mark.parametrize("secret", ["wrong", ""], ids=["wrong", "empty"])
def test_wrong_secret_post_is_invalid_client(
    live_server: str, http: httpx.Client, factory: Factory, secret: str
) -> None:
    member = factory.member()
    registered = factory.client(REDIRECT_URI, public=False)
    code, verifier = _sign_in_for_code(live_server, registered.client_id, member)

    response = http.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
            "client_id": registered.client_id,
            "client_secret": secret,
        },
    )

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert "access_token" not in response.json()
