"""execute_on_driver: runs in the scoped transaction, under RLS, with SQLAlchemy's errors."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError

from stockade.billing.ledger import Window, reserve
from stockade.db import Scope, scoped_transaction
from stockade.db.scope import execute_on_driver
from stockade.runtime import Runtime
from tests.conftest import Factory

_BUMP_COUNTERS = "update usage_counters set reserved = reserved where tenant_id = %(tenant)s"


def test_driver_statement_sees_scope(runtime: Runtime, factory: Factory) -> None:
    tenant_id, _ = factory.tenant("driver")
    other_id, _ = factory.tenant("driver")
    reserve(runtime.db.app, tenant_id, "llm_call", 1, limit=5, window=Window.DAY)

    with scoped_transaction(runtime.db.app, Scope(tenant_id=tenant_id)) as conn:
        own = execute_on_driver(conn, _BUMP_COUNTERS, {"tenant": tenant_id})
        seen = conn.execute(text("select current_setting('stockade.tenant_id')")).scalar_one()
    with scoped_transaction(runtime.db.app, Scope(tenant_id=other_id)) as conn:
        foreign = execute_on_driver(conn, _BUMP_COUNTERS, {"tenant": tenant_id})

    assert own == 1
    assert seen == str(tenant_id)
    assert foreign == 0


def test_driver_error_raised_as_sqlalchemy(runtime: Runtime, factory: Factory) -> None:
    tenant_id, _ = factory.tenant("driver")

    with (
        pytest.raises(ProgrammingError) as denied,
        scoped_transaction(runtime.db.app, Scope(tenant_id=tenant_id)) as conn,
    ):
        execute_on_driver(
            conn, "delete from usage_ledger where tenant_id = %(tenant)s", {"tenant": tenant_id}
        )

    assert isinstance(denied.value.orig, psycopg.errors.InsufficientPrivilege)
    assert str(tenant_id) not in str(denied.value)


def test_driver_connection_reusable_after_error(runtime: Runtime, factory: Factory) -> None:
    tenant_id, _ = factory.tenant("driver")
    with (
        pytest.raises(ProgrammingError),
        scoped_transaction(runtime.db.app, Scope(tenant_id=tenant_id)) as conn,
    ):
        execute_on_driver(conn, "truncate usage_ledger", {})

    with scoped_transaction(runtime.db.app, Scope(tenant_id=tenant_id)) as conn:
        tenant = conn.execute(text("select stockade_tenant()")).scalar_one()

    assert tenant == tenant_id
