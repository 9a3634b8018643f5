"""Tenant isolation, through the API and inside PostgreSQL.

A member of tenant A must never read or change a row of tenant B. The API test builds
random worlds with Hypothesis. The SQL tests connect as the application role and ask for
B's rows by name, so only row-level security keeps them from the data.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import ProgrammingError

from stockade.access import approvals
from stockade.audit.trail import record_event
from stockade.billing.ledger import Window, reserve, settle
from stockade.db import Scope, scoped_transaction
from stockade.identity import store
from stockade.knowledge.service import Knowledge
from stockade.runtime import Runtime
from tests.conftest import Factory, Member, bearer
from tests.knowledge.conftest import add_indexed

ROLES = ("viewer", "contributor", "auditor", "billing-admin", "admin")
# The roles that grant tickets:read and tickets:write, restated here so the test does not
# trust the policy file that it checks.
READ_ROLES = frozenset({"viewer", "contributor", "auditor", "admin"})
WRITE_ROLES = frozenset({"contributor", "admin"})
REDIRECT_URI = "http://127.0.0.1:8765/callback"


def tenant_tables(owner: Engine, readable_by: str | None = None) -> list[str]:
    """List the base tables of the public schema that have a ``tenant_id`` column.

    With ``readable_by``, keep only the tables that this role may SELECT from. The query
    runs as the owner because information_schema hides tables on which the current
    role has no privilege.
    """
    with owner.connect() as conn:
        tables = (
            conn.execute(
                text(
                    "select c.table_name from information_schema.columns c"
                    " join information_schema.tables t"
                    "  on t.table_schema = c.table_schema and t.table_name = c.table_name"
                    " where c.table_schema = 'public' and c.column_name = 'tenant_id'"
                    "  and t.table_type = 'BASE TABLE'"
                    " order by c.table_name"
                )
            )
            .scalars()
            .all()
        )
        if readable_by is None:
            return list(tables)
        privilege = text(
            "select has_table_privilege(:role, format('public.%I', cast(:table as text)), 'SELECT')"
        )
        return [
            table
            for table in tables
            if conn.execute(privilege, {"role": readable_by, "table": table}).scalar_one()
        ]


def quoted(conn: Connection, table: str) -> str:
    return conn.dialect.identifier_preparer.quote(table)


def count_rows(conn: Connection, table: str, where: str = "true", **params: Any) -> int:
    # The table name comes from the catalog and is quoted. ``where`` is a fixed fragment
    # written by a test, and values are bound parameters.
    statement = f"select count(*) from {quoted(conn, table)} where {where}"  # noqa: S608
    return int(conn.execute(text(statement), params).scalar_one())


def rows_of(conn: Connection, table: str, tenant_id: uuid.UUID) -> list[str]:
    """Return a tenant's rows of ``table`` as sorted strings, for before/after comparisons."""
    statement = f"select * from {quoted(conn, table)} where tenant_id = :t"  # noqa: S608
    rows = conn.execute(text(statement), {"t": tenant_id}).all()
    return sorted(repr(tuple(row)) for row in rows)


def rows_touched(conn: Connection, statement: str, params: dict[str, Any]) -> int:
    """Run a write in a savepoint and return its row count.

    A statement that the role has no privilege for touches no row, so it counts as 0.
    PostgreSQL reports a missing privilege and an RLS check failure with the same
    SQLSTATE 42501.
    """
    try:
        with conn.begin_nested():
            return conn.execute(text(statement), params).rowcount
    except ProgrammingError as exc:
        if not isinstance(exc.orig, psycopg.errors.InsufficientPrivilege):
            raise
        return 0


def full_scope(member: Member) -> Scope:
    """Scope the member's tenant with every role, so that only the tenant limits it."""
    return Scope(tenant_id=member.tenant_id, roles=ROLES, user_id=member.user_id)


