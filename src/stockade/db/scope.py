"""The one function that sets a transaction's tenant, roles and user for RLS.

Policies read these settings through the SQL functions ``stockade_tenant()``,
``stockade_user()`` and ``stockade_can(permission)``. They are set with
``set_config(..., true)``, which lasts until the end of the transaction, so a pooled
connection never carries one request's tenant into the next.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, text

_SET_SCOPE = text(
    "select set_config('stockade.tenant_id', :tenant, true),"
    " set_config('stockade.roles', :roles, true),"
    " set_config('stockade.user_id', :user, true),"
    " set_config('stockade.login_email', :login_email, true)"
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
        connection.execute(
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
