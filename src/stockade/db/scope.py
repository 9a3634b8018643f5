"""The one function that sets a transaction's tenant, roles and user for RLS.

Policies read these settings through the SQL functions ``stockade_tenant()``,
``stockade_user()`` and ``stockade_can(permission)``. They are set with
``set_config(..., true)``, which lasts until the end of the transaction, so a pooled
connection never carries one request's tenant into the next.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

# psycopg placeholders, because execute_on_driver passes the statement to psycopg as is.
_SET_SCOPE = (
    "select set_config('stockade.tenant_id', %(tenant)s, true),"
    " set_config('stockade.roles', %(roles)s, true),"
    " set_config('stockade.user_id', %(user)s, true),"
    " set_config('stockade.login_email', %(login_email)s, true)"
)


@dataclass(frozen=True)
class Scope:
    """The tenant, roles and user a transaction acts for.

    An empty scope matches no tenant-owned row.
    """

    tenant_id: uuid.UUID | None = None
    roles: tuple[str, ...] = ()
    user_id: uuid.UUID | None = None
    login_email: str | None = None
    # Called inside the transaction once the settings are in place, e.g. to confirm that
    # the caller's token has not been revoked; it raises to abort the transaction.
    check: Callable[[Connection], None] | None = field(default=None, compare=False)


@contextmanager
def scoped_transaction(engine: Engine, scope: Scope) -> Iterator[Connection]:
    """Open a transaction whose RLS settings are ``scope``; commit on success."""
    with engine.begin() as connection:
        execute_on_driver(
            connection,
            _SET_SCOPE,
            {
                "tenant": str(scope.tenant_id) if scope.tenant_id else "",
                "roles": ",".join(scope.roles),
                "user": str(scope.user_id) if scope.user_id else "",
                "login_email": (scope.login_email or "").lower(),
            },
        )
        if scope.check is not None:
            scope.check(connection)
        yield connection


def execute_on_driver(connection: Connection, statement: str, params: Mapping[str, Any]) -> int:
    """Execute ``statement`` on the psycopg connection under ``connection``.

    Returns the rowcount. This is for statements on hot paths, because it skips
    SQLAlchemy's compilation, result and event handling: about 25 µs of client CPU per
    statement, an estimate from the reservations benchmark in docs/benchmarks.md.
    ``statement`` uses psycopg's ``%(name)s`` placeholders, and ``params`` are always
    sent separately, never formatted in. It runs in ``connection``'s transaction, and
    psycopg prepares it on the server after a few executions (``prepare_threshold``). A
    driver error is raised as the SQLAlchemy error that ``Connection.execute`` would
    raise, and a connection that the error closed is invalidated, so the pool does not
    hand it out again.
    """
    driver = connection.connection.driver_connection
    if not isinstance(driver, psycopg.Connection):
        raise TypeError(f"expected a psycopg connection, not {type(driver).__name__}")
    try:
        with driver.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.rowcount
    except psycopg.Error as exc:
        invalidated = driver.closed
        if invalidated:
            connection.invalidate(exc)
        raise DBAPIError.instance(
            statement,
            dict(params),
            exc,
            psycopg.Error,
            hide_parameters=True,
            connection_invalidated=invalidated,
        ) from exc
