"""The indexing job on procrastinate, deferred in the transaction that stores a document."""

from __future__ import annotations

import uuid

import procrastinate
from sqlalchemy import Connection

from stockade.knowledge.service import Knowledge

QUEUE = "knowledge"
INDEX_TASK = "knowledge.index_document"

# Defers on the caller's connection, inside its transaction; never opens a pool.
_DEFERRER = procrastinate.App(connector=procrastinate.SyncPsycopgConnector())


def defer_indexing(
    conn: Connection, tenant_id: uuid.UUID, document_id: uuid.UUID, roles: list[str]
) -> None:
    """Queue the indexing of ``document_id`` as part of ``conn``'s transaction.

    ``roles`` are the uploader's: the job acts for them under row-level security.
    """
    deferrer = _DEFERRER.configure_task(
        INDEX_TASK,
        queue=QUEUE,
        queueing_lock=f"index:{document_id}",
        connection=conn.connection.driver_connection,
    )
    roles_arg: list[procrastinate.types.JSONValue] = list(roles)
    deferrer.defer(tenant_id=str(tenant_id), document_id=str(document_id), roles=roles_arg)


def register(app: procrastinate.App) -> None:
    """Add the knowledge jobs to a worker's procrastinate app."""
    app.task(name=INDEX_TASK, queue=QUEUE, pass_context=True)(_index_job)


def _index_job(
    job_context: procrastinate.JobContext, tenant_id: str, document_id: str, roles: list[str]
) -> None:
    knowledge: Knowledge = job_context.additional_context["knowledge"]
    knowledge.index(uuid.UUID(tenant_id), uuid.UUID(document_id), roles)
