"""A real OAuth client that this project did not write (Authlib's requests session)
signs in with PKCE against the running server and reads its own tenant's tickets."""

from __future__ import annotations

import re
import secrets
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from authlib.integrations.requests_client import OAuth2Session
from joserfc import jwt
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from tests.conftest import TEST_PASSWORD, Factory, bearer

REDIRECT_URI = "http://127.0.0.1:8765/callback"


def _hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"hidden field {name} missing from page"
    return match.group(1).replace("&amp;", "&")


def browser_sign_in(
    live_server: str, authorize_url: str, email: str, password: str, tenant_name: str | None = None
) -> str:
    """Act as the user's browser: sign in, pick a tenant, return the client redirect."""
    with httpx.Client(base_url=live_server, follow_redirects=False, timeout=30) as browser:
        page = browser.get(authorize_url)
        assert page.status_code == 200, page.text
        response = browser.post(
            "/login",
            data={
                "email": email,
                "password": password,
                "csrf_token": _hidden(page.text, "csrf_token"),
                "request": _hidden(page.text, "request"),
            },
        )
        while response.status_code in (302, 303):
            location = response.headers["location"]
            if location.startswith(REDIRECT_URI):
                return location
            response = browser.get(location)
        assert response.status_code == 200, response.text
        assert tenant_name is not None, "a tenant picker appeared unexpectedly"
        tenant_id = re.search(rf'value="([0-9a-f-]{{36}})">{tenant_name} ', response.text)
        assert tenant_id, "the picker does not list the tenant"
        picked = browser.post(
            "/login/tenant",
            data={
                "tenant_id": tenant_id.group(1),
                "csrf_token": _hidden(response.text, "csrf_token"),
                "request": _hidden(response.text, "request"),
            },
        )
        assert picked.status_code == 303, picked.text
        return picked.headers["location"]


def authlib_session(client_id: str, **kwargs: object) -> OAuth2Session:
    return OAuth2Session(
        client_id=client_id,
        redirect_uri=REDIRECT_URI,
        scope="openid email",
        code_challenge_method="S256",
        **kwargs,
    )


def sign_in_with_authlib(
    live_server: str,
    client_id: str,
    email: str,
    tenant_name: str | None = None,
    **session_options: object,
) -> tuple[OAuth2Session, dict[str, object], str]:
    session = authlib_session(client_id, **session_options)
    verifier = secrets.token_urlsafe(48)
    nonce = secrets.token_urlsafe(16)
    url, _state = session.create_authorization_url(
        f"{live_server}/oauth/authorize", code_verifier=verifier, nonce=nonce
    )
    callback = browser_sign_in(live_server, url, email, TEST_PASSWORD, tenant_name)
    token = session.fetch_token(
        f"{live_server}/oauth/token", authorization_response=callback, code_verifier=verifier
    )
    return session, token, nonce


def test_pkce_sign_in_reads_own_tenant_only(live_server: str, factory: Factory) -> None:
    member = factory.member(roles=("viewer",))
    other = factory.member(roles=("admin",))
    mine = factory.ticket(member, "mine")
    theirs = factory.ticket(other, "theirs")
    registered = factory.client(REDIRECT_URI, public=True)

    session, token, _ = sign_in_with_authlib(
        live_server, registered.client_id, member.email, token_endpoint_auth_method="none"
    )

    listed = session.get(f"{live_server}/api/v1/tickets").json()["items"]
    assert [item["id"] for item in listed] == [mine["id"]]
    assert session.get(f"{live_server}/api/v1/tickets/{theirs['id']}").status_code == 404
    assert set(token["scope"].split()) == {"openid", "email"}
    assert token["token_type"].lower() == "bearer"
    assert token["expires_in"] == 900


