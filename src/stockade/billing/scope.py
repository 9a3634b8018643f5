"""A transaction for one tenant: the caller's, or a new one."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine

from stockade.db import Scope, scoped_transaction


@contextmanager
def tenant_transaction(target: Engine | Connection, tenant_id: uuid.UUID) -> Iterator[Connection]:
    """Open a transaction scoped to ``tenant_id`` on an Engine, or use a Connection as is.

    A Connection must already be in a transaction scoped to ``tenant_id``; the caller
    commits it. A new transaction has the tenant and no roles, and commits on success.
    """
    if isinstance(target, Engine):
        with scoped_transaction(target, Scope(tenant_id=tenant_id)) as conn:
            yield conn
    else:
        yield target
