"""Hybrid retrieval from one tenant's namespace: vector similarity fused with text rank.

Both halves read only the tenant's partition of ``document_chunks``, with its own HNSW
and GIN indexes, inside a transaction scoped to the tenant. So the nearest neighbours of
any query vector are that tenant's own chunks, and a small tenant gets its full ``k``.
The two rankings are fused by reciprocal rank (RRF), which needs no calibration between
cosine similarity and ``ts_rank``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Row, text

from stockade.keys.envelope import DataKeys
from stockade.knowledge import store
from stockade.knowledge.embedders import vector_literal
from stockade.knowledge.lexemes import hashed_tsquery

MAX_K = 50
# How many candidates each half contributes before fusion.
_CANDIDATES_PER_K = 4
_MIN_CANDIDATES = 40
# The usual RRF constant: damps the difference between the first few ranks.
_RRF_K = 60

_VECTOR_CANDIDATES = """
select id, document_id, ordinal, key_version, body_sealed,
       1 - (embedding <=> cast(:vector as vector)) as similarity
from document_chunks
where tenant_id = :tenant_id
order by embedding <=> cast(:vector as vector)
limit :limit
"""

_COUNT = text("select count(*) from document_chunks where tenant_id = :tenant_id")

_TEXT_CANDIDATES = """
select id, document_id, ordinal, key_version, body_sealed,
       ts_rank(lexemes, cast(:query as tsquery)) as rank
from document_chunks
where tenant_id = :tenant_id and lexemes @@ cast(:query as tsquery)
order by rank desc, document_id, ordinal
limit :limit
"""


@dataclass(frozen=True)
class Passage:
    """One retrieved chunk. ``text`` is the redacted text that was indexed."""

    document_id: uuid.UUID
    chunk_id: uuid.UUID
    ordinal: int
    title: str
    text: str
    score: float
    vector_score: float | None
    text_score: float | None
    # The document's placeholders that occur in ``title`` or ``text``, with their
    # original values, for callers allowed ``pii:reveal``. Never sent in API answers.
    pii: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass
class _Candidate:
    row: Row[Any]
    vector_rank: int | None = None
    text_rank: int | None = None
    similarity: float | None = None
    text_score: float | None = None

    def fused(self) -> float:
        score = 0.0
        for rank in (self.vector_rank, self.text_rank):
            if rank is not None:
                score += 1.0 / (_RRF_K + rank)
        return score


def search(
    conn: Connection,
    keys: DataKeys,
    tenant_id: uuid.UUID,
    *,
    vector: Sequence[float],
    query: str | None,
    k: int,
) -> list[Passage]:
    """Return the tenant's best ``k`` chunks for ``vector`` and, if given, ``query``'s words.

    ``conn`` is a transaction scoped to ``tenant_id``. Without ``query`` only the vector
    ranking counts.
    """
    limit = max(_MIN_CANDIDATES, k * _CANDIDATES_PER_K)
    # HNSW returns at most ef_search rows; ask for as many as the candidate list needs.
    conn.execute(
        text("select set_config('hnsw.ef_search', :ef, true)"), {"ef": str(min(limit, 1000))}
    )
    candidates: dict[uuid.UUID, _Candidate] = {}

    rows = _vector_candidates(conn, tenant_id, vector, limit)
    for rank, row in enumerate(rows, start=1):
        candidate = candidates.setdefault(row.id, _Candidate(row))
        candidate.vector_rank, candidate.similarity = rank, float(row.similarity)

    tsquery = hashed_tsquery(conn, keys.current(conn, tenant_id), query) if query else None
    if tsquery is not None:
        matches = conn.execute(
            text(_TEXT_CANDIDATES), {"query": tsquery, "tenant_id": tenant_id, "limit": limit}
        ).all()
        for rank, row in enumerate(matches, start=1):
            candidate = candidates.setdefault(row.id, _Candidate(row))
            candidate.text_rank, candidate.text_score = rank, float(row.rank)

    best = sorted(candidates.values(), key=lambda item: item.fused(), reverse=True)[:k]
    return _passages(conn, keys, tenant_id, best)


def _vector_candidates(
    conn: Connection, tenant_id: uuid.UUID, vector: Sequence[float], limit: int
) -> list[Row[Any]]:
    parameters = {"vector": vector_literal(vector), "tenant_id": tenant_id, "limit": limit}
    rows = conn.execute(text(_VECTOR_CANDIDATES), parameters).all()
    if len(rows) == limit:
        return list(rows)

    # An HNSW scan yields at most ef_search entries, and entries of deleted rows that
    # vacuum has not yet removed (or a crowd of equal vectors) take some of them: fewer
    # rows than asked for. When the tenant has more, rank them exactly instead.
    # NOTE: pgvector 0.8's iterative index scans (hnsw.iterative_scan) would keep this
    # on the index; the embedded server ships pgvector 0.6.
    available = conn.execute(_COUNT, {"tenant_id": tenant_id}).scalar_one()
    if available <= len(rows):
        return list(rows)
    conn.execute(text("select set_config('enable_indexscan', 'off', true)"))
    exact = conn.execute(text(_VECTOR_CANDIDATES), parameters).all()
    conn.execute(text("select set_config('enable_indexscan', 'on', true)"))
    return list(exact)


def _passages(
    conn: Connection, keys: DataKeys, tenant_id: uuid.UUID, best: list[_Candidate]
) -> list[Passage]:
    documents = _documents(conn, keys, tenant_id, {item.row.document_id for item in best})
    passages = []
    for item in best:
        row = item.row
        key = keys.version(conn, tenant_id, row.key_version)
        title, pii = documents.get(row.document_id, ("", {}))
        body = store.open_chunk(key, row.id, row.body_sealed)
        passages.append(
            Passage(
                document_id=row.document_id,
                chunk_id=row.id,
                ordinal=row.ordinal,
                title=title,
                text=body,
                score=round(item.fused(), 6),
                vector_score=item.similarity,
                text_score=item.text_score,
                pii={
                    placeholder: value
                    for placeholder, value in pii.items()
                    if placeholder in body or placeholder in title
                },
            )
        )
    return passages


def _documents(
    conn: Connection, keys: DataKeys, tenant_id: uuid.UUID, document_ids: set[uuid.UUID]
) -> dict[uuid.UUID, tuple[str, dict[str, str]]]:
    """Open each document's title and placeholder mapping."""
    if not document_ids:
        return {}
    rows = conn.execute(
        text(
            "select id, key_version, title_sealed, pii_sealed from documents"
            " where tenant_id = :tenant_id and id = any(:ids)"
        ),
        {"tenant_id": tenant_id, "ids": list(document_ids)},
    ).all()
    found = {}
    for row in rows:
        key = keys.version(conn, tenant_id, row.key_version)
        found[row.id] = (
            store.open_title(key, row.id, row.title_sealed),
            store.open_pii(key, row.id, row.pii_sealed),
        )
    return found
