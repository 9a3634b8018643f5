"""Deny by default: every route declares a permission, and the app refuses one that does not."""

from __future__ import annotations

import re

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from stockade.access.guard import declared_permissions
from stockade.access.policy import AUTHENTICATED, PUBLIC
from stockade.runtime import Runtime
from stockade.web.app import UndeclaredRouteError, api_routes, check_routes

# Routes that respond without a token, and why.
EXPECTED_PUBLIC = {
    "/.well-known/openid-configuration",  # discovery
    "/oauth/authorize",
    "/oauth/token",
    "/oauth/revoke",
    "/oauth/jwks",  # the protocol
    "/login",
    "/login/done",
    "/login/tenant",
    "/logout",  # sign-in pages
    "/login/mfa",
    "/account",
    "/account/mfa",
    "/invitation",  # pages that check the browser session or a token themselves
    "/openapi.json",
    "/health",
    "/",
    "/webhooks/stripe",  # signed by Stripe (Stripe-Signature), not by a user's token
    "/webhooks/adyen",  # signed by Adyen (HMAC in each notification item)
}


def test_every_route_declares_one_permission(app: FastAPI, runtime: Runtime) -> None:
    routes = api_routes(app.routes)
    assert len(routes) >= 15
    for route in routes:
        assert isinstance(route, APIRoute), route
        declared = declared_permissions(route)
        assert len(declared) == 1, route.path
        assert declared[0] in runtime.policy.permissions | {PUBLIC, AUTHENTICATED}, route.path


def test_only_expected_routes_are_public(app: FastAPI) -> None:
    public = {
        route.path for route in api_routes(app.routes) if declared_permissions(route) == [PUBLIC]
    }
    assert public == EXPECTED_PUBLIC


def test_protected_routes_refuse_anonymous_calls(app: FastAPI, client: TestClient) -> None:
    checked = 0
    for route in api_routes(app.routes):
        if declared_permissions(route) == [PUBLIC]:
            continue
        path = re.sub(r"\{[^}]+\}", "00000000-0000-0000-0000-000000000000", route.path)
        for method in route.methods:
            response = client.request(method, path)
            assert response.status_code == 401, f"{method} {path}"
            assert "WWW-Authenticate" in response.headers, f"{method} {path}"
            checked += 1
    assert checked >= 6


def test_route_without_permission_stops_start(app: FastAPI, runtime: Runtime) -> None:
    extra = APIRouter()

    @extra.get("/api/v1/undeclared")
    def undeclared() -> dict[str, str]:
        return {}

    probe = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    probe.include_router(extra)
    with pytest.raises(UndeclaredRouteError, match="declares 0 permissions"):
        check_routes(probe, runtime.policy)


def test_unknown_permission_stops_start(runtime: Runtime) -> None:
    from stockade.access.guard import require

    probe = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @probe.get("/api/v1/typo", dependencies=[require("tickets:reed")])
    def typo() -> dict[str, str]:
        return {}

    with pytest.raises(UndeclaredRouteError, match="unknown permission"):
        check_routes(probe, runtime.policy)


def test_unknown_path_is_problem_json(client: TestClient) -> None:
    response = client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 404


def test_framework_docs_route_stops_start(runtime: Runtime) -> None:
    with pytest.raises(UndeclaredRouteError, match="not an API route"):
        check_routes(FastAPI(), runtime.policy)


def test_unexpected_error_is_clean_500(runtime: Runtime) -> None:
    from stockade.access.guard import require
    from stockade.web.app import create_app

    app = create_app(runtime)

    @app.get("/api/v1/boom", dependencies=[require(PUBLIC)])
    def boom() -> dict[str, str]:
        raise RuntimeError("secret detail that must not leak")

    with TestClient(app, raise_server_exceptions=True) as probe:
        response = probe.get("/api/v1/boom")

    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert "secret detail" not in response.text
    assert "Traceback" not in response.text


def test_nul_in_any_input_is_400(client: TestClient) -> None:
    token = client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "client_id": "a\x00b", "refresh_token": "x"},
    )
    page = client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf
    login = client.post(
        "/login",
        data={
            "email": "a\x00@example.test",
            "password": "x",
            "csrf_token": csrf.group(1),
            "request": "",
        },
    )
    authorize = client.get("/oauth/authorize", params={"client_id": "a\x00b"})

    assert token.status_code == 400
    assert token.json()["error"] == "invalid_request"
    assert login.status_code == 400
    assert authorize.status_code == 400
