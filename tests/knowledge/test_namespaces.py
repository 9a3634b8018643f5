"""Per-tenant namespaces: no query vector reaches another tenant's chunks, and a small
tenant gets its full k however dense other tenants' data is near the query."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from stockade.db import Scope, scoped_transaction
from stockade.knowledge import retrieval
from stockade.knowledge.embedders import DIMENSIONS
from stockade.knowledge.service import Knowledge
from stockade.runtime import Runtime
from tests.conftest import Factory, Member
from tests.knowledge.conftest import add_indexed

SHARED = "The quarterly safety drill starts at the north stairwell. Everyone leaves by the ramp."
OWN = {
    "a": "Tenant a keeps its invoices in the blue cabinet behind reception.",
    "b": "Tenant b stores spare laptops in the locked room on the third floor.",
}


def _chunks(runtime: Runtime, tenant_id: uuid.UUID) -> list[tuple[uuid.UUID, str]]:
    """Every chunk id of a tenant with its exact vector, read as the owner."""
    with runtime.db.owner.begin() as conn:
        rows = conn.execute(
            text("select id, embedding::text from document_chunks where tenant_id = :t"),
            {"t": tenant_id},
        ).all()
    return [(row[0], row[1]) for row in rows]


def _vector(literal: str) -> list[float]:
    return [float(value) for value in literal.strip("[]").split(",")]


@pytest.fixture
def two_tenants(factory: Factory, knowledge: Knowledge) -> tuple[Member, Member]:
    a = factory.member(factory.tenant("ns-a"), roles=("contributor",))
    b = factory.member(factory.tenant("ns-b"), roles=("contributor",))
    for name, member in (("a", a), ("b", b)):
        add_indexed(knowledge, member, "drill", SHARED)
        add_indexed(knowledge, member, "own", OWN[name])
    return a, b


def test_searches_return_only_the_tenants_own_chunks(
    runtime: Runtime, knowledge: Knowledge, two_tenants: tuple[Member, Member]
) -> None:
    a, b = two_tenants
    own = {
        member.tenant_id: {chunk for chunk, _ in _chunks(runtime, member.tenant_id)}
        for member in (a, b)
    }
    assert len(own[a.tenant_id]) == len(own[b.tenant_id]) == 2

    for searcher in (a, b):
        for owner in (a, b):
            # The searcher's query is each of the owner's exact chunk vectors.
            for _, literal in _chunks(runtime, owner.tenant_id):
                with scoped_transaction(knowledge.app, searcher.scope()) as conn:
                    found = retrieval.search(
                        conn,
                        knowledge.keys,
                        searcher.tenant_id,
                        vector=_vector(literal),
                        query=None,
                        k=10,
                    )
                assert {passage.chunk_id for passage in found} == own[searcher.tenant_id]

        for words in (SHARED, OWN["a"], OWN["b"]):
            found = knowledge.search(searcher.scope(), words, 10)
            assert {passage.chunk_id for passage in found} == own[searcher.tenant_id]


def test_search_naming_another_tenant_finds_nothing(
    runtime: Runtime, knowledge: Knowledge, two_tenants: tuple[Member, Member]
) -> None:
    a, b = two_tenants
    vector = _vector(_chunks(runtime, b.tenant_id)[0][1])
    # A's transaction asking for B's partition by name: row-level security refuses it.
    with scoped_transaction(knowledge.app, a.scope()) as conn:
        found = retrieval.search(conn, knowledge.keys, b.tenant_id, vector=vector, query=None, k=10)
    assert found == []


def test_missing_tenant_setting_returns_nothing(
    runtime: Runtime, knowledge: Knowledge, two_tenants: tuple[Member, Member]
) -> None:
    a, _ = two_tenants
    vector = _chunks(runtime, a.tenant_id)[0][1]
    unscoped = Scope(tenant_id=None, roles=("contributor",))
    with scoped_transaction(runtime.db.app, unscoped) as conn:
        rows = conn.execute(
            text(
                "select id from document_chunks order by embedding <=> cast(:v as vector) limit 10"
            ),
            {"v": vector},
        ).all()
        documents = conn.execute(text("select count(*) from documents")).scalar_one()
    assert rows == []
    assert documents == 0
    with pytest.raises(ValueError, match="tenant"):
        knowledge.search(unscoped, "drill", 5)


def test_partitions_cannot_be_read_directly(
    runtime: Runtime, two_tenants: tuple[Member, Member]
) -> None:
    a, _ = two_tenants
    with runtime.db.owner.begin() as conn:
        partition = conn.execute(
            text("select stockade_chunk_partition(:t)"), {"t": a.tenant_id}
        ).scalar_one()
        indexes = (
            conn.execute(
                text("select indexdef from pg_indexes where tablename = :p"), {"p": partition}
            )
            .scalars()
            .all()
        )
    assert any("USING hnsw" in index for index in indexes)
    with (
        pytest.raises(Exception, match="permission denied"),
        scoped_transaction(runtime.db.app, a.scope()) as conn,
    ):
        conn.execute(text(f'select count(*) from "{partition}"'))  # noqa: S608 - from the database


def test_small_tenant_gets_its_full_k(
    runtime: Runtime, factory: Factory, knowledge: Knowledge
) -> None:
    small = factory.member(factory.tenant("ns-small"), roles=("contributor",))
    large = factory.member(factory.tenant("ns-large"), roles=("contributor",))
    k, small_count, large_count = 5, 6, 6_000  # the small tenant holds 0.1 % of the chunks
    for number in range(small_count):
        add_indexed(knowledge, small, f"note {number}", f"Note {number} about shelf {number * 7}.")
    # The large tenant crowds the region around the query, as a dense neighbour would.
    _insert_random_chunks(runtime, large, large_count, centre=1.0)
    query = [1.0] * DIMENSIONS

    with scoped_transaction(knowledge.app, small.scope()) as conn:
        found = retrieval.search(
            conn, knowledge.keys, small.tenant_id, vector=query, query=None, k=k
        )
    assert len(found) == k

    # The same data in one shared HNSW index, filtered by tenant, under-fills: the
    # shortfall this test guards against.
    with runtime.db.owner.begin() as conn:
        conn.execute(
            text(
                "create temporary table shared_chunks on commit drop as select tenant_id,"
                " embedding from document_chunks where tenant_id in (:s, :l)"
            ),
            {"s": small.tenant_id, "l": large.tenant_id},
        )
        conn.execute(text("create index on shared_chunks using hnsw (embedding vector_cosine_ops)"))
        conn.execute(text("set local hnsw.ef_search = 40"))
        shared = conn.execute(
            text(
                "select 1 from shared_chunks where tenant_id = :s"
                " order by embedding <=> cast(:q as vector) limit :k"
            ),
            {"s": small.tenant_id, "q": str(query), "k": k},
        ).all()
    assert len(shared) < k


def _insert_random_chunks(runtime: Runtime, member: Member, count: int, *, centre: float) -> None:
    """Chunks with random vectors around ``centre`` on every axis, under one document."""
    document_id = uuid.uuid4()
    with runtime.db.owner.begin() as conn:
        conn.execute(
            text(
                "insert into documents (id, tenant_id, key_version, title_sealed, body_sealed,"
                " media_type, byte_size, status) values (:d, :t, 1, '\\x00', '\\x00',"
                " 'text/plain', 0, 'ready')"
            ),
            {"d": document_id, "t": member.tenant_id},
        )
        conn.execute(
            text(
                "insert into document_chunks (tenant_id, id, document_id, ordinal, key_version,"
                " body_sealed, embedding, lexemes)"
                " select :t, gen_random_uuid(), :d, n, 1, '\\x00', x.v::vector, ''::tsvector"
                " from generate_series(0, :count - 1) as n, lateral (select"
                " array_agg(:c + random() - 0.5) as v from generate_series(1, :dims)"
                " where n >= 0) as x"
            ),
            {
                "t": member.tenant_id,
                "d": document_id,
                "c": centre,
                "dims": DIMENSIONS,
                "count": count,
            },
        )


def test_deleted_neighbours_do_not_shrink_results(
    runtime: Runtime, factory: Factory, knowledge: Knowledge
) -> None:
    member = factory.member(factory.tenant("ns-dead"), roles=("contributor",))
    for number in range(5):
        add_indexed(knowledge, member, f"kept {number}", f"Kept note {number} on shelf {number}.")
    partition = _partition(runtime, member.tenant_id)
    with runtime.db.owner.begin() as conn:
        # Vacuum would clean the index up; keep the dead entries in it for this test.
        conn.execute(text(f'alter table "{partition}" set (autovacuum_enabled = false)'))
    # Rows nearer the query than every kept chunk, then deleted: their index entries stay.
    _insert_random_chunks(runtime, member, 2000, centre=1.0)
    with runtime.db.owner.begin() as conn:
        # Statistics from before the delete, as between two autovacuum runs: the
        # planner picks the HNSW index.
        conn.execute(text(f'analyze "{partition}"'))
    with runtime.db.owner.begin() as conn:
        conn.execute(
            text("delete from documents where tenant_id = :t and byte_size = 0"),
            {"t": member.tenant_id},
        )

    with scoped_transaction(knowledge.app, member.scope()) as conn:
        found = retrieval.search(
            conn, knowledge.keys, member.tenant_id, vector=[1.0] * DIMENSIONS, query=None, k=5
        )
    assert sorted(passage.title for passage in found) == [f"kept {n}" for n in range(5)]


def _partition(runtime: Runtime, tenant_id: uuid.UUID) -> str:
    with runtime.db.owner.begin() as conn:
        name: str = conn.execute(
            text("select stockade_chunk_partition(:t)"), {"t": tenant_id}
        ).scalar_one()
    return name