def owner_tickets(runtime: Runtime, tenant_id: uuid.UUID) -> list[tuple[Any, ...]]:
    """Read a tenant's tickets as the owner, whose operator policy sees every row."""
    with runtime.db.owner.begin() as conn:
        rows = conn.execute(
            text(
                "select id, title, body, status, created_by, updated_at from tickets"
                " where tenant_id = :t order by id"
            ),
            {"t": tenant_id},
        ).all()
    return [tuple(row) for row in rows]


# API: random worlds


@dataclass(frozen=True)
class TenantWorld:
    tenant_id: uuid.UUID
    name: str
    members: list[Member]
    tickets: list[dict[str, object]]


role_sets = st.lists(st.sampled_from(ROLES), min_size=1, max_size=2, unique=True).map(tuple)
tenant_plans = st.tuples(st.lists(role_sets, min_size=1, max_size=4), st.integers(0, 4))
world_plans = st.lists(tenant_plans, min_size=2, max_size=4)


def build_tenant(
    factory: Factory, member_roles: list[tuple[str, ...]], ticket_count: int
) -> TenantWorld:
    tenant = factory.tenant("iso")
    members = [factory.member(tenant, roles=roles) for roles in member_roles]
    tickets = [
        factory.ticket(members[0], title=f"secret-{uuid.uuid4().hex}") for _ in range(ticket_count)
    ]
    return TenantWorld(tenant[0], tenant[1], members, tickets)


def expected_status(roles: tuple[str, ...], allowed_roles: frozenset[str]) -> int:
    """Return 404 when a role grants the permission (the row is hidden), else 403."""
    return 404 if allowed_roles.intersection(roles) else 403


def assert_reveals_nothing(body: str, other: TenantWorld, ticket: dict[str, object]) -> None:
    assert str(ticket["title"]) not in body
    assert str(other.tenant_id) not in body
    assert other.name not in body


@settings(max_examples=25, deadline=None)
@given(plan=world_plans)
def test_api_never_crosses_tenants(
    plan: list[tuple[list[tuple[str, ...]], int]],
    client: TestClient,
    factory: Factory,
    runtime: Runtime,
) -> None:
    world = [build_tenant(factory, roles, count) for roles, count in plan]
    before = {tenant.tenant_id: owner_tickets(runtime, tenant.tenant_id) for tenant in world}

    for own in world:
        own_ids = {ticket["id"] for ticket in own.tickets}
        for member in own.members:
            headers = bearer(factory.token(member))
            member_label = f"member with roles {member.roles}"

            listed = client.get("/api/v1/tickets", headers=headers)
            if READ_ROLES.intersection(member.roles):
                assert listed.status_code == 200, member_label
                assert {item["id"] for item in listed.json()["items"]} == own_ids, member_label
            else:
                assert listed.status_code == 403, member_label

            others = [tenant for tenant in world if tenant is not own]
            for other in others:
                for ticket in other.tickets:
                    path = f"/api/v1/tickets/{ticket['id']}"

                    read = client.get(path, headers=headers)
                    assert read.status_code == expected_status(member.roles, READ_ROLES), (
                        member_label
                    )
                    assert_reveals_nothing(read.text, other, ticket)

                    changed = client.patch(path, json={"title": "changed"}, headers=headers)
                    assert changed.status_code == expected_status(member.roles, WRITE_ROLES), (
                        member_label
                    )
                    assert_reveals_nothing(changed.text, other, ticket)

                    deleted = client.delete(path, headers=headers)
                    assert deleted.status_code == expected_status(member.roles, WRITE_ROLES), (
                        member_label
                    )
                    assert_reveals_nothing(deleted.text, other, ticket)

    for tenant in world:
        assert owner_tickets(runtime, tenant.tenant_id) == before[tenant.tenant_id]


# SQL: the application role against another tenant's rows


@dataclass(frozen=True)
class SeededPair:
    """Two tenants, each with one member holding every role and a row in each table."""

    a: Member
    b: Member
    ticket_a: dict[str, object]
    ticket_b: dict[str, object]


