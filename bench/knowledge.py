"""Measure vector search on per-tenant partitions against one shared index, and indexing.

**Search.** The script loads the same synthetic chunks into two tables of a database of
its own, ``knowledge_bench``, on the embedded PostgreSQL:

- ``bench_chunks``, a copy of the shape of ``document_chunks`` (migration 0007): list
  partitioned by ``tenant_id``, one partition per tenant, each partition with its own
  HNSW index (``vector_cosine_ops``, pgvector's default ``m`` and ``ef_construction``).
  The columns are those of ``document_chunks`` without the sealed body, the lexemes and
  the key version, so neither table carries a GIN index, row-level security or foreign
  keys.
- ``bench_chunks_shared``, the same columns and rows in one unpartitioned table, with
  one HNSW index over every tenant's rows.

Both tables get their primary key ``(tenant_id, id)`` and their HNSW indexes after the
rows are loaded. Each query has the shape of the vector half of
``stockade.knowledge.retrieval``: ``where tenant_id = ... order by embedding <=> ...
limit k``, run after ``set_config('hnsw.ef_search', ...)`` with the value that
retrieval sets for ``k``. Every query runs on four variants, in a new random order for
each query:

- **partitions, planner's choice**: ``bench_chunks``; PostgreSQL prunes to the
  tenant's partition and picks its plan, which is what retrieval gets.
- **partitions, HNSW scan**: the same with ``enable_sort`` off for the transaction, so
  the partition's HNSW index is used even where a sequential scan would be cheaper.
- **shared table, HNSW scan + tenant filter**: ``bench_chunks_shared`` with
  ``enable_sort`` off, so the planner takes the HNSW scan and filters its candidates by
  tenant. pgvector 0.6 returns at most ``ef_search`` candidates per scan, so the filter
  can leave fewer than ``k`` rows.
- **shared table, planner's choice**: the same table and query with default settings.

The report names the plans of a sample of queries, from ``EXPLAIN``. Recall is measured
for a sample of the queries against an exact search (a sequential scan of the tenant's
partition), which is the same for all variants because the rows are the same.

The vectors are unit vectors around topic centres: ``--topics`` random centres shared
by all tenants, each tenant writing about ``--topics-per-tenant`` of them. A query is a
new vector around one of its tenant's topics. Everything comes from numpy generators
seeded with ``--seed``, and the rows reach PostgreSQL by binary COPY.

**Indexing.** ``Knowledge.add`` stores ``--documents`` synthetic text documents for one
tenant on the ``enterprise`` plan, then ``Knowledge.index`` indexes each in turn, with
the default hashing embedder. The report gives chunks per second and the share of the
time spent in the embedder; the rest is chunking, sealing, the keyed lexeme hashes and
the inserts, with their HNSW and GIN index updates.

Usage: ``make bench`` (small sizes) or, for the figures in docs/benchmarks.md,
``.venv/bin/python bench/knowledge.py --tenants 1000 --chunks-per-tenant 1000``.
The runtime and its embedded PostgreSQL live in a new temporary folder that the script
deletes at the end.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from sqlalchemy import text
from tickets_auth import git_commit, percentile, positive_int, stop_embedded_server

from stockade.audit.logs import configure_logging
from stockade.config import load_settings
from stockade.db import Scope
from stockade.db.embedded import start_embedded_server
from stockade.identity import admin
from stockade.keys.envelope import DataKeys
from stockade.knowledge import service, store
from stockade.knowledge.embedders import Embedder, HashingEmbedder, vector_literal
from stockade.knowledge.retrieval import _CANDIDATES_PER_K, _MIN_CANDIDATES
from stockade.knowledge.service import Knowledge, Upload
from stockade.runtime import Runtime, open_runtime
from stockade.safety.redaction import Redactor

RESULTS_FILE = Path(__file__).resolve().parent / "results" / "knowledge.md"
DATABASE = "knowledge_bench"
PARTITIONED = "bench_chunks"
SHARED = "bench_chunks_shared"
CHUNKS_PER_DOCUMENT = 10
# A topic centre is a unit vector and the noise has about this length, so two chunks of
# one topic have a cosine similarity of about 0.5 and chunks of different topics about 0.
NOISE = 1.0
# Rows per COPY; each row is about 1.6 kB at 384 dimensions.
COPY_BATCH = 20_000
# For the one shared HNSW build. pgvector builds the graph in maintenance_work_mem and
# finishes on a much slower path once the graph outgrows it. The finished index of 1M
# vectors of 384 dimensions took about 2 GB on disk here.
SHARED_BUILD_MEMORY = "6GB"
# The PGCOPY binary header (signature, flags, header extension length) and trailer.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_COPY_TRAILER = b"\xff\xff"
_COPY_COLUMNS = "tenant_id, id, document_id, ordinal, embedding"


# Synthetic data


@dataclass(frozen=True)
class Corpus:
    """Topic centres, each tenant's topics and ids; chunk vectors are drawn in batches."""

    tenant_ids: list[uuid.UUID]
    chunks_per_tenant: int
    centres: np.ndarray
    tenant_topics: np.ndarray
    seed: int

    @property
    def dimensions(self) -> int:
        return int(self.centres.shape[1])


