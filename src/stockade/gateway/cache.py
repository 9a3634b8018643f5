"""The tenant-scoped answer cache that serves calls while every provider is down.

The key is SHA-256 over the tenant id, the public model name, whether retrieval was on,
and the redacted messages with whitespace collapsed. Rows also carry ``tenant_id``
under RLS, and ``lookup`` filters by it, so one tenant's entry never answers another
tenant's request. Answers are stored redacted: two prompts that differ only in, say,
an e-mail address share an entry, and each caller's own values are restored into it.
Each answer is sealed under the tenant's data key, bound to the tenant and the cache
key, so a copy of the table does not give away what the models said. Deleting a
document deletes the answers that cite it (a trigger of migration 0008).
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, text

from stockade.gateway.providers import Usage
from stockade.keys.envelope import DataKeys

# One store in this many also deletes the tenant's expired entries.
_PURGE_ONE_IN = 50

_TABLE = "gateway_cache"
_LOOKUP = text(
    "select model, key_version, answer_sealed from gateway_cache"
    " where tenant_id = :tenant and cache_key = :key and expires_at > now()"
)
_STORE = text(
    "insert into gateway_cache (tenant_id, cache_key, model, key_version, answer_sealed,"
    " document_ids, expires_at)"
    " values (:tenant, :key, :model, :version, :answer, :documents, now() + :ttl)"
    " on conflict (tenant_id, cache_key) do update"
    " set model = excluded.model, key_version = excluded.key_version,"
    " answer_sealed = excluded.answer_sealed, document_ids = excluded.document_ids,"
    " created_at = now(), expires_at = excluded.expires_at"
)
_PURGE = text("delete from gateway_cache where tenant_id = :tenant and expires_at <= now()")


@dataclass(frozen=True)
class Entry:
    """A stored answer, its placeholders not restored."""

    key: bytes
    model: str
    content: str
    finish_reason: str
    usage: Usage
    citations: tuple[Mapping[str, Any], ...]
    ttl: timedelta

    def document_ids(self) -> list[uuid.UUID]:
        """The documents the answer cites, so that deleting one forgets the answer."""
        ids = {citation.get("document_id") for citation in self.citations}
        return sorted(uuid.UUID(str(value)) for value in ids if value)

    def as_json(self) -> str:
        return json.dumps(
            {
                "content": self.content,
                "finish_reason": self.finish_reason,
                "usage": self.usage.as_json(),
                "citations": [dict(citation) for citation in self.citations],
            }
        )


def cache_key(
    tenant_id: uuid.UUID, model: str, retrieve: bool, messages: Sequence[Mapping[str, str]]
) -> bytes:
    normalized = [
        [message["role"], " ".join(message.get("content", "").split())] for message in messages
    ]
    document = json.dumps(
        [str(tenant_id), model, retrieve, normalized], separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(document.encode("utf-8")).digest()


def lookup(conn: Connection, keys: DataKeys, tenant_id: uuid.UUID, key: bytes) -> Entry | None:
    row = conn.execute(_LOOKUP, {"tenant": tenant_id, "key": key}).first()
    if row is None:
        return None
    model, version, sealed = row
    data_key = keys.version(conn, tenant_id, version)
    answer = json.loads(data_key.open(bytes(sealed), table=_TABLE, column="answer", row_id=key))
    usage = answer.get("usage") or {}
    return Entry(
        key=key,
        model=str(model),
        content=str(answer["content"]),
        finish_reason=str(answer.get("finish_reason") or "stop"),
        usage=Usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))),
        citations=tuple(answer.get("citations") or ()),
        ttl=timedelta(0),
    )


def store(conn: Connection, keys: DataKeys, tenant_id: uuid.UUID, entry: Entry) -> None:
    if entry.ttl <= timedelta(0):
        return
    data_key = keys.current(conn, tenant_id)
    sealed = data_key.seal(
        entry.as_json().encode(), table=_TABLE, column="answer", row_id=entry.key
    )
    conn.execute(
        _STORE,
        {
            "tenant": tenant_id,
            "key": entry.key,
            "model": entry.model,
            "version": data_key.version,
            "answer": sealed,
            "documents": entry.document_ids(),
            "ttl": entry.ttl,
        },
    )
    # Not a secret: the draw only spreads the purge over calls.
    if random.randrange(_PURGE_ONE_IN) == 0:  # noqa: S311
        conn.execute(_PURGE, {"tenant": tenant_id})