def seed_oauth_rows(app_engine: Engine, member: Member, client_id: str) -> None:
    """Store an authorization code and a refresh token the way the provider does."""
    grant = store.Grant(
        tenant_id=member.tenant_id,
        user_id=member.user_id,
        client_id=client_id,
        scope="openid",
        amr=("pwd",),
        authenticated_at=datetime.now(UTC),
        family_id=uuid.uuid4(),
        redirect_uri=REDIRECT_URI,
        code_challenge="unused-challenge",
    )
    with scoped_transaction(app_engine, full_scope(member)) as conn:
        store.store_code(conn, store.new_tenant_token(member.tenant_id), grant, 60)
        store.store_refresh_token(conn, store.new_tenant_token(member.tenant_id), grant, 1)


def seed_audit_event(app_engine: Engine, member: Member) -> None:
    with scoped_transaction(app_engine, full_scope(member)) as conn:
        record_event(conn, tenant_id=member.tenant_id, action="tickets:seeded")


def seed_usage(app_engine: Engine, member: Member) -> None:
    """Settle one reservation and hold another: a ledger entry, a counter, reservations."""
    settled = reserve(app_engine, member.tenant_id, "llm_call", 1, limit=10, window=Window.DAY)
    settle(app_engine, settled, 1)
    reserve(app_engine, member.tenant_id, "llm_call", 1, limit=10, window=Window.DAY)


def seed_billing(runtime: Runtime, member: Member) -> None:
    """Store and apply a subscription and a paid invoice, as the webhook route and worker do."""
    from stockade.billing import events, processing
    from stockade.billing.context import BillingContext
    from tests.billing.payments.events import encode, new_ids, stripe_event

    context = BillingContext.from_runtime(runtime)
    ids = new_ids()
    for kind in ("customer.subscription.created", "invoice.paid"):
        event = stripe_event(kind, tenant_id=member.tenant_id, **ids)
        with runtime.db.app.begin() as conn:
            events.store_event(
                conn, events.IncomingEvent("stripe", str(event["id"]), kind, encode(event))
            )
        processing.apply_event(context, events.EventKey("stripe", str(event["id"])))


def seed_member_rows(app_engine: Engine, member: Member, invitee: Member) -> None:
    """Open a grant request and an invitation for ``invitee``, as the members API does."""
    with scoped_transaction(app_engine, full_scope(member)) as conn:
        approvals.request_grant(conn, member.tenant_id, invitee.user_id, "admin", member.user_id)
        conn.execute(
            text(
                "insert into invitations (token_hash, tenant_id, user_id, invited_by, expires_at)"
                " values (:hash, :tenant, :user, :by, now() + interval '1 day')"
            ),
            {
                "hash": secrets.token_bytes(32),
                "tenant": member.tenant_id,
                "user": invitee.user_id,
                "by": member.user_id,
            },
        )


def seed_gateway(runtime: Runtime, knowledge: Knowledge, member: Member) -> None:
    """Store the tenant's gateway settings, a cached answer and a consented sample."""
    from stockade.gateway import budget, cache, control
    from stockade.gateway.config import load_gateway_config
    from stockade.gateway.providers import Usage

    config = load_gateway_config(None)
    control.set_settings(
        runtime.db.owner,
        config,
        member.tenant_id,
        allowed_models=None,
        sample_consent=True,
        sample_percent=100,
    )
    messages = [{"role": "user", "content": "secret question"}]
    entry = cache.Entry(
        key=cache.cache_key(member.tenant_id, "stockade-extractive", False, messages),
        model="stockade-extractive",
        content="secret answer",
        finish_reason="stop",
        usage=Usage(2, 2),
        citations=(),
        ttl=timedelta(hours=1),
    )
    with scoped_transaction(runtime.db.app, full_scope(member)) as conn:
        cache.store(conn, knowledge.keys, member.tenant_id, entry)
        budget.store_sample(
            conn, knowledge.keys, member.tenant_id, entry.model, messages, entry.content
        )


