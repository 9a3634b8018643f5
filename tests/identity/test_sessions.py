"""Revocation takes effect on the next request: removal, disabling, sign-out."""

from __future__ import annotations

import re
import secrets
from urllib.parse import parse_qs, urlsplit

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import text

from stockade.identity import admin
from stockade.runtime import Runtime
from tests.conftest import TEST_PASSWORD, Factory, bearer
from tests.identity.test_oidc_client import (
    REDIRECT_URI,
    _hidden,
    authlib_session,
    sign_in_with_authlib,
)
from tests.identity.test_token_attacks import _redeem, _refresh


def test_removed_member_refused_next_call(
    client: TestClient, runtime: Runtime, factory: Factory
) -> None:
    member = factory.member(roles=("viewer",))
    headers = bearer(factory.token(member))
    assert client.get("/api/v1/tickets", headers=headers).status_code == 200

    with runtime.db.owner.begin() as conn:
        conn.execute(
            text("delete from memberships where tenant_id = :t and user_id = :u"),
            {"t": member.tenant_id, "u": member.user_id},
        )

    response = client.get("/api/v1/tickets", headers=headers)
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]


def test_disabled_user_refused_everywhere(
    live_server: str, http: httpx.Client, runtime: Runtime, factory: Factory
) -> None:
    member = factory.member(roles=("viewer",))
    registered = factory.client(REDIRECT_URI, public=True)
    _, tokens, _ = sign_in_with_authlib(
        live_server, registered.client_id, member.email, token_endpoint_auth_method="none"
    )
    headers = bearer(tokens["access_token"])

    admin.set_disabled(runtime.db.owner, member.email, disabled=True)

    assert http.get("/api/v1/tickets", headers=headers).status_code == 401
    assert _refresh(http, registered.client_id, tokens["refresh_token"]).status_code == 400

    admin.set_disabled(runtime.db.owner, member.email, disabled=False)
    assert http.get("/api/v1/tickets", headers=headers).status_code == 401


def test_disabled_user_cannot_sign_in(live_server: str, runtime: Runtime, factory: Factory) -> None:
    member = factory.member()
    admin.set_disabled(runtime.db.owner, member.email, disabled=True)
    with httpx.Client(base_url=live_server, timeout=30) as browser:
        page = browser.get("/login")
        response = browser.post(
            "/login",
            data={
                "email": member.email,
                "password": TEST_PASSWORD,
                "csrf_token": _hidden(page.text, "csrf_token"),
                "request": "",
            },
        )
    assert response.status_code == 401


def _browser_with_tokens(
    live_server: str, factory: Factory, email: str
) -> tuple[httpx.Client, str, dict[str, str]]:
    """Sign in through a browser that keeps its cookies; return it and the tokens."""
    registered = factory.client(REDIRECT_URI, public=True)
    oauth = authlib_session(registered.client_id, token_endpoint_auth_method="none")
    verifier = secrets.token_urlsafe(48)
    url, _ = oauth.create_authorization_url(
        f"{live_server}/oauth/authorize", code_verifier=verifier
    )
    browser = httpx.Client(base_url=live_server, follow_redirects=False, timeout=30)
    page = browser.get(url)
    response = browser.post(
        "/login",
        data={
            "email": email,
            "password": TEST_PASSWORD,
            "csrf_token": _hidden(page.text, "csrf_token"),
            "request": _hidden(page.text, "request"),
        },
    )
    while not response.headers["location"].startswith(REDIRECT_URI):
        response = browser.get(response.headers["location"])
    code = parse_qs(urlsplit(response.headers["location"]).query)["code"][0]
    tokens = _redeem(browser, registered.client_id, code, verifier).json()
    return browser, registered.client_id, tokens


def _sign_out(browser: httpx.Client, everywhere: bool) -> httpx.Response:
    page = browser.get("/account")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf, page.text
    data = {"csrf_token": csrf.group(1)}
    if everywhere:
        data["everywhere"] = "1"
    return browser.post("/logout", data=data)


def test_sign_out_stops_this_session_only(live_server: str, factory: Factory) -> None:
    member = factory.member(roles=("viewer",))
    laptop, _, laptop_tokens = _browser_with_tokens(live_server, factory, member.email)
    phone, _, phone_tokens = _browser_with_tokens(live_server, factory, member.email)

    assert _sign_out(laptop, everywhere=False).status_code == 200

    laptop_call = laptop.get("/api/v1/tickets", headers=bearer(laptop_tokens["access_token"]))
    phone_call = phone.get("/api/v1/tickets", headers=bearer(phone_tokens["access_token"]))
    assert laptop_call.status_code == 401
    assert phone_call.status_code == 200
    laptop.close()
    phone.close()


def test_sign_out_everywhere_stops_all(live_server: str, factory: Factory) -> None:
    member = factory.member(roles=("viewer",))
    laptop, _, laptop_tokens = _browser_with_tokens(live_server, factory, member.email)
    phone, phone_client, phone_tokens = _browser_with_tokens(live_server, factory, member.email)

    assert _sign_out(laptop, everywhere=True).status_code == 200

    laptop_call = laptop.get("/api/v1/tickets", headers=bearer(laptop_tokens["access_token"]))
    phone_call = phone.get("/api/v1/tickets", headers=bearer(phone_tokens["access_token"]))
    assert laptop_call.status_code == 401
    assert phone_call.status_code == 401
    assert _refresh(phone, phone_client, phone_tokens["refresh_token"]).status_code == 400
    laptop.close()
    phone.close()