def make_corpus(args: argparse.Namespace) -> Corpus:
    rng = np.random.default_rng(args.seed)
    centres = _unit_rows(rng.standard_normal((args.topics, args.dimensions), dtype=np.float32))
    tenant_topics = rng.integers(0, args.topics, size=(args.tenants, args.topics_per_tenant))
    tenant_ids = [uuid.UUID(bytes=rng.bytes(16)) for _ in range(args.tenants)]
    return Corpus(tenant_ids, args.chunks_per_tenant, centres, tenant_topics, args.seed)


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / norms).astype(np.float32)


def _around_topics(rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    """Draw one unit vector near each row of ``centres``."""
    noise = rng.standard_normal(centres.shape, dtype=np.float32)
    return _unit_rows(centres + noise * (NOISE / np.sqrt(centres.shape[1])))


def _row_dtype(dimensions: int) -> np.dtype[Any]:
    """Return one row of binary COPY: field count, then each field's length and value.

    pgvector's binary form is the dimension count, an unused int16 and the floats.
    """
    return np.dtype(
        [
            ("fields", ">i2"),
            ("tenant_length", ">i4"),
            ("tenant_id", "V16"),
            ("id_length", ">i4"),
            ("id", "V16"),
            ("document_length", ">i4"),
            ("document_id", "V16"),
            ("ordinal_length", ">i4"),
            ("ordinal", ">i4"),
            ("embedding_length", ">i4"),
            ("dimensions", ">i2"),
            ("unused", ">i2"),
            ("embedding", ">f4", (dimensions,)),
        ]
    )


def chunk_batches(corpus: Corpus) -> Iterator[np.ndarray]:
    """Yield the corpus as binary COPY rows, a few tenants at a time, ordered by tenant."""
    rng = np.random.default_rng(corpus.seed + 1)
    per_tenant = corpus.chunks_per_tenant
    tenants_per_batch = max(1, COPY_BATCH // per_tenant)
    dtype = _row_dtype(corpus.dimensions)
    for first in range(0, len(corpus.tenant_ids), tenants_per_batch):
        tenants = np.arange(first, min(first + tenants_per_batch, len(corpus.tenant_ids)))
        owner = np.repeat(tenants, per_tenant)
        picks = rng.integers(0, corpus.tenant_topics.shape[1], size=owner.size)
        topics = corpus.tenant_topics[owner, picks]

        rows = np.zeros(owner.size, dtype=dtype)
        rows["fields"] = 5
        rows["tenant_length"] = rows["id_length"] = rows["document_length"] = 16
        rows["ordinal_length"] = 4
        rows["embedding_length"] = 4 + 4 * corpus.dimensions
        rows["dimensions"] = corpus.dimensions
        ids = b"".join(corpus.tenant_ids[index].bytes for index in tenants)
        rows["tenant_id"] = np.frombuffer(ids, dtype="V16").repeat(per_tenant)
        rows["id"] = np.frombuffer(rng.bytes(16 * owner.size), dtype="V16")
        documents = -(-owner.size // CHUNKS_PER_DOCUMENT)
        document_ids = np.frombuffer(rng.bytes(16 * documents), dtype="V16")
        rows["document_id"] = document_ids.repeat(CHUNKS_PER_DOCUMENT)[: owner.size]
        rows["ordinal"] = np.arange(owner.size) % CHUNKS_PER_DOCUMENT
        rows["embedding"] = _around_topics(rng, corpus.centres[topics])
        yield rows


def interleaved(rows: np.ndarray, chunks_per_tenant: int) -> np.ndarray:
    """Reorder a batch round-robin over its tenants, as concurrent uploads would write it."""
    tenants = rows.size // chunks_per_tenant
    return rows.reshape(tenants, chunks_per_tenant).T.reshape(-1)


@dataclass(frozen=True)
class Query:
    tenant_id: uuid.UUID
    vector: str


def make_queries(corpus: Corpus, count: int) -> list[Query]:
    rng = np.random.default_rng(corpus.seed + 2)
    owners = rng.integers(0, len(corpus.tenant_ids), size=count)
    picks = rng.integers(0, corpus.tenant_topics.shape[1], size=count)
    vectors = _around_topics(rng, corpus.centres[corpus.tenant_topics[owners, picks]])
    return [
        Query(corpus.tenant_ids[owner], vector_literal(vector.tolist()))
        for owner, vector in zip(owners, vectors, strict=True)
    ]


# Loading and index builds


def create_tables(conn: psycopg.Connection[Any], corpus: Corpus) -> None:
    # NOTE: without the sealed body (about 0.8 kB a chunk) and the lexemes, a heap page
    # fits 5 rows of 384 dimensions here and fewer in document_chunks, so the heap is
    # smaller than the real one. A filler bytea column would make the two match.
    columns = sql.SQL(
        "(tenant_id uuid not null, id uuid not null, document_id uuid not null,"
        " ordinal integer not null, embedding vector({}) not null)"
    ).format(sql.Literal(corpus.dimensions))
    with conn.transaction():
        conn.execute("create extension if not exists vector")
        conn.execute(
            sql.SQL("create table {} {} partition by list (tenant_id)").format(
                sql.Identifier(PARTITIONED), columns
            )
        )
        conn.execute(sql.SQL("create table {} {}").format(sql.Identifier(SHARED), columns))
    # One transaction per hundred partitions keeps the lock table small.
    for first in range(0, len(corpus.tenant_ids), 100):
        with conn.transaction():
            for number in range(first, min(first + 100, len(corpus.tenant_ids))):
                conn.execute(
                    sql.SQL("create table {} partition of {} for values in ({})").format(
                        sql.Identifier(partition_name(number)),
                        sql.Identifier(PARTITIONED),
                        sql.Literal(str(corpus.tenant_ids[number])),
                    )
                )


def partition_name(number: int) -> str:
    return f"{PARTITIONED}_{number:05d}"


def load_rows(
    partitioned: psycopg.Connection[Any], shared: psycopg.Connection[Any], corpus: Corpus
) -> None:
    """COPY each batch into both tables: by tenant into the partitions, interleaved else."""
    copy_into_partitioned = sql.SQL("copy {} ({}) from stdin (format binary)").format(
        sql.Identifier(PARTITIONED), sql.SQL(_COPY_COLUMNS)
    )
    copy_into_shared = sql.SQL("copy {} ({}) from stdin (format binary)").format(
        sql.Identifier(SHARED), sql.SQL(_COPY_COLUMNS)
    )
    for rows in chunk_batches(corpus):
        _copy(partitioned, copy_into_partitioned, rows)
        _copy(shared, copy_into_shared, interleaved(rows, corpus.chunks_per_tenant))


def _copy(conn: psycopg.Connection[Any], statement: sql.Composed, rows: np.ndarray) -> None:
    with conn.transaction(), conn.cursor().copy(statement) as copy:
        copy.write(_COPY_HEADER)
        copy.write(rows.tobytes())
        copy.write(_COPY_TRAILER)


def add_primary_keys(conn: psycopg.Connection[Any]) -> None:
    for table in (PARTITIONED, SHARED):
        with conn.transaction():
            conn.execute(
                sql.SQL("alter table {} add primary key (tenant_id, id)").format(
                    sql.Identifier(table)
                )
            )
    conn.execute("analyze")


def build_partition_indexes(url: str, tenants: int) -> None:
    """Create the parent's HNSW index, then each partition's, on two connections at once.

    Building and attaching each partition's index gives the same indexes that
    ``create index`` on the parent makes, without one transaction that locks every
    partition. Two connections keep both cores busy, as the shared build's parallel
    worker does.
    """
    parent_index = f"{PARTITIONED}_embedding"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("create index {} on only {} using hnsw (embedding vector_cosine_ops)").format(
                sql.Identifier(parent_index), sql.Identifier(PARTITIONED)
            )
        )

    def build(numbers: range) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("set max_parallel_maintenance_workers = 0")
            for number in numbers:
                index = f"{partition_name(number)}_embedding"
                conn.execute(
                    sql.SQL(
                        "create index {} on {} using hnsw (embedding vector_cosine_ops)"
                    ).format(sql.Identifier(index), sql.Identifier(partition_name(number)))
                )
                conn.execute(
                    sql.SQL("alter index {} attach partition {}").format(
                        sql.Identifier(parent_index), sql.Identifier(index)
                    )
                )

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(build, range(start, tenants, 2)) for start in (0, 1)]
        for future in futures:
            future.result()


def build_shared_index(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("set maintenance_work_mem = {}").format(sql.Literal(SHARED_BUILD_MEMORY))
        )
        # The leader and one worker: one process per core of a two-core machine.
        conn.execute("set max_parallel_maintenance_workers = 1")
        conn.execute(
            sql.SQL("create index {} on {} using hnsw (embedding vector_cosine_ops)").format(
                sql.Identifier(f"{SHARED}_embedding"), sql.Identifier(SHARED)
            )
        )


@dataclass
class Timings:
    """Seconds per phase of the set-up, in the order they ran."""

    phases: dict[str, float] = field(default_factory=dict)

    def run(self, name: str, step: Any, *args: Any) -> None:
        print(f"  {name} ...", file=sys.stderr, flush=True)
        began = time.perf_counter()
        step(*args)
        self.phases[name] = time.perf_counter() - began
        print(f"  {name}: {self.phases[name]:.1f} s", file=sys.stderr, flush=True)


def set_up(url: str, corpus: Corpus) -> Timings:
    timings = Timings()
    with (
        psycopg.connect(url, autocommit=True) as first,
        psycopg.connect(url, autocommit=True) as second,
    ):
        timings.run("create tables and partitions", create_tables, first, corpus)
        timings.run("COPY rows into both tables", load_rows, first, second, corpus)
        timings.run("primary keys and analyze", add_primary_keys, first)
    timings.run(
        "HNSW indexes of the partitions", build_partition_indexes, url, len(corpus.tenant_ids)
    )
    timings.run("HNSW index of the shared table", build_shared_index, url)
    return timings


_SIZES = """
with tables as (
    select %(table)s::regclass as relid
    union select relid from pg_partition_tree(%(table)s::regclass)
)
select (select sum(pg_table_size(relid)) from tables),
       (select coalesce(sum(pg_relation_size(indexrelid)), 0)
        from pg_index join pg_class on pg_class.oid = indexrelid
        join pg_am on pg_am.oid = pg_class.relam
        where amname = 'hnsw' and indrelid in (select relid from tables))
"""


def relation_sizes(conn: psycopg.Connection[Any]) -> dict[str, tuple[int, int]]:
    """Return the table bytes and HNSW index bytes of each table, partitions included."""
    sizes = {}
    for table in (PARTITIONED, SHARED):
        row = conn.execute(_SIZES, {"table": table}).fetchone()
        assert row is not None
        sizes[table] = (int(row[0]), int(row[1]))
    return sizes


# Queries


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    table: str
    # Settings for the query's transaction besides hnsw.ef_search.
    settings: tuple[tuple[str, str], ...] = ()


# Both layouts, each as the planner chooses and with the HNSW scan forced. With
# enable_sort off, every plan other than the HNSW index scan needs a disabled sort.
VARIANTS = (
    Variant("partitioned", "partitions, planner's choice", PARTITIONED),
    Variant("partitioned-hnsw", "partitions, HNSW scan", PARTITIONED, (("enable_sort", "off"),)),
    Variant(
        "shared-hnsw", "shared table, HNSW scan + tenant filter", SHARED, (("enable_sort", "off"),)
    ),
    Variant("shared", "shared table, planner's choice", SHARED),
)
# Pairs whose latency ratios the report prints: (numerator, denominator).
RATIOS = (("shared-hnsw", "partitioned-hnsw"), ("shared", "partitioned"))
# The ground truth for recall: a sequential scan of the tenant's partition and a sort.
EXACT = Variant(
    "exact",
    "exact search",
    PARTITIONED,
    (("enable_indexscan", "off"), ("enable_bitmapscan", "off")),
)
# Queries whose plans are summarised per variant; a plan can differ between tenants.
PLAN_SAMPLE = 100

_PARTITION_NUMBER = re.compile(r"(?<=_)\d{5}(?=_|$)")
_QUERY = """
select id, document_id, ordinal, 1 - (embedding <=> cast(%(vector)s as vector)) as similarity
from {table}
where tenant_id = %(tenant_id)s
order by embedding <=> cast(%(vector)s as vector)
limit %(limit)s
"""


def ef_search_for(k: int) -> int:
    """Return the ``hnsw.ef_search`` that ``retrieval.search`` sets for ``k``."""
    return min(max(_MIN_CANDIDATES, k * _CANDIDATES_PER_K), 1000)


def run_query(
    conn: psycopg.Connection[Any], variant: Variant, query: Query, k: int
) -> tuple[float, list[uuid.UUID]]:
    """Run one query in its own transaction; return the seconds it took and the ids found."""
    statement = sql.SQL(_QUERY).format(table=sql.Identifier(variant.table))
    with conn.transaction():
        for name, value in [("hnsw.ef_search", str(ef_search_for(k))), *variant.settings]:
            conn.execute("select set_config(%s, %s, true)", (name, value))
        began = time.perf_counter()
        rows = conn.execute(
            statement, {"vector": query.vector, "tenant_id": query.tenant_id, "limit": k}
        ).fetchall()
        elapsed = time.perf_counter() - began
    return elapsed, [row[0] for row in rows]


def describe_plan(conn: psycopg.Connection[Any], variant: Variant, query: Query, k: int) -> str:
    """Return the plan's nodes below the Limit, e.g. 'Index Scan using <index>'."""
    statement = sql.SQL("explain (format json) " + _QUERY).format(
        table=sql.Identifier(variant.table)
    )
    with conn.transaction():
        for name, value in [("hnsw.ef_search", str(ef_search_for(k))), *variant.settings]:
            conn.execute("select set_config(%s, %s, true)", (name, value))
        row = conn.execute(
            statement, {"vector": query.vector, "tenant_id": query.tenant_id, "limit": k}
        ).fetchone()
    assert row is not None
    nodes: list[str] = []
    _walk_plan(row[0][0]["Plan"], nodes)
    return "; ".join(nodes)


def _walk_plan(node: dict[str, Any], nodes: list[str]) -> None:
    kind = node["Node Type"]
    if kind != "Limit":
        detail = node.get("Index Name") or node.get("Relation Name")
        if detail:
            detail = _PARTITION_NUMBER.sub("<n>", detail)
        nodes.append(f"{kind} using {detail}" if detail else kind)
    for child in node.get("Plans", []):
        _walk_plan(child, nodes)


@dataclass
class VariantResult:
    variant: Variant
    plans: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    recall: list[float] = field(default_factory=list)


def measure_search(url: str, queries: list[Query], args: argparse.Namespace) -> list[VariantResult]:
    """Run every query on every variant, then score a sample's recall against exact search."""
    results = [VariantResult(variant) for variant in VARIANTS]
    connections = [psycopg.connect(url) for _ in VARIANTS]
    try:
        for query in queries[: args.warmup]:
            for result, conn in zip(results, connections, strict=True):
                run_query(conn, result.variant, query, args.k)
        measured = queries[args.warmup :]
        for result, conn in zip(results, connections, strict=True):
            result.plans = Counter(
                describe_plan(conn, result.variant, query, args.k)
                for query in measured[:PLAN_SAMPLE]
            )
        found = _time_queries(connections, results, measured, args)
        _score_recall(connections[0], results, measured, found, args.k)
    finally:
        for conn in connections:
            conn.close()
    return results


def _time_queries(
    connections: list[psycopg.Connection[Any]],
    results: list[VariantResult],
    measured: list[Query],
    args: argparse.Namespace,
) -> list[list[list[uuid.UUID]]]:
    """Time each query on every variant; return the ids found for the recall sample.

    The variants run one query back to back, so the second variant on a table finds the
    tenant's pages that the first one read in shared_buffers. A new random order for each
    query makes each variant the first one equally often.
    """
    shuffler = random.Random(args.seed)
    found: list[list[list[uuid.UUID]]] = [[] for _ in results]
    deadline = time.monotonic() + args.max_query_seconds
    for number, query in enumerate(measured):
        if time.monotonic() > deadline:
            print(f"  query time limit reached after {number} queries", file=sys.stderr)
            break
        order = list(range(len(results)))
        shuffler.shuffle(order)
        for index in order:
            elapsed, ids = run_query(connections[index], results[index].variant, query, args.k)
            results[index].latencies.append(elapsed)
            results[index].rows.append(len(ids))
            if number < args.recall_sample:
                found[index].append(ids)
    return found


def _score_recall(
    conn: psycopg.Connection[Any],
    results: list[VariantResult],
    measured: list[Query],
    found: list[list[list[uuid.UUID]]],
    k: int,
) -> None:
    for number, query in enumerate(measured[: len(found[0])]):
        _, truth = run_query(conn, EXACT, query, k)
        for index, result in enumerate(results):
            hits = len(set(found[index][number]) & set(truth))
            result.recall.append(hits / len(truth))


# Indexing through Knowledge


class TimedEmbedder:
    """Wrap an embedder and add up the seconds spent in it."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.name = inner.name
        self.seconds = 0.0

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        began = time.perf_counter()
        vectors = self.inner.embed(texts)
        self.seconds += time.perf_counter() - began
        return vectors


@contextmanager
def timed_steps(totals: dict[str, float]) -> Iterator[None]:
    """Add up the seconds spent in the lexeme hashing and the chunk inserts of indexing.

    Both are module functions that ``Knowledge.index`` looks up at each call, so the
    wrappers replace them for the duration and restore them after.
    """
    targets = [(service, "hashed_tsvectors"), (store, "insert_chunks")]
    originals = [getattr(module, name) for module, name in targets]

    def timed(name: str, function: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                totals[name] = totals.get(name, 0.0) + time.perf_counter() - began

        return wrapper

    for (module, name), original in zip(targets, originals, strict=True):
        setattr(module, name, timed(name, original))
    try:
        yield
    finally:
        for (module, name), original in zip(targets, originals, strict=True):
            setattr(module, name, original)


@dataclass(frozen=True)
class IndexingResult:
    documents: int
    chunks: int
    seconds: float
    embedder: str
    # Seconds per step: the embedder, hashed_tsvectors, store.insert_chunks.
    steps: dict[str, float]

    @property
    def chunks_per_second(self) -> float:
        return self.chunks / self.seconds


def synthetic_document(rng: np.random.Generator, vocabulary: list[str], chars: int) -> str:
    """Return paragraphs of random sentences over ``vocabulary``, about ``chars`` long."""
    paragraphs, length = [], 0
    while length < chars:
        sentences = []
        for _ in range(int(rng.integers(3, 7))):
            words = rng.choice(vocabulary, size=int(rng.integers(8, 21))).tolist()
            sentences.append(" ".join(words).capitalize() + ".")
        paragraph = " ".join(sentences)
        paragraphs.append(paragraph)
        length += len(paragraph) + 2
    return "\n\n".join(paragraphs)


def make_vocabulary(rng: np.random.Generator, size: int = 3000) -> list[str]:
    syllables = ["ka", "lo", "mi", "ren", "sta", "vor", "tel", "qu", "an", "dis", "op", "er"]
    return [
        "".join(rng.choice(syllables, size=int(rng.integers(2, 5))).tolist()) for _ in range(size)
    ]


def measure_indexing(runtime: Runtime, args: argparse.Namespace) -> IndexingResult:
    embedder = TimedEmbedder(HashingEmbedder())
    knowledge = Knowledge(
        app=runtime.db.app,
        catalog=runtime.plans,
        keys=DataKeys(runtime.keystore),
        embedder=embedder,
        redactor=Redactor(),
    )
    tenant_id = admin.create_tenant(
        runtime.db.owner, f"bench-knowledge-{uuid.uuid4().hex[:8]}", plan="enterprise"
    )
    roles = ("contributor",)
    scope = Scope(tenant_id=tenant_id, roles=roles)
    rng = np.random.default_rng(args.seed + 3)
    vocabulary = make_vocabulary(rng)

    document_ids = []
    for number in range(args.documents):
        body = synthetic_document(rng, vocabulary, args.document_chars)
        upload = Upload(f"Bench document {number}", body.encode(), "text/plain")
        document_ids.append(knowledge.add(scope, upload, defer=_no_job)["id"])

    steps: dict[str, float] = {}
    with timed_steps(steps):
        began = time.perf_counter()
        for document_id in document_ids:
            knowledge.index(tenant_id, document_id, roles)
        seconds = time.perf_counter() - began
    steps["embed"] = embedder.seconds

    chunks = _indexed_chunks(runtime, tenant_id, len(document_ids))
    return IndexingResult(len(document_ids), chunks, seconds, embedder.name, steps)


def _no_job(*_: object) -> None:
    return None


def _indexed_chunks(runtime: Runtime, tenant_id: uuid.UUID, documents: int) -> int:
    """Return the tenant's chunk count; raise unless every document is ready."""
    with runtime.db.owner.connect() as conn:
        ready, chunks = conn.execute(
            text(
                "select count(*) filter (where status = 'ready'), coalesce(sum(chunks_total), 0)"
                " from documents where tenant_id = :tenant"
            ),
            {"tenant": tenant_id},
        ).one()
        stored = conn.execute(
            text("select count(*) from document_chunks where tenant_id = :tenant"),
            {"tenant": tenant_id},
        ).scalar_one()
    if ready != documents or stored != chunks:
        raise RuntimeError(
            f"indexing incomplete: {ready} of {documents} documents ready,"
            f" {stored} chunks stored of {chunks}"
        )
    return int(chunks)


# Report


def describe_environment(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        settings = {
            name: conn.execute(sql.SQL("show {}").format(sql.Identifier(name))).fetchone()[0]  # type: ignore[index]
            for name in ("server_version", "shared_buffers", "maintenance_work_mem")
        }
        pgvector = conn.execute(
            "select extversion from pg_extension where extname = 'vector'"
        ).fetchone()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return [
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}, commit {git_commit()}"
        " (with uncommitted changes, if any)",
        f"- machine: {platform.machine()}, {cpus} CPUs, {memory:.0f} GB memory,"
        f" {platform.system()} {platform.release()}",
        f"- PostgreSQL {settings['server_version']} (embedded, pgserver), pgvector"
        f" {pgvector[0] if pgvector else '?'}; shared_buffers {settings['shared_buffers']},"
        f" maintenance_work_mem {settings['maintenance_work_mem']}"
        f" ({SHARED_BUILD_MEMORY} for the shared HNSW build)",
        f"- Python {platform.python_version()}, numpy {np.__version__},"
        f" psycopg {psycopg.__version__}",
    ]


def render_search(
    args: argparse.Namespace,
    environment: list[str],
    timings: Timings,
    sizes: dict[str, tuple[int, int]],
    results: list[VariantResult],
) -> list[str]:
    total = args.tenants * args.chunks_per_tenant
    lines = [
        "## Vector search: per-tenant partitions against a shared index",
        "",
        *environment,
        f"- data: {args.tenants} tenants x {args.chunks_per_tenant} chunks = {total:,} chunks"
        f" of {args.dimensions} dimensions; {args.topics} topics, {args.topics_per_tenant}"
        f" per tenant; seed {args.seed}",
        f"- queries: k = {args.k}, hnsw.ef_search = {ef_search_for(args.k)};"
        f" {args.warmup} warm-up queries, then {len(results[0].latencies)} measured per"
        f" variant over random tenants, variants in random order per query; recall on the first"
        f" {len(results[0].recall)}",
        "",
        "| phase | seconds |",
        "| --- | ---: |",
        *[f"| {name} | {seconds:.1f} |" for name, seconds in timings.phases.items()],
        "",
        "| table | table MB | HNSW MB |",
        "| --- | ---: | ---: |",
        *[
            f"| `{table}` | {heap / 2**20:.0f} | {index / 2**20:.0f} |"
            for table, (heap, index) in sizes.items()
        ],
        "",
        "| variant | p50 ms | p99 ms | mean ms | rows of k | queries short of k | recall@k |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        milliseconds = [value * 1e3 for value in result.latencies]
        lines.append(
            f"| {result.variant.label} | {percentile(milliseconds, 0.5):.2f}"
            f" | {percentile(milliseconds, 0.99):.2f} | {statistics.fmean(milliseconds):.2f}"
            f" | {statistics.fmean(result.rows):.2f} of {args.k}"
            f" | {sum(rows < args.k for rows in result.rows)}"
            f" | {statistics.fmean(result.recall):.3f} |"
        )

    by_name = {result.variant.name: result for result in results}
    lines += ["", "Latency ratios:", ""]
    for numerator, denominator in RATIOS:
        top, bottom = by_name[numerator], by_name[denominator]
        lines.append(
            f"- {top.variant.label} / {bottom.variant.label}:"
            f" p50 x{_ratio(top, bottom, 0.5):.2f}, p99 x{_ratio(top, bottom, 0.99):.2f}"
        )
    sampled = sum(results[0].plans.values())
    lines += ["", f"Plans of the first {sampled} measured queries, from EXPLAIN:", ""]
    for result in results:
        shapes = ", ".join(f"{shape} ({count})" for shape, count in result.plans.most_common())
        lines.append(f"- {result.variant.label}: {shapes}")
    return lines


def _ratio(top: VariantResult, bottom: VariantResult, fraction: float) -> float:
    return percentile(top.latencies, fraction) / percentile(bottom.latencies, fraction)


def render_indexing(result: IndexingResult, args: argparse.Namespace) -> list[str]:
    steps = [
        ("embedding (`HashingEmbedder.embed`)", result.steps.get("embed", 0.0)),
        ("keyed lexeme hashes (`hashed_tsvectors`)", result.steps.get("hashed_tsvectors", 0.0)),
        ("sealing and inserting (`store.insert_chunks`)", result.steps.get("insert_chunks", 0.0)),
    ]
    rest = result.seconds - sum(seconds for _, seconds in steps)
    steps.append(("the rest: claim, chunking, progress, commits", rest))
    return [
        "",
        "## Indexing throughput",
        "",
        f"- {result.documents} documents of about {args.document_chars} characters,"
        f" {result.chunks} chunks, embedder `{result.embedder}`, one tenant, one thread:"
        f" **{result.chunks_per_second:.0f} chunks/s** ({result.seconds:.1f} s)",
        "",
        "| step | seconds | share |",
        "| --- | ---: | ---: |",
        *[
            f"| {label} | {seconds:.1f} | {seconds / result.seconds:.0%} |"
            for label, seconds in steps
        ],
    ]


# Command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _add_data_options(parser)
    _add_query_options(parser)
    _add_indexing_options(parser)
    parser.add_argument("--seed", type=int, default=5, help="seed of every random draw (default 5)")
    args = parser.parse_args(argv)

    if args.chunks_per_tenant < args.k:
        parser.error("--chunks-per-tenant must be at least --k")
    if args.warmup < 0 or args.documents < 0:
        parser.error("--warmup and --documents must not be negative")
    return args


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--tenants",
        type=positive_int,
        default=1000,
        help="tenants, one partition each (default 1000)",
    )
    add(
        "--chunks-per-tenant",
        type=positive_int,
        default=100,
        help="chunks per tenant (default 100)",
    )
    add("--dimensions", type=positive_int, default=384, help="vector dimensions (default 384)")
    add("--topics", type=positive_int, default=100, help="topic centres (default 100)")
    add(
        "--topics-per-tenant",
        type=positive_int,
        default=5,
        help="topics that each tenant's chunks are drawn from (default 5)",
    )


def _add_query_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--queries",
        type=positive_int,
        default=1000,
        help="measured queries per variant (default 1000)",
    )
    add(
        "--warmup", type=int, default=100, help="unmeasured queries per variant first (default 100)"
    )
    add("--k", type=positive_int, default=10, help="rows each query requests (default 10)")
    add(
        "--recall-sample",
        type=positive_int,
        default=200,
        help="measured queries whose recall is checked against exact search (default 200)",
    )
    add(
        "--max-query-seconds",
        type=float,
        default=900.0,
        help="stop the measured queries after this many seconds (default 900)",
    )


