"""``stockade audit verify``: an operator checks a tenant's hash chain from the shell."""

from __future__ import annotations

import uuid

from sqlalchemy import text

from stockade.audit.trail import record_event
from stockade.config import Settings
from stockade.db import Scope, scoped_transaction
from stockade.runtime import Runtime
from tests.cli.test_cli import run
from tests.conftest import Factory


def record_two(runtime: Runtime, tenant_id: uuid.UUID) -> None:
    with scoped_transaction(runtime.db.app, Scope(tenant_id=tenant_id)) as conn:
        record_event(conn, tenant_id=tenant_id, action="tickets:exported")
        record_event(conn, tenant_id=tenant_id, action="tickets:exported")


def test_intact_chain_exits_zero(settings: Settings, runtime: Runtime, factory: Factory) -> None:
    tenant_id, name = factory.tenant("cli-audit")
    record_two(runtime, tenant_id)

    result = run(settings, "audit", "verify", "--tenant", name)

    assert result.returncode == 0, result.stderr
    assert f"the audit chain of tenant {name} is intact" in result.stdout


def test_tampered_chain_exits_one(settings: Settings, runtime: Runtime, factory: Factory) -> None:
    tenant_id, name = factory.tenant("cli-audit")
    record_two(runtime, tenant_id)
    with runtime.db.owner.begin() as conn:
        conn.execute(
            text(
                "update audit_events set action = 'tickets:deleted'"
                " where tenant_id = :t and seq = 1"
            ),
            {"t": tenant_id},
        )

    result = run(settings, "audit", "verify", "--tenant", name)

    assert result.returncode == 1
    assert "event 1: hash does not match the event's content" in result.stdout
    assert "broken in 1 place(s)" in result.stderr


def test_unknown_tenant_is_one_line(settings: Settings, runtime: Runtime) -> None:
    result = run(settings, "audit", "verify", "--tenant", "no-such-tenant")

    assert result.returncode == 2
    assert "tenant 'no-such-tenant' not found" in result.stderr