def test_id_token_verifies_against_published_jwks(live_server: str, factory: Factory) -> None:
    member = factory.member(roles=("contributor",))
    registered = factory.client(REDIRECT_URI, public=True)

    _, token, nonce = sign_in_with_authlib(
        live_server, registered.client_id, member.email, token_endpoint_auth_method="none"
    )

    discovery = httpx.get(f"{live_server}/.well-known/openid-configuration").json()
    keys = KeySet.import_key_set(httpx.get(discovery["jwks_uri"]).json())
    id_token = jwt.decode(token["id_token"], keys, algorithms=["RS256"])
    JWTClaimsRegistry(
        iss={"essential": True, "value": live_server},
        aud={"essential": True, "value": registered.client_id},
        nonce={"essential": True, "value": nonce},
        sub={"essential": True, "value": str(member.user_id)},
    ).validate(id_token.claims)
    assert id_token.claims["email"] == member.email
    assert id_token.claims["tenant_id"] == str(member.tenant_id)


def test_confidential_client_basic_auth_and_refresh(live_server: str, factory: Factory) -> None:
    member = factory.member(roles=("contributor",))
    registered = factory.client(REDIRECT_URI, public=False)
    assert registered.client_secret

    session, token, _ = sign_in_with_authlib(
        live_server,
        registered.client_id,
        member.email,
        client_secret=registered.client_secret,
        token_endpoint_auth_method="client_secret_basic",
    )
    refreshed = session.refresh_token(f"{live_server}/oauth/token")

    assert refreshed["refresh_token"] != token["refresh_token"]
    created = session.post(f"{live_server}/api/v1/tickets", json={"title": "from authlib"})
    assert created.status_code == 201, created.text


def test_tenant_picker_issues_token_for_chosen_tenant(live_server: str, factory: Factory) -> None:
    first = factory.member(roles=("viewer",))
    second_tenant = factory.tenant()
    second = factory.member(second_tenant, roles=("contributor",), email=first.email)
    registered = factory.client(REDIRECT_URI, public=True)

    _, token, _ = sign_in_with_authlib(
        live_server,
        registered.client_id,
        first.email,
        tenant_name=second.tenant,
        token_endpoint_auth_method="none",
    )

    userinfo = httpx.get(f"{live_server}/oauth/userinfo", headers=bearer(token["access_token"]))
    assert userinfo.status_code == 200
    assert userinfo.json()["tenant_id"] == str(second.tenant_id)
    assert userinfo.json()["roles"] == ["contributor"]


def test_redirect_carries_state_and_issuer(live_server: str, factory: Factory) -> None:
    member = factory.member()
    registered = factory.client(REDIRECT_URI, public=True)
    session = authlib_session(registered.client_id)
    url, state = session.create_authorization_url(
        f"{live_server}/oauth/authorize", code_verifier=secrets.token_urlsafe(48)
    )

    callback = browser_sign_in(live_server, url, member.email, TEST_PASSWORD)

    params = parse_qs(urlsplit(callback).query)
    assert params["state"] == [state]
    assert params["iss"] == [live_server]


@pytest.mark.parametrize("password", ["wrong-password-123", ""])
def test_wrong_password_gets_generic_error(
    live_server: str, factory: Factory, password: str
) -> None:
    member = factory.member()
    registered = factory.client(REDIRECT_URI, public=True)
    url, _ = authlib_session(registered.client_id).create_authorization_url(
        f"{live_server}/oauth/authorize", code_verifier=secrets.token_urlsafe(48)
    )
    with httpx.Client(base_url=live_server, timeout=30) as browser:
        page = browser.get(url)
        known = browser.post(
            "/login",
            data={
                "email": member.email,
                "password": password,
                "csrf_token": _hidden(page.text, "csrf_token"),
                "request": _hidden(page.text, "request"),
            },
        )
        unknown = browser.post(
            "/login",
            data={
                "email": "nobody-" + member.email,
                "password": password,
                "csrf_token": _hidden(page.text, "csrf_token"),
                "request": _hidden(page.text, "request"),
            },
        )
    assert known.status_code == unknown.status_code == 401
    assert "e-mail address or password is incorrect" in known.text
    assert "e-mail address or password is incorrect" in unknown.text
