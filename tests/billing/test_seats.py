"""Seats: a plan's seat count caps the members a tenant can add."""

from __future__ import annotations

from fastapi.testclient import TestClient

from stockade.runtime import Runtime
from tests.conftest import Factory, bearer


def test_invite_beyond_seats_is_402(client: TestClient, runtime: Runtime, factory: Factory) -> None:
    tenant = factory.tenant("seats")
    admin = factory.member(tenant, roles=("admin",))
    seats = runtime.plans.by_name("free").seats
    for _ in range(seats - 1):
        factory.member(tenant, roles=("viewer",))

    response = client.post(
        "/api/v1/members",
        json={"email": f"extra-{admin.user_id.hex[:8]}@example.test", "roles": ["viewer"]},
        headers=bearer(factory.token(admin)),
    )

    assert response.status_code == 402
    assert response.json()["type"] == "urn:stockade:problem:seat-limit-reached"
    assert response.json()["seats"] == seats


def test_role_change_needs_no_new_seat(
    client: TestClient, runtime: Runtime, factory: Factory
) -> None:
    tenant = factory.tenant("seats")
    admin = factory.member(tenant, roles=("admin",))
    seats = runtime.plans.by_name("free").seats
    members = [factory.member(tenant, roles=("viewer",)) for _ in range(seats - 1)]

    response = client.patch(
        f"/api/v1/members/{members[0].user_id}",
        json={"roles": ["contributor"]},
        headers=bearer(factory.token(admin)),
    )

    assert response.status_code == 200


def test_concurrent_invites_take_one_seat(
    client: TestClient, runtime: Runtime, factory: Factory
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    tenant = factory.tenant("seats")
    admin = factory.member(tenant, roles=("admin",))
    seats = runtime.plans.by_name("free").seats
    for _ in range(seats - 2):
        factory.member(tenant, roles=("viewer",))
    headers = bearer(factory.token(admin))

    def invite(number: int) -> int:
        email = f"race-{number}-{admin.user_id.hex[:8]}@example.test"
        response = client.post(
            "/api/v1/members", json={"email": email, "roles": ["viewer"]}, headers=headers
        )
        return response.status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(invite, range(6)))

    assert statuses.count(201) == 1
    assert statuses.count(402) == 5
