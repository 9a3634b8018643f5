"""Measure retrieval quality on the demo handbook: recall@5 and MRR, vector-only and hybrid.

One run opens the runtime (embedded PostgreSQL in a new temporary folder), creates one
tenant with a contributor, adds the Northwind Outfitters handbook that ``stockade demo``
seeds (``stockade.knowledge.demo``), indexes it at once, and asks every labelled
question of ``bench/data/retrieval_questions.jsonl`` twice:

- **vector only**: ``retrieval.search`` with ``query=None``, so only the embedder's
  cosine ranking counts;
- **hybrid**: ``Knowledge.search``, as ``GET /api/v1/search`` ranks: the vector ranking
  and the full-text ranking fused by reciprocal rank.

A passage answers a question when it contains the question's labelled phrase (see
``stockade.knowledge.evaluation``). The embedder is ``HashingEmbedder``, the default,
unless ``--configured-embedder`` asks for the one that ``STOCKADE_EMBEDDER`` selects.

Usage: ``make bench`` or ``.venv/bin/python bench/retrieval.py``. When
``STOCKADE_DATABASE_URL`` is set, that server is used instead of the embedded one. Point
it at a scratch database, because opening the runtime with a new keyring resets the
password of the application role. The bench deletes the tenant and the user it made.
"""

from __future__ import annotations

import argparse
import logging
import platform
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text
from tickets_auth import git_commit, stop_embedded_server

from stockade.audit.logs import configure_logging
from stockade.config import load_settings
from stockade.db import Scope, scoped_transaction
from stockade.identity import admin
from stockade.keys.envelope import DataKeys
from stockade.knowledge import evaluation
from stockade.knowledge.demo import add_missing_demo_documents, demo_documents
from stockade.knowledge.embedders import HashingEmbedder
from stockade.knowledge.service import Knowledge
from stockade.runtime import Runtime, open_runtime
from stockade.safety.redaction import Redactor

QUESTIONS_FILE = Path(__file__).resolve().parent / "data" / "retrieval_questions.jsonl"
RESULTS_FILE = Path(__file__).resolve().parent / "results" / "retrieval.md"


@dataclass(frozen=True)
class Seeded:
    tenant_id: uuid.UUID
    user_id: uuid.UUID
    scope: Scope


@dataclass(frozen=True)
class Measured:
    """One retrieval mode's outcomes and the median time it took per question."""

    mode: str
    outcomes: list[evaluation.Outcome]
    median_ms: float


def seed_member(runtime: Runtime) -> Seeded:
    name = f"bench-retrieval-{uuid.uuid4().hex[:8]}"
    tenant_id = admin.create_tenant(runtime.db.owner, name)
    email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
    # The member never signs in; the password only satisfies add_user.
    user_id, _ = admin.add_user(
        runtime.db.owner,
        runtime.policy,
        email=email,
        tenant=name,
        role="contributor",
        password=secrets.token_urlsafe(18),
    )
    scope = Scope(tenant_id=tenant_id, roles=("contributor",), user_id=user_id)
    return Seeded(tenant_id, user_id, scope)


def delete_seeded(runtime: Runtime, seeded: Seeded) -> None:
    # Audit events are append-only for the application role and keep the tenant row.
    with runtime.db.owner.begin() as conn:
        conn.execute(text("delete from audit_events where tenant_id = :t"), {"t": seeded.tenant_id})
        conn.execute(text("delete from tenants where id = :t"), {"t": seeded.tenant_id})
        conn.execute(text("delete from users where id = :u"), {"u": seeded.user_id})


def build_knowledge(runtime: Runtime, configured: bool) -> Knowledge:
    if configured:
        return Knowledge.from_runtime(runtime)
    return Knowledge(
        app=runtime.db.app,
        catalog=runtime.plans,
        keys=DataKeys(runtime.keystore),
        embedder=HashingEmbedder(),
        redactor=Redactor(),
    )


def count_chunks(knowledge: Knowledge, scope: Scope) -> int:
    with scoped_transaction(knowledge.app, scope) as conn:
        return int(
            conn.execute(
                text("select count(*) from document_chunks where tenant_id = :t"),
                {"t": scope.tenant_id},
            ).scalar_one()
        )


