"""Documents and their chunks. Every query runs in a tenant-scoped transaction and also
names the tenant itself; the chunk queries name it so PostgreSQL reads only that
tenant's partition."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from stockade.keys.envelope import DataKey, DataKeys

TABLE = "documents"
CHUNKS = "document_chunks"


@dataclass(frozen=True)
class NewDocument:
    """An upload as stored before indexing: its title already redacted, its file sealed."""

    title: str
    title_pii: dict[str, str]
    upload: bytes
    media_type: str


@dataclass(frozen=True)
class Claimed:
    """A document the indexing job works on, opened with its data key."""

    key: DataKey
    title: str
    media_type: str
    # The uploaded file, until its text has been extracted and redacted.
    upload: bytes | None
    # The redacted text, once extracted; and the placeholders of title and text.
    body: str | None
    pii: dict[str, str]


@dataclass(frozen=True)
class ChunkRow:
    ordinal: int
    body: str
    embedding: str
    lexemes: str


_COLUMNS = (
    "id, key_version, title_sealed, media_type, byte_size, status, chunks_done, chunks_total,"
    " error, pii_counts, created_by, created_at, updated_at"
)


def count_documents(conn: Connection, tenant_id: uuid.UUID) -> int:
    return int(
        conn.execute(
            text("select count(*) from documents where tenant_id = :tenant_id"),
            {"tenant_id": tenant_id},
        ).scalar_one()
    )


def lock_documents(conn: Connection, tenant_id: uuid.UUID) -> None:
    """Serialise uploads of one tenant until commit, so two cannot both take the last slot."""
    conn.execute(
        text("select pg_advisory_xact_lock(hashtextextended('documents:' || :tenant_id, 0))"),
        {"tenant_id": str(tenant_id)},
    )


def insert_document(
    conn: Connection,
    key: DataKey,
    author: uuid.UUID | None,
    document: NewDocument,
) -> dict[str, Any]:
    document_id = uuid.uuid4()
    row = conn.execute(
        text(
            "insert into documents (id, tenant_id, key_version, title_sealed, upload_sealed,"  # noqa: S608
            " pii_sealed, media_type, byte_size, created_by)"
            " values (:id, :tenant_id, :version, :title, :upload, :pii,"
            " :media_type, :byte_size, :author)"
            f" returning {_COLUMNS}"
        ),
        {
            "id": document_id,
            "tenant_id": key.tenant_id,
            "version": key.version,
            "title": _seal(key, document_id, "title", document.title),
            "upload": key.seal(document.upload, table=TABLE, column="upload", row_id=document_id),
            "pii": _seal_pii(key, document_id, document.title_pii),
            "media_type": document.media_type,
            "byte_size": len(document.upload),
            "author": author,
        },
    ).one()
    return _public(row._mapping, document.title)


def list_documents(
    conn: Connection, keys: DataKeys, tenant_id: uuid.UUID, *, limit: int
) -> list[dict[str, Any]]:
    rows = conn.execute(
        text(
            f"select {_COLUMNS} from documents where tenant_id = :tenant_id"  # noqa: S608
            " order by created_at desc, id limit :limit"
        ),
        {"tenant_id": tenant_id, "limit": limit},
    ).all()
    return [_public(row._mapping, _title(conn, keys, tenant_id, row._mapping)) for row in rows]


def get_document(
    conn: Connection, keys: DataKeys, tenant_id: uuid.UUID, document_id: uuid.UUID
) -> tuple[dict[str, Any], str, dict[str, str]] | None:
    """Return the document's public fields, its redacted text and its redaction mapping."""
    row = conn.execute(
        text(
            f"select {_COLUMNS}, body_sealed, pii_sealed from documents"  # noqa: S608
            " where tenant_id = :tenant_id and id = :id"
        ),
        {"tenant_id": tenant_id, "id": document_id},
    ).first()
    if row is None:
        return None
    fields = row._mapping
    key = keys.version(conn, tenant_id, fields["key_version"])
    body_sealed = fields["body_sealed"]
    # No text before the indexing job has extracted it.
    body = _open(key, document_id, "body", body_sealed) if body_sealed else ""
    mapping = open_pii(key, document_id, fields["pii_sealed"])
    return _public(fields, _title(conn, keys, tenant_id, fields)), body, mapping


def claim_for_indexing(
    conn: Connection, keys: DataKeys, tenant_id: uuid.UUID, document_id: uuid.UUID
) -> Claimed | None:
    """Mark the document as indexing and open it, or return None if it is gone or done."""
    row = conn.execute(
        text(
            "update documents set status = 'indexing', error = null, updated_at = now()"
            " where tenant_id = :tenant_id and id = :id and status in ('queued', 'indexing')"
            " returning key_version, title_sealed, media_type, upload_sealed, body_sealed,"
            " pii_sealed"
        ),
        {"tenant_id": tenant_id, "id": document_id},
    ).first()
    if row is None:
        return None
    key = keys.version(conn, tenant_id, row.key_version)
    upload = (
        key.open(bytes(row.upload_sealed), table=TABLE, column="upload", row_id=document_id)
        if row.upload_sealed
        else None
    )
    return Claimed(
        key=key,
        title=_open(key, document_id, "title", row.title_sealed),
        media_type=row.media_type,
        upload=upload,
        body=_open(key, document_id, "body", row.body_sealed) if row.body_sealed else None,
        pii=open_pii(key, document_id, row.pii_sealed),
    )


