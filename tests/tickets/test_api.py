"""The tickets API: CRUD within a tenant, role checks, and clear errors for bad input."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import Factory, bearer


def test_contributor_creates_reads_changes_deletes(client: TestClient, factory: Factory) -> None:
    member = factory.member(roles=("contributor",))
    headers = bearer(factory.token(member))

    created = client.post(
        "/api/v1/tickets", json={"title": "Printer on fire", "body": "Help"}, headers=headers
    )
    assert created.status_code == 201
    ticket = created.json()
    assert ticket["status"] == "open"
    assert ticket["created_by"] == str(member.user_id)

    path = f"/api/v1/tickets/{ticket['id']}"
    assert client.get(path, headers=headers).json()["title"] == "Printer on fire"
    changed = client.patch(path, json={"status": "closed"}, headers=headers)
    assert changed.status_code == 200
    assert changed.json()["status"] == "closed"
    assert changed.json()["title"] == "Printer on fire"
    assert client.delete(path, headers=headers).status_code == 204
    assert client.get(path, headers=headers).status_code == 404


def test_list_filters_by_status(client: TestClient, factory: Factory) -> None:
    member = factory.member(roles=("contributor",))
    headers = bearer(factory.token(member))
    client.post("/api/v1/tickets", json={"title": "a", "status": "pending"}, headers=headers)
    client.post("/api/v1/tickets", json={"title": "b", "status": "open"}, headers=headers)

    pending = client.get("/api/v1/tickets?status=pending", headers=headers).json()["items"]

    assert [item["title"] for item in pending] == ["a"]


def test_viewer_cannot_write(client: TestClient, factory: Factory) -> None:
    member = factory.member(roles=("viewer",))
    headers = bearer(factory.token(member))
    ticket = factory.ticket(member)

    created = client.post("/api/v1/tickets", json={"title": "x"}, headers=headers)
    changed = client.patch(f"/api/v1/tickets/{ticket['id']}", json={"title": "y"}, headers=headers)

    assert created.status_code == 403
    assert created.headers["content-type"] == "application/problem+json"
    assert changed.status_code == 403
    assert (
        client.get(f"/api/v1/tickets/{ticket['id']}", headers=headers).json()["title"] == "a ticket"
    )


def test_billing_admin_cannot_read_tickets(client: TestClient, factory: Factory) -> None:
    member = factory.member(roles=("billing-admin",))
    response = client.get("/api/v1/tickets", headers=bearer(factory.token(member)))
    assert response.status_code == 403


def test_bad_bodies_get_problem_json(client: TestClient, factory: Factory) -> None:
    member = factory.member(roles=("contributor",))
    headers = bearer(factory.token(member))
    ticket = factory.ticket(member)
    path = f"/api/v1/tickets/{ticket['id']}"
    cases = [
        ("POST", "/api/v1/tickets", {"title": ""}),
        ("POST", "/api/v1/tickets", {"title": "x" * 201}),
        ("POST", "/api/v1/tickets", {"title": "x", "status": "done"}),
        ("POST", "/api/v1/tickets", {"title": "x", "tenant_id": str(member.tenant_id)}),
        ("POST", "/api/v1/tickets", ["not", "an", "object"]),
        ("PATCH", path, {}),
        ("PATCH", path, {"title": None}),
        ("PATCH", path, {"status": 3}),
    ]
    for method, url, body in cases:
        response = client.request(method, url, json=body, headers=headers)
        assert response.status_code == 422, (method, body, response.text)
        assert response.headers["content-type"] == "application/problem+json", body
        assert response.json()["type"] == "urn:stockade:problem:invalid-request", body
    assert client.get(path, headers=headers).json()["title"] == "a ticket"


def test_malformed_json_and_ids_are_422(client: TestClient, factory: Factory) -> None:
    member = factory.member(roles=("contributor",))
    headers = {**bearer(factory.token(member)), "Content-Type": "application/json"}

    broken = client.post("/api/v1/tickets", content=b"{not json", headers=headers)
    bad_id = client.get("/api/v1/tickets/not-a-uuid", headers=headers)
    bad_limit = client.get("/api/v1/tickets?limit=100000", headers=headers)

    assert broken.status_code == 422
    assert bad_id.status_code == 422
    assert bad_limit.status_code == 422


def test_missing_ticket_is_404(client: TestClient, factory: Factory) -> None:
    member = factory.member(roles=("admin",))
    response = client.delete(
        "/api/v1/tickets/00000000-0000-0000-0000-000000000000",
        headers=bearer(factory.token(member)),
    )
    assert response.status_code == 404
    assert response.json()["detail"] == "no such ticket"


def test_nul_character_is_422(client: TestClient, factory: Factory) -> None:
    member = factory.member(roles=("contributor",))
    headers = bearer(factory.token(member))
    ticket = factory.ticket(member)

    created = client.post("/api/v1/tickets", json={"title": "a\u0000b"}, headers=headers)
    changed = client.patch(
        f"/api/v1/tickets/{ticket['id']}", json={"body": "x\u0000"}, headers=headers
    )

    assert created.status_code == 422
    assert changed.status_code == 422
