"""Members and approvals: invitations, governed privileged grants, removal revokes."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from fastapi.testclient import TestClient
from sqlalchemy import text

from stockade.identity import store
from stockade.identity.passwords import verify_password
from stockade.runtime import Runtime
from tests.conftest import Factory, Member, bearer


def _admins(factory: Factory, count: int = 2) -> list[Member]:
    tenant = factory.tenant("members")
    return [factory.member(tenant, roles=("admin",)) for _ in range(count)]


def _audit_actions(runtime: Runtime, member: Member) -> list[str]:
    with runtime.db.owner.begin() as conn:
        return list(
            conn.execute(
                text("select action from audit_events where tenant_id = :t order by seq"),
                {"t": member.tenant_id},
            ).scalars()
        )


def test_invited_user_sets_password(client: TestClient, runtime: Runtime, factory: Factory) -> None:
    admin, _ = _admins(factory)
    email = f"new-{admin.user_id.hex[:8]}@example.test"

    invited = client.post(
        "/api/v1/members",
        json={"email": email, "roles": ["viewer"]},
        headers=bearer(factory.token(admin)),
    )
    assert invited.status_code == 201, invited.text
    assert invited.json()["roles"] == ["viewer"]
    link = urlsplit(invited.json()["invitation_url"])

    page = client.get(f"{link.path}?{link.query}")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    token = re.search(r'name="token" value="([^"]+)"', page.text)
    assert csrf and token, page.text
    accepted = client.post(
        "/invitation",
        data={
            "csrf_token": csrf.group(1),
            "token": token.group(1),
            "password": "lantern harbor violet 55",
        },
    )
    again = client.get(f"{link.path}?{link.query}")

    assert accepted.status_code == 200, accepted.text
    user = store.find_user_by_email(runtime.db.app, email)
    assert user is not None
    assert verify_password(user.password_hash, "lantern harbor violet 55")
    assert again.status_code == 404
    assert "member:invited" in _audit_actions(runtime, admin)


def test_privileged_grant_waits_for_second_admin(
    client: TestClient, runtime: Runtime, factory: Factory
) -> None:
    first, second = _admins(factory)
    member = factory.member((first.tenant_id, first.tenant), roles=("viewer",))

    changed = client.patch(
        f"/api/v1/members/{member.user_id}",
        json={"roles": ["viewer", "billing-admin"]},
        headers=bearer(factory.token(first)),
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["roles"] == ["viewer"]
    request_id = changed.json()["pending"][0]["id"]

    own = client.post(
        f"/api/v1/approvals/{request_id}/approve", headers=bearer(factory.token(first))
    )
    other = client.post(
        f"/api/v1/approvals/{request_id}/approve", headers=bearer(factory.token(second))
    )

    assert own.status_code == 403
    assert other.status_code == 200, other.text
    assert other.json()["status"] == "approved"
    with runtime.db.owner.begin() as conn:
        roles = store.roles_in_tenant(conn, member.tenant_id, member.user_id)
    assert roles == ["billing-admin", "viewer"]
    actions = _audit_actions(runtime, first)
    assert "grant:requested" in actions
    assert "grant:self-decision-refused" in actions
    assert "grant:approved" in actions


def test_grantee_cannot_approve_own_grant(client: TestClient, factory: Factory) -> None:
    first, second = _admins(factory)

    requested = client.patch(
        f"/api/v1/members/{second.user_id}",
        json={"roles": ["admin", "billing-admin"]},
        headers=bearer(factory.token(first)),
    )
    request_id = requested.json()["pending"][0]["id"]
    response = client.post(
        f"/api/v1/approvals/{request_id}/approve", headers=bearer(factory.token(second))
    )

    assert response.status_code == 403


def test_rejected_grant_grants_nothing(
    client: TestClient, runtime: Runtime, factory: Factory
) -> None:
    first, second = _admins(factory)
    invited = client.post(
        "/api/v1/members",
        json={"email": f"x-{first.user_id.hex[:8]}@example.test", "roles": ["admin"]},
        headers=bearer(factory.token(first)),
    )
    request_id = invited.json()["pending"][0]["id"]

    rejected = client.post(
        f"/api/v1/approvals/{request_id}/reject", headers=bearer(factory.token(second))
    )
    listed = client.get("/api/v1/approvals", headers=bearer(factory.token(second)))

    assert rejected.status_code == 200
    assert rejected.json()["status"] == "rejected"
    assert invited.json()["roles"] == []
    assert request_id not in {item["id"] for item in listed.json()["items"]}


def test_removed_member_token_refused(
    client: TestClient, runtime: Runtime, factory: Factory
) -> None:
    admin, _ = _admins(factory)
    member = factory.member((admin.tenant_id, admin.tenant), roles=("contributor",))
    member_headers = bearer(factory.token(member))
    assert client.get("/api/v1/tickets", headers=member_headers).status_code == 200

    removed = client.delete(
        f"/api/v1/members/{member.user_id}", headers=bearer(factory.token(admin))
    )

    assert removed.status_code == 204
    assert client.get("/api/v1/tickets", headers=member_headers).status_code == 401
    assert "member:removed" in _audit_actions(runtime, admin)


def test_role_change_revokes_old_tokens(client: TestClient, factory: Factory) -> None:
    admin, _ = _admins(factory)
    member = factory.member((admin.tenant_id, admin.tenant), roles=("contributor",))
    member_headers = bearer(factory.token(member))

    client.patch(
        f"/api/v1/members/{member.user_id}",
        json={"roles": ["viewer"]},
        headers=bearer(factory.token(admin)),
    )

    assert (
        client.post("/api/v1/tickets", json={"title": "x"}, headers=member_headers).status_code
        == 401
    )


def test_admin_revokes_member_tokens(
    client: TestClient, runtime: Runtime, factory: Factory
) -> None:
    admin, _ = _admins(factory)
    member = factory.member((admin.tenant_id, admin.tenant), roles=("viewer",))
    member_headers = bearer(factory.token(member))

    revoked = client.post(
        f"/api/v1/members/{member.user_id}/revoke-tokens", headers=bearer(factory.token(admin))
    )

    assert revoked.status_code == 200
    assert client.get("/api/v1/tickets", headers=member_headers).status_code == 401
    assert "tokens:revoked" in _audit_actions(runtime, admin)


def test_last_admin_cannot_leave(client: TestClient, factory: Factory) -> None:
    (admin,) = _admins(factory, count=1)
    headers = bearer(factory.token(admin))

    demoted = client.patch(
        f"/api/v1/members/{admin.user_id}", json={"roles": ["viewer"]}, headers=headers
    )
    removed = client.delete(f"/api/v1/members/{admin.user_id}", headers=headers)

    assert demoted.status_code == 409
    assert removed.status_code == 409


def test_viewer_cannot_manage_members(client: TestClient, factory: Factory) -> None:
    viewer = factory.member(roles=("viewer",))
    response = client.get("/api/v1/members", headers=bearer(factory.token(viewer)))
    assert response.status_code == 403


def test_other_tenant_approval_is_not_found(client: TestClient, factory: Factory) -> None:
    first, _ = _admins(factory)
    member = factory.member((first.tenant_id, first.tenant), roles=("viewer",))
    outsider, _ = _admins(factory)
    pending = client.patch(
        f"/api/v1/members/{member.user_id}",
        json={"roles": ["admin"]},
        headers=bearer(factory.token(first)),
    )
    request_id = pending.json()["pending"][0]["id"]

    response = client.post(
        f"/api/v1/approvals/{request_id}/approve", headers=bearer(factory.token(outsider))
    )

    assert response.status_code == 404


def test_unknown_role_is_422(client: TestClient, factory: Factory) -> None:
    admin, _ = _admins(factory)
    response = client.post(
        "/api/v1/members",
        json={"email": "a@example.test", "roles": ["root"]},
        headers=bearer(factory.token(admin)),
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


def test_pending_only_invitee_can_be_removed(client: TestClient, factory: Factory) -> None:
    first, second = _admins(factory)
    invited = client.post(
        "/api/v1/members",
        json={"email": f"p-{first.user_id.hex[:8]}@example.test", "roles": ["admin"]},
        headers=bearer(factory.token(first)),
    )
    user_id = invited.json()["user_id"]
    request_id = invited.json()["pending"][0]["id"]

    removed = client.delete(f"/api/v1/members/{user_id}", headers=bearer(factory.token(first)))
    approve = client.post(
        f"/api/v1/approvals/{request_id}/approve", headers=bearer(factory.token(second))
    )

    assert removed.status_code == 204
    assert approve.status_code == 404