@pytest.fixture
def pair(factory: Factory, runtime: Runtime, knowledge: Knowledge) -> SeededPair:
    client_id = factory.client(REDIRECT_URI).client_id
    a = factory.member(factory.tenant("iso-a"), roles=ROLES)
    b = factory.member(factory.tenant("iso-b"), roles=ROLES)
    for member in (a, b):
        seed_oauth_rows(runtime.db.app, member, client_id)
        seed_audit_event(runtime.db.app, member)
        seed_usage(runtime.db.app, member)
        seed_billing(runtime, member)
        add_indexed(knowledge, member, "handbook", "Refunds take five days. Write to help.")
        seed_gateway(runtime, knowledge, member)
        invitee = factory.member((member.tenant_id, member.tenant), roles=("viewer",))
        seed_member_rows(runtime.db.app, member, invitee)
    return SeededPair(a, b, factory.ticket(a, "ticket of a"), factory.ticket(b, "ticket of b"))


@pytest.fixture
def tables(runtime: Runtime) -> list[str]:
    """Tenant tables that the application role may read.

    Tables without a SELECT grant are left out because the role cannot reach their rows.
    """
    found = tenant_tables(runtime.db.owner, readable_by=runtime.db.app_role)
    assert "tickets" in found, "tenant table discovery missed tickets"
    return found


def test_pair_seeds_every_tenant_table(
    runtime: Runtime, pair: SeededPair, tables: list[str]
) -> None:
    # Without a row of B, the isolation tests below would pass for that table vacuously.
    with scoped_transaction(runtime.db.app, full_scope(pair.b)) as conn:
        empty = [
            table
            for table in tables
            if count_rows(conn, table, "tenant_id = :t", t=pair.b.tenant_id) == 0
        ]
    assert empty == [], "add a row of each listed table to the `pair` fixture"


def test_other_tenant_rows_invisible(runtime: Runtime, pair: SeededPair, tables: list[str]) -> None:
    with scoped_transaction(runtime.db.app, full_scope(pair.a)) as conn:
        for table in tables:
            assert count_rows(conn, table, "tenant_id = :t", t=pair.b.tenant_id) == 0, table
            assert count_rows(conn, table, "tenant_id <> :t", t=pair.a.tenant_id) == 0, table


def test_other_tenant_and_its_users_invisible(runtime: Runtime, pair: SeededPair) -> None:
    with scoped_transaction(runtime.db.app, full_scope(pair.a)) as conn:
        tenants = conn.execute(text("select id from tenants")).scalars().all()
        users = set(conn.execute(text("select id from users")).scalars().all())
    with runtime.db.owner.begin() as conn:
        members_of_a = set(
            conn.execute(
                text("select user_id from memberships where tenant_id = :t"),
                {"t": pair.a.tenant_id},
            ).scalars()
        )
    assert tenants == [pair.a.tenant_id]
    assert users == members_of_a
    assert pair.b.user_id not in users


def test_other_tenant_rows_unchangeable(
    runtime: Runtime, pair: SeededPair, tables: list[str]
) -> None:
    app = runtime.db.app
    with scoped_transaction(app, full_scope(pair.b)) as conn:
        before = {table: rows_of(conn, table, pair.b.tenant_id) for table in tables}

    with scoped_transaction(app, full_scope(pair.a)) as conn:
        for table in tables:
            name = quoted(conn, table)
            params = {"t": pair.b.tenant_id}
            update = f"update {name} set tenant_id = tenant_id where tenant_id = :t"  # noqa: S608
            delete = f"delete from {name} where tenant_id = :t"  # noqa: S608
            assert rows_touched(conn, update, params) == 0, table
            assert rows_touched(conn, delete, params) == 0, table

    with scoped_transaction(app, full_scope(pair.b)) as conn:
        after = {table: rows_of(conn, table, pair.b.tenant_id) for table in tables}
    assert after == before