def store_text(
    conn: Connection,
    key: DataKey,
    document_id: uuid.UUID,
    body: str,
    pii: dict[str, str],
    pii_counts: dict[str, int],
) -> bool:
    """Keep the redacted text and its placeholders, and drop the uploaded file."""
    updated = conn.execute(
        text(
            "update documents set body_sealed = :body, pii_sealed = :pii,"
            " pii_counts = cast(:counts as jsonb), upload_sealed = null, updated_at = now()"
            " where tenant_id = :tenant_id and id = :id"
        ),
        {
            "body": _seal(key, document_id, "body", body),
            "pii": _seal_pii(key, document_id, pii),
            "counts": json.dumps(pii_counts),
            "tenant_id": key.tenant_id,
            "id": document_id,
        },
    )
    return updated.rowcount == 1


def set_progress(
    conn: Connection,
    tenant_id: uuid.UUID,
    document_id: uuid.UUID,
    *,
    done: int,
    total: int,
    status: str = "indexing",
    error: str | None = None,
) -> bool:
    """Record progress; False when the document was deleted meanwhile."""
    updated = conn.execute(
        text(
            "update documents set chunks_done = :done, chunks_total = :total, status = :status,"
            " error = :error, updated_at = now() where tenant_id = :tenant_id and id = :id"
        ),
        {
            "done": done,
            "total": total,
            "status": status,
            "error": error,
            "tenant_id": tenant_id,
            "id": document_id,
        },
    )
    return updated.rowcount == 1


def insert_chunks(
    conn: Connection, key: DataKey, document_id: uuid.UUID, chunks: Sequence[ChunkRow]
) -> None:
    """Store chunks; a retried job finds its earlier chunks in place and skips them."""
    rows = []
    for chunk in chunks:
        chunk_id = uuid.uuid4()
        rows.append(
            {
                "tenant_id": key.tenant_id,
                "id": chunk_id,
                "document_id": document_id,
                "ordinal": chunk.ordinal,
                "version": key.version,
                "body": key.seal(chunk.body.encode(), table=CHUNKS, column="body", row_id=chunk_id),
                "embedding": chunk.embedding,
                "lexemes": chunk.lexemes,
            }
        )
    conn.execute(
        text(
            "insert into document_chunks (tenant_id, id, document_id, ordinal, key_version,"
            " body_sealed, embedding, lexemes) values (:tenant_id, :id, :document_id, :ordinal,"
            " :version, :body, cast(:embedding as vector), cast(:lexemes as tsvector))"
            " on conflict (tenant_id, document_id, ordinal) do nothing"
        ),
        rows,
    )


def delete_document(conn: Connection, tenant_id: uuid.UUID, document_id: uuid.UUID) -> bool:
    """Delete the document; its chunks and their vectors go with it (foreign key cascade)."""
    deleted = conn.execute(
        text("delete from documents where tenant_id = :tenant_id and id = :id"),
        {"tenant_id": tenant_id, "id": document_id},
    )
    return deleted.rowcount == 1


def open_chunk(key: DataKey, chunk_id: uuid.UUID, sealed: bytes) -> str:
    return key.open(bytes(sealed), table=CHUNKS, column="body", row_id=chunk_id).decode()


def open_title(key: DataKey, document_id: uuid.UUID, sealed: bytes) -> str:
    return _open(key, document_id, "title", sealed)


def _seal(key: DataKey, document_id: uuid.UUID, column: str, value: str) -> bytes:
    return key.seal(value.encode(), table=TABLE, column=column, row_id=document_id)


def _seal_pii(key: DataKey, document_id: uuid.UUID, pii: dict[str, str]) -> bytes | None:
    return _seal(key, document_id, "pii", json.dumps(pii)) if pii else None


def open_pii(key: DataKey, document_id: uuid.UUID, sealed: bytes | None) -> dict[str, str]:
    if not sealed:
        return {}
    mapping: dict[str, str] = json.loads(_open(key, document_id, "pii", sealed))
    return mapping


def _open(key: DataKey, document_id: uuid.UUID, column: str, sealed: bytes) -> str:
    return key.open(bytes(sealed), table=TABLE, column=column, row_id=document_id).decode()


def _title(conn: Connection, keys: DataKeys, tenant_id: uuid.UUID, fields: Any) -> str:
    key = keys.version(conn, tenant_id, fields["key_version"])
    return _open(key, fields["id"], "title", fields["title_sealed"])


def _public(fields: Any, title: str) -> dict[str, Any]:
    created_at: datetime = fields["created_at"]
    return {
        "id": fields["id"],
        "title": title,
        "media_type": fields["media_type"],
        "byte_size": fields["byte_size"],
        "status": fields["status"],
        "chunks_done": fields["chunks_done"],
        "chunks_total": fields["chunks_total"],
        "error": fields["error"],
        "redacted": fields["pii_counts"],
        "created_by": fields["created_by"],
        "created_at": created_at,
        "updated_at": fields["updated_at"],
    }
