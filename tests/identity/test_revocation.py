"""Token revocation (RFC 7009) and sign-out."""

from __future__ import annotations

import httpx

from tests.conftest import Factory
from tests.identity.test_token_attacks import _refresh, _signed_in_tokens


def test_revoked_refresh_token_stops_family(
    live_server: str, http: httpx.Client, factory: Factory
) -> None:
    client_id, tokens = _signed_in_tokens(live_server, http, factory)

    revoked = http.post(
        "/oauth/revoke", data={"token": tokens["refresh_token"], "client_id": client_id}
    )
    refreshed = _refresh(http, client_id, tokens["refresh_token"])

    assert revoked.status_code == 200
    assert refreshed.status_code == 400
    assert refreshed.json()["error"] == "invalid_grant"


def test_other_client_cannot_revoke(live_server: str, http: httpx.Client, factory: Factory) -> None:
    client_id, tokens = _signed_in_tokens(live_server, http, factory)
    stranger = factory.client("http://127.0.0.1:8765/callback", public=True)

    revoked = http.post(
        "/oauth/revoke",
        data={"token": tokens["refresh_token"], "client_id": stranger.client_id},
    )
    refreshed = _refresh(http, client_id, tokens["refresh_token"])

    assert revoked.status_code == 200
    assert refreshed.status_code == 200


def test_revoked_access_token_stops_at_once(
    live_server: str, http: httpx.Client, factory: Factory
) -> None:
    client_id, tokens = _signed_in_tokens(live_server, http, factory)
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert http.get("/api/v1/tickets", headers=headers).status_code == 200

    revoked = http.post(
        "/oauth/revoke", data={"token": tokens["access_token"], "client_id": client_id}
    )

    assert revoked.status_code == 200
    assert http.get("/api/v1/tickets", headers=headers).status_code == 401
    assert _refresh(http, client_id, tokens["refresh_token"]).status_code == 400


def test_revoked_refresh_token_stops_access_token(
    live_server: str, http: httpx.Client, factory: Factory
) -> None:
    client_id, tokens = _signed_in_tokens(live_server, http, factory)
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}

    http.post("/oauth/revoke", data={"token": tokens["refresh_token"], "client_id": client_id})

    assert http.get("/api/v1/tickets", headers=headers).status_code == 401


def test_unknown_token_revocation_succeeds(
    live_server: str, http: httpx.Client, factory: Factory
) -> None:
    client_id, _ = _signed_in_tokens(live_server, http, factory)
    response = http.post("/oauth/revoke", data={"token": "nonsense", "client_id": client_id})
    assert response.status_code == 200


def test_revoke_without_token_is_invalid_request(
    live_server: str, http: httpx.Client, factory: Factory
) -> None:
    client_id, _ = _signed_in_tokens(live_server, http, factory)
    response = http.post("/oauth/revoke", data={"client_id": client_id})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