def test_insert_for_other_tenant_rejected(runtime: Runtime, pair: SeededPair) -> None:
    title = f"planted-{uuid.uuid4().hex}"
    with (
        pytest.raises(ProgrammingError) as raised,
        scoped_transaction(runtime.db.app, full_scope(pair.a)) as conn,
    ):
        conn.execute(
            text("insert into tickets (tenant_id, title) values (:t, :title)"),
            {"t": pair.b.tenant_id, "title": title},
        )

    assert isinstance(raised.value.orig, psycopg.errors.InsufficientPrivilege)
    assert "row-level security" in str(raised.value.orig)
    assert [row[1] for row in owner_tickets(runtime, pair.b.tenant_id)] == ["ticket of b"]


# SQL: a transaction without a tenant setting


def test_empty_scope_sees_no_rows(runtime: Runtime, pair: SeededPair, tables: list[str]) -> None:
    with scoped_transaction(runtime.db.app, Scope()) as conn:
        for table in tables:
            assert count_rows(conn, table) == 0, table


def test_unscoped_transaction_sees_no_rows(
    runtime: Runtime, pair: SeededPair, tables: list[str]
) -> None:
    with runtime.db.app.begin() as conn:
        for table in tables:
            assert count_rows(conn, table) == 0, table


@pytest.fixture
def single_connection_engine(runtime: Runtime) -> Iterator[Engine]:
    """An application-role engine whose pool keeps a single connection."""
    engine = create_engine(runtime.db.app.url, pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


def test_pooled_connection_forgets_tenant(
    single_connection_engine: Engine, pair: SeededPair
) -> None:
    engine = single_connection_engine
    with scoped_transaction(engine, full_scope(pair.a)) as conn:
        scoped_pid = conn.execute(text("select pg_backend_pid()")).scalar_one()
        scoped_count = count_rows(conn, "tickets")
    with engine.begin() as conn:
        later_pid = conn.execute(text("select pg_backend_pid()")).scalar_one()
        setting = conn.execute(text("select current_setting('stockade.tenant_id', true)")).scalar()
        later_count = count_rows(conn, "tickets")

    assert scoped_count == 1
    assert later_pid == scoped_pid
    assert not setting
    assert later_count == 0


# SQL: role-aware policies within the own tenant


def test_viewer_cannot_write_own_tickets(runtime: Runtime, pair: SeededPair) -> None:
    viewer = Scope(tenant_id=pair.a.tenant_id, roles=("viewer",), user_id=pair.a.user_id)
    params = {"id": pair.ticket_a["id"]}
    before = owner_tickets(runtime, pair.a.tenant_id)

    with scoped_transaction(runtime.db.app, viewer) as conn:
        visible = count_rows(conn, "tickets", "id = :id", **params)
        updated = rows_touched(
            conn, "update tickets set title = 'by viewer' where id = :id", params
        )
        deleted = rows_touched(conn, "delete from tickets where id = :id", params)
    with (
        pytest.raises(ProgrammingError) as raised,
        scoped_transaction(runtime.db.app, viewer) as conn,
    ):
        conn.execute(
            text("insert into tickets (tenant_id, title) values (:t, 'by viewer')"),
            {"t": pair.a.tenant_id},
        )

    assert visible == 1
    assert updated == 0
    assert deleted == 0
    assert isinstance(raised.value.orig, psycopg.errors.InsufficientPrivilege)
    assert owner_tickets(runtime, pair.a.tenant_id) == before


def test_contributor_writes_own_tickets(runtime: Runtime, pair: SeededPair) -> None:
    contributor = Scope(tenant_id=pair.a.tenant_id, roles=("contributor",), user_id=pair.a.user_id)
    params = {"id": pair.ticket_a["id"]}

    with scoped_transaction(runtime.db.app, contributor) as conn:
        updated = rows_touched(conn, "update tickets set title = 'renamed' where id = :id", params)
        inserted = conn.execute(
            text("insert into tickets (tenant_id, title) values (:t, 'added') returning id"),
            {"t": pair.a.tenant_id},
        ).scalar_one()
        deleted = rows_touched(conn, "delete from tickets where id = :id", params)

    assert updated == 1
    assert deleted == 1
    assert [row[0] for row in owner_tickets(runtime, pair.a.tenant_id)] == [inserted]