def _add_indexing_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--documents",
        type=int,
        default=20,
        help="documents indexed through Knowledge.index; 0 skips that part (default 20)",
    )
    add(
        "--document-chars",
        type=positive_int,
        default=16_000,
        help="characters per indexed document, about 20 chunks at 16000 (default 16000)",
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(json=True, level=logging.WARNING)

    data_dir = Path(tempfile.mkdtemp(prefix="stockade-bench-"))
    settings = load_settings(data_dir=data_dir)
    if settings.database_url:
        print(
            "STOCKADE_DATABASE_URL is set, but this bench starts its own embedded"
            " PostgreSQL: unset it and run again.",
            file=sys.stderr,
        )
        return 2
    print(f"Opening the runtime in {data_dir} ...", file=sys.stderr)
    runtime = open_runtime(settings)
    try:
        if args.documents:
            print(f"Indexing {args.documents} documents ...", file=sys.stderr)
            indexing = measure_indexing(runtime, args)
        url = bench_database(start_embedded_server(settings.postgres_dir))
        corpus = make_corpus(args)
        print(f"Loading {args.tenants * args.chunks_per_tenant:,} chunks ...", file=sys.stderr)
        timings = set_up(url, corpus)
        environment = describe_environment(url)
        with psycopg.connect(url) as conn:
            sizes = relation_sizes(conn)
        print("Running queries ...", file=sys.stderr)
        results = measure_search(url, make_queries(corpus, args.warmup + args.queries), args)
        lines = render_search(args, environment, timings, sizes, results)
        if args.documents:
            lines += render_indexing(indexing, args)
    finally:
        runtime.close()
        stop_embedded_server(settings)
        shutil.rmtree(data_dir, ignore_errors=True)

    report = "\n".join(lines) + "\n"
    print(report)
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(report, encoding="utf-8")
    print(f"Wrote {RESULTS_FILE}", file=sys.stderr)
    return 0


def bench_database(superuser: Any) -> str:
    """Create the bench's own database on the embedded server; return its psycopg URL."""
    base = superuser.set(drivername="postgresql")
    with psycopg.connect(base.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(DATABASE)))
    return str(base.set(database=DATABASE).render_as_string(hide_password=False))


if __name__ == "__main__":
    sys.exit(main())
