"""The audit trail: one hash chain per tenant, append-only for the application role,
and the ``/api/v1/audit/events`` list that only the tenant's auditors read."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import psycopg
import pytest
import structlog
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError

from stockade.audit.trail import (
    GENESIS_HASH,
    AuditError,
    AuditEvent,
    ChainBreak,
    list_events,
    record_event,
    record_platform_event,
    verify_chain,
    verify_platform_chain,
)
from stockade.db import Scope, scoped_transaction
from stockade.runtime import Runtime
from tests.conftest import Factory, Member, bearer


def record(
    runtime: Runtime, member: Member, action: str = "tickets:exported", **fields: Any
) -> AuditEvent:
    with scoped_transaction(runtime.db.app, Scope(tenant_id=member.tenant_id)) as conn:
        return record_event(conn, tenant_id=member.tenant_id, action=action, **fields)


def record_three(runtime: Runtime, member: Member) -> list[AuditEvent]:
    return [
        record(runtime, member, "signin:failed", subject="user:ünïcode ✓", data={"failures": 1}),
        record(
            runtime,
            member,
            "grant:requested",
            actor_user_id=member.user_id,
            client_address="ab" * 32,
            data={"roles": ["admin"], "nested": {"ok": True, "none": None, "big": 2**62}},
        ),
        record(runtime, member, "tokens:revoked"),
    ]


def owner_execute(runtime: Runtime, statement: str, **params: object) -> None:
    with runtime.db.owner.begin() as conn:
        conn.execute(text(statement), params)


# The chain


def test_fresh_chain_verifies_intact(runtime: Runtime, factory: Factory) -> None:
    member = factory.member()
    record_three(runtime, member)

    assert verify_chain(runtime.db.owner, member.tenant_id) == []


def test_events_link_previous_hashes(runtime: Runtime, factory: Factory) -> None:
    member = factory.member()

    first, second, third = record_three(runtime, member)

    assert [first.seq, second.seq, third.seq] == [1, 2, 3]
    assert first.prev_hash == GENESIS_HASH
    assert second.prev_hash == first.hash
    assert third.prev_hash == second.hash


def test_tampered_row_detected_by_verify(runtime: Runtime, factory: Factory) -> None:
    member = factory.member()
    record_three(runtime, member)

    owner_execute(
        runtime,
        'update audit_events set data = \'{"roles": ["viewer"]}\' where tenant_id = :t and seq = 2',
        t=member.tenant_id,
    )

    breaks = verify_chain(runtime.db.owner, member.tenant_id)
    assert breaks == [ChainBreak(2, "hash does not match the event's content")]


def test_rehashed_row_breaks_next_link(runtime: Runtime, factory: Factory) -> None:
    member = factory.member()
    record_three(runtime, member)
    with runtime.db.owner.connect() as conn:
        stored = {event.seq: event for event in list_events(conn, member.tenant_id, limit=3)}
    forged = replace(stored[2], data={"roles": ["viewer"]})
    forged = replace(forged, hash=forged.expected_hash())

    owner_execute(
        runtime,
        "update audit_events set data = cast(:data as jsonb), hash = :hash"
        " where tenant_id = :t and seq = 2",
        data='{"roles": ["viewer"]}',
        hash=forged.hash,
        t=member.tenant_id,
    )

    breaks = verify_chain(runtime.db.owner, member.tenant_id)
    assert breaks == [ChainBreak(3, "prev_hash differs from the previous hash")]


def test_deleted_row_detected_by_verify(runtime: Runtime, factory: Factory) -> None:
    member = factory.member()
    record_three(runtime, member)

    owner_execute(
        runtime, "delete from audit_events where tenant_id = :t and seq = 2", t=member.tenant_id
    )

    breaks = verify_chain(runtime.db.owner, member.tenant_id)
    assert breaks == [
        ChainBreak(3, "events 2 to 2 are missing"),
        ChainBreak(3, "prev_hash differs from the previous hash"),
    ]


def test_concurrent_writers_keep_one_chain(runtime: Runtime, factory: Factory) -> None:
    member = factory.member()

    def write_batch(batch: int) -> None:
        for index in range(8):
            record(runtime, member, data={"batch": batch, "index": index})

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(write_batch, range(4)))

    with runtime.db.owner.connect() as conn:
        seqs = sorted(event.seq for event in list_events(conn, member.tenant_id, limit=100))
    assert seqs == list(range(1, 33))
    assert verify_chain(runtime.db.owner, member.tenant_id) == []


def test_platform_chain_verifies_intact(runtime: Runtime) -> None:
    record_platform_event(runtime.db.app, action="signin:failed", data={"scope": "account"})
    record_platform_event(runtime.db.app, action="signin:locked", data={"scope": "account"})

    assert verify_platform_chain(runtime.db.owner) == []


# What the application role may not do


@pytest.mark.parametrize(
    "statement",
    [
        "update audit_events set data = '{}' where tenant_id = :t",
        "delete from audit_events where tenant_id = :t",
        "truncate audit_events",
    ],
)
def test_app_role_cannot_change_events(runtime: Runtime, factory: Factory, statement: str) -> None:
    member = factory.member(roles=("admin",))
    record(runtime, member)
    scope = Scope(tenant_id=member.tenant_id, roles=("admin",), user_id=member.user_id)

    with (
        pytest.raises(ProgrammingError) as raised,
        scoped_transaction(runtime.db.app, scope) as conn,
    ):
        conn.execute(text(statement), {"t": member.tenant_id})

    assert isinstance(raised.value.orig, psycopg.errors.InsufficientPrivilege)
    assert verify_chain(runtime.db.owner, member.tenant_id) == []


def test_app_role_cannot_read_platform_events(runtime: Runtime) -> None:
    record_platform_event(runtime.db.app, action="signin:failed")

    with (
        pytest.raises(ProgrammingError) as raised,
        scoped_transaction(runtime.db.app, Scope()) as conn,
    ):
        conn.execute(text("select count(*) from platform_audit_events"))

    assert isinstance(raised.value.orig, psycopg.errors.InsufficientPrivilege)


def test_event_for_other_tenant_rejected(runtime: Runtime, factory: Factory) -> None:
    mine = factory.member()
    theirs = factory.member()

    with (
        pytest.raises(AuditError, match="scoped to tenant"),
        scoped_transaction(runtime.db.app, Scope(tenant_id=mine.tenant_id)) as conn,
    ):
        record_event(conn, tenant_id=theirs.tenant_id, action="tickets:exported")

    with runtime.db.owner.connect() as conn:
        assert list_events(conn, theirs.tenant_id, limit=10) == []


def test_viewer_scope_cannot_read_events(runtime: Runtime, factory: Factory) -> None:
    member = factory.member(roles=("viewer",))
    record(runtime, member)
    scope = Scope(tenant_id=member.tenant_id, roles=("viewer",), user_id=member.user_id)

    with scoped_transaction(runtime.db.app, scope) as conn:
        assert list_events(conn, member.tenant_id, limit=10) == []


# What an event takes


@pytest.fixture
def bound_ids() -> Iterator[None]:
    structlog.contextvars.bind_contextvars(request_id="request-4f2a", trace_id="trace-91c3")
    yield
    structlog.contextvars.unbind_contextvars("request_id", "trace_id")


def test_request_id_taken_from_context(runtime: Runtime, factory: Factory, bound_ids: None) -> None:
    member = factory.member()

    event = record(runtime, member)

    assert event.request_id == "request-4f2a"
    assert event.trace_id == "trace-91c3"
    assert verify_chain(runtime.db.owner, member.tenant_id) == []


@pytest.mark.parametrize(
    ("action", "data", "message"),
    [
        ("tickets:exported", {"ratio": 0.5}, "data.ratio is a float"),
        ("tickets:exported", {"when": object()}, "data.when is a object"),
        ("Tickets exported", {}, "is not 'subject:action'"),
        ("tickets", {}, "is not 'subject:action'"),
    ],
)
def test_malformed_event_rejected(
    runtime: Runtime, factory: Factory, action: str, data: dict[str, object], message: str
) -> None:
    member = factory.member()

    with pytest.raises(AuditError, match=message):
        record(runtime, member, action, data=data)


# The list endpoint


def test_auditor_lists_own_events(client: TestClient, runtime: Runtime, factory: Factory) -> None:
    auditor = factory.member(roles=("auditor",))
    recorded = record_three(runtime, auditor)

    response = client.get("/api/v1/audit/events", headers=bearer(factory.token(auditor)))

    assert response.status_code == 200
    items = response.json()["items"]
    assert [item["seq"] for item in items] == [3, 2, 1]
    assert [item["action"] for item in items] == [event.action for event in reversed(recorded)]
    assert items[0]["hash"] == recorded[2].hash.hex()
    assert response.json()["next_before"] is None


def test_viewer_gets_forbidden_problem(client: TestClient, factory: Factory) -> None:
    viewer = factory.member(roles=("viewer",))

    response = client.get("/api/v1/audit/events", headers=bearer(factory.token(viewer)))

    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 403


def test_other_tenant_events_never_listed(
    client: TestClient, runtime: Runtime, factory: Factory
) -> None:
    auditor = factory.member(roles=("auditor",))
    other = factory.member(roles=("admin",))
    marker = f"secret-{uuid.uuid4().hex}"
    record(runtime, auditor, subject="mine")
    record(runtime, other, subject=marker)

    response = client.get("/api/v1/audit/events", headers=bearer(factory.token(auditor)))

    assert response.status_code == 200
    assert [item["subject"] for item in response.json()["items"]] == ["mine"]
    assert marker not in response.text
    assert str(other.tenant_id) not in response.text


def test_before_cursor_pages_backwards(
    client: TestClient, runtime: Runtime, factory: Factory
) -> None:
    auditor = factory.member(roles=("auditor",))
    for _ in range(5):
        record(runtime, auditor)
    headers = bearer(factory.token(auditor))

    pages: list[list[int]] = []
    before: int | None = None
    for _ in range(5):
        params = {"limit": 2} if before is None else {"limit": 2, "before": before}
        page = client.get("/api/v1/audit/events", params=params, headers=headers).json()
        pages.append([item["seq"] for item in page["items"]])
        before = page["next_before"]
        if before is None:
            break

    assert pages == [[5, 4], [3, 2], [1]]


@pytest.mark.parametrize("query", ["limit=0", "limit=201", "before=0", "before=abc"])
def test_invalid_paging_gets_problem(client: TestClient, factory: Factory, query: str) -> None:
    auditor = factory.member(roles=("auditor",))

    response = client.get(f"/api/v1/audit/events?{query}", headers=bearer(factory.token(auditor)))

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
