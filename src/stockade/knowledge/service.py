"""The knowledge base of each tenant: add documents, index them, search them.

``Knowledge`` is built once per process. The routes and the gateway call it with the
caller's ``Scope``. The indexing job calls it with the scope of the member who uploaded
the document, so row-level security applies to background work as it does to requests.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from psycopg.errors import ForeignKeyViolation
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from stockade.audit.trail import record_event
from stockade.billing.plans import PlanCatalog, tenant_plan
from stockade.db import Scope, scoped_transaction
from stockade.errors import Problem
from stockade.keys.envelope import DataKeys
from stockade.knowledge import store
from stockade.knowledge.chunking import chunk_text
from stockade.knowledge.embedders import Embedder, EmbedderError, embedder_from, vector_literal
from stockade.knowledge.extract import UnsupportedDocument, check_readable, extract_text
from stockade.knowledge.lexemes import hashed_tsvectors
from stockade.knowledge.retrieval import MAX_K, Passage, search
from stockade.runtime import Runtime
from stockade.safety.placeholders import parse_placeholder
from stockade.safety.redaction import Redactor

log = structlog.get_logger(__name__)

# Chunks embedded and stored per transaction; progress advances by this much.
BATCH = 32


class DocumentLimitReached(Problem):
    status = 402
    code = "document-limit-reached"
    title = "Document limit reached"


class DocumentTooLarge(Problem):
    status = 413
    code = "document-too-large"
    title = "Document too large"


@dataclass(frozen=True)
class Upload:
    title: str
    data: bytes
    media_type: str


class Knowledge:
    def __init__(
        self,
        app: Engine,
        catalog: PlanCatalog,
        keys: DataKeys,
        embedder: Embedder,
        redactor: Redactor,
    ) -> None:
        self.app = app
        self.catalog = catalog
        self.keys = keys
        self.embedder = embedder
        self.redactor = redactor

    @classmethod
    def from_runtime(cls, runtime: Runtime) -> Knowledge:
        return cls(
            app=runtime.db.app,
            catalog=runtime.plans,
            keys=DataKeys(runtime.keystore),
            embedder=embedder_from(runtime.settings, runtime.keystore),
            redactor=Redactor(),
        )

    # Adding documents

    def upload_limit(self, scope: Scope) -> int:
        """Return the largest document, in bytes, that the tenant's plan accepts."""
        assert scope.tenant_id is not None
        with scoped_transaction(self.app, scope) as conn:
            return tenant_plan(conn, self.catalog, scope.tenant_id).document_bytes

    def add(self, scope: Scope, upload: Upload, *, defer: Any) -> dict[str, Any]:
        """Seal and store an upload, and defer its indexing in the same transaction.

        The title is redacted here. The text is extracted and redacted by the indexing
        job, because redacting a large file takes seconds. ``defer(conn, tenant_id,
        document_id, roles)`` queues that job.
        """
        tenant_id, author = _tenant_of(scope), scope.user_id
        check_readable(upload.data, upload.media_type)
        title = self.redactor.redact(upload.title)

        with scoped_transaction(self.app, scope) as conn:
            plan = tenant_plan(conn, self.catalog, tenant_id)
            if len(upload.data) > plan.document_bytes:
                raise DocumentTooLarge(
                    f"the document has {len(upload.data)} bytes; the {plan.name} plan accepts"
                    f" up to {plan.document_bytes}",
                    limit=plan.document_bytes,
                )
            store.lock_documents(conn, tenant_id)
            if store.count_documents(conn, tenant_id) >= plan.documents:
                raise DocumentLimitReached(
                    f"the {plan.name} plan keeps up to {plan.documents} documents;"
                    " delete one or upgrade",
                    limit=plan.documents,
                )
            document = store.insert_document(
                conn,
                self.keys.current(conn, tenant_id),
                author,
                store.NewDocument(
                    title=title.text,
                    title_pii=title.mapping,
                    upload=upload.data,
                    media_type=upload.media_type,
                ),
            )
            defer(conn, tenant_id, document["id"], list(scope.roles))
            record_event(
                conn,
                tenant_id=tenant_id,
                action="document:created",
                actor_user_id=author,
                subject=str(document["id"]),
                data={"bytes": len(upload.data), "media_type": upload.media_type},
            )
        return document

    # Indexing (the background job)

    def index(self, tenant_id: uuid.UUID, document_id: uuid.UUID, roles: Sequence[str]) -> None:
        """Chunk, embed and store a document's chunks, recording progress as it goes."""
        scope = Scope(tenant_id=tenant_id, roles=tuple(roles))
        with scoped_transaction(self.app, scope) as conn:
            claimed = store.claim_for_indexing(conn, self.keys, tenant_id, document_id)
        if claimed is None:
            log.info(
                "document_index_skipped", tenant_id=str(tenant_id), document_id=str(document_id)
            )
            return
        key, title = claimed.key, claimed.title
        done, chunks = 0, []
        try:
            body = claimed.body
            if body is None:
                body = self._redact_upload(scope, document_id, claimed)
            chunks = chunk_text(body)
            for start in range(0, len(chunks), BATCH):
                batch = chunks[start : start + BATCH]
                vectors = self.embedder.embed([f"{title}\n\n{chunk}" for chunk in batch])
                with scoped_transaction(self.app, scope) as conn:
                    lexemes = hashed_tsvectors(conn, key, batch)
                    rows = [
                        store.ChunkRow(start + offset, chunk, vector_literal(vector), lexeme)
                        for offset, (chunk, vector, lexeme) in enumerate(
                            zip(batch, vectors, lexemes, strict=True)
                        )
                    ]
                    store.insert_chunks(conn, key, document_id, rows)
                    done = start + len(batch)
                    if not store.set_progress(
                        conn, tenant_id, document_id, done=done, total=len(chunks)
                    ):
                        return
        except Exception as exc:
            if _deleted_meanwhile(exc):
                log.info("document_deleted_while_indexing", document_id=str(document_id))
                return
            # The reason is shown to the tenant, so only messages written for it (a file
            # that cannot be read, an embedder's failure) are passed on.
            reason = str(exc) if isinstance(exc, UnsupportedDocument | EmbedderError) else None
            self._fail(scope, document_id, done, len(chunks), reason or "indexing failed")
            if isinstance(exc, UnsupportedDocument):
                log.info("document_unreadable", document_id=str(document_id), reason=reason)
                return
            raise

        with scoped_transaction(self.app, scope) as conn:
            store.set_progress(
                conn, tenant_id, document_id, done=len(chunks), total=len(chunks), status="ready"
            )
        log.info(
            "document_indexed",
            tenant_id=str(tenant_id),
            document_id=str(document_id),
            chunks=len(chunks),
        )

    def _redact_upload(self, scope: Scope, document_id: uuid.UUID, claimed: store.Claimed) -> str:
        """Extract the upload's text, redact it, and keep it in place of the file."""
        assert claimed.upload is not None
        text = extract_text(claimed.upload, claimed.media_type)
        body = self.redactor.redact(text, start=claimed.pii)
        # Distinct values of each type in the title and the text together.
        counts = Counter(
            parsed[0] for parsed in map(parse_placeholder, body.mapping) if parsed is not None
        )
        with scoped_transaction(self.app, scope) as conn:
            store.store_text(conn, claimed.key, document_id, body.text, body.mapping, dict(counts))
        return body.text

    def _fail(
        self, scope: Scope, document_id: uuid.UUID, done: int, total: int, reason: str
    ) -> None:
        tenant_id = _tenant_of(scope)
        with scoped_transaction(self.app, scope) as conn:
            store.set_progress(
                conn, tenant_id, document_id, done=done, total=total, status="failed", error=reason
            )

    # Searching

    def search(self, scope: Scope, query: str, k: int) -> list[Passage]:
        """Return the tenant's best ``k`` chunks for ``query``, by vector and by text rank."""
        tenant_id = _tenant_of(scope)
        vector = self.embedder.embed([query])[0]
        with scoped_transaction(self.app, scope) as conn:
            return search(conn, self.keys, tenant_id, vector=vector, query=query, k=min(k, MAX_K))


def _deleted_meanwhile(exc: Exception) -> bool:
    """Tell whether storing chunks failed because their document was deleted meanwhile."""
    return isinstance(exc, IntegrityError) and isinstance(exc.orig, ForeignKeyViolation)


def _tenant_of(scope: Scope) -> uuid.UUID:
    if scope.tenant_id is None:
        raise ValueError("knowledge calls need a scope with a tenant")
    return scope.tenant_id