def measure(
    mode: str, retrieve: evaluation.Retriever, questions: list[evaluation.Question]
) -> Measured:
    outcomes = []
    durations = []
    for question in questions:
        started = time.perf_counter()
        outcomes.extend(evaluation.run(retrieve, [question]))
        durations.append((time.perf_counter() - started) * 1000)
    durations.sort()
    return Measured(mode, outcomes, durations[len(durations) // 2])


def render_report(
    knowledge: Knowledge,
    questions: list[evaluation.Question],
    chunks: int,
    index_seconds: float,
    results: list[Measured],
) -> str:
    documents = demo_documents()
    lines = [
        f"# Retrieval quality (commit {git_commit()}, {datetime.now(UTC):%Y-%m-%d})",
        "",
        f"- embedder: `{knowledge.embedder.name}`",
        f"- {len(documents)} demo documents,"
        f" {sum(len(document.text.split()) for document in documents)} words,"
        f" {chunks} chunks, indexed in {index_seconds:.2f} s",
        f"- {len(questions)} questions:"
        + "".join(
            f" {sum(1 for question in questions if question.kind == kind)} {kind}"
            for kind in evaluation.KINDS
        ),
        f"- Python {platform.python_version()}, {platform.machine()}",
        "",
        "| mode | questions | recall@1 | recall@5 | MRR@10 | median ms per question |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for measured in results:
        groups = [("all", measured.outcomes)] + [
            (kind, evaluation.of_kind(measured.outcomes, kind)) for kind in evaluation.KINDS
        ]
        for group, outcomes in groups:
            summary = evaluation.summarize(outcomes)
            timing = f"{measured.median_ms:.1f}" if group == "all" else ""
            lines.append(
                f"| {measured.mode} | {group} ({summary.questions}) | {summary.recall_at_1:.3f}"
                f" | {summary.recall_at_5:.3f} | {summary.mrr:.3f} | {timing} |"
            )
    lines.append("")
    for measured in results:
        missed = [outcome for outcome in measured.outcomes if not _in_top_5(outcome)]
        lines.append(f"Not in the top 5, {measured.mode}: {len(missed)}")
        lines.extend(
            f"- {outcome.question.id} ({outcome.question.kind}, rank {outcome.rank or '>10'}):"
            f" {outcome.question.question}"
            for outcome in missed
        )
        lines.append("")
    return "\n".join(lines)


def _in_top_5(outcome: evaluation.Outcome) -> bool:
    return outcome.rank is not None and outcome.rank <= 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--questions",
        type=Path,
        default=QUESTIONS_FILE,
        help=f"labelled questions, one JSON object a line (default {QUESTIONS_FILE.name})",
    )
    parser.add_argument(
        "--configured-embedder",
        action="store_true",
        help="use the embedder that STOCKADE_EMBEDDER selects instead of HashingEmbedder",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(json=True, level=logging.WARNING)
    questions = evaluation.load_questions(args.questions)
    problems = evaluation.label_problems(questions, demo_documents())
    if problems:
        print("The question labels do not match the demo documents:", file=sys.stderr)
        print("\n".join(problems), file=sys.stderr)
        return 1

    data_dir = Path(tempfile.mkdtemp(prefix="stockade-bench-"))
    settings = load_settings(data_dir=data_dir)
    print(f"Opening the runtime in {data_dir} ...", file=sys.stderr)
    runtime = open_runtime(settings, pool_size=2)
    seeded: Seeded | None = None
    try:
        seeded = seed_member(runtime)
        knowledge = build_knowledge(runtime, args.configured_embedder)
        started = time.perf_counter()
        add_missing_demo_documents(knowledge, seeded.scope)
        index_seconds = time.perf_counter() - started
        chunks = count_chunks(knowledge, seeded.scope)
        results = [
            measure(
                "vector only",
                evaluation.vector_retriever(knowledge, seeded.scope),
                questions,
            ),
            measure("hybrid", evaluation.hybrid_retriever(knowledge, seeded.scope), questions),
        ]
        report = render_report(knowledge, questions, chunks, index_seconds, results)
    finally:
        if seeded is not None:
            delete_seeded(runtime, seeded)
        runtime.close()
        stop_embedded_server(settings)
        shutil.rmtree(data_dir, ignore_errors=True)

    print(report)
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(report, encoding="utf-8")
    print(f"Wrote {RESULTS_FILE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
