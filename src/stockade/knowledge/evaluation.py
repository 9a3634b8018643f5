"""Measure how well retrieval ranks the passage that answers a labelled question.

Each question names the demo document that answers it and a short phrase from the
passage that answers it. A passage matches a question when it contains the phrase,
compared without case and with runs of white space folded, so the labels stay valid
when the chunking changes. Scores:

- recall@k: the share of questions with a matching passage among the first ``k``;
- MRR: the mean over questions of 1/rank of the first matching passage, counting 0
  when none of the first ``DEPTH`` passages matches (MRR@10).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from stockade.db import Scope, scoped_transaction
from stockade.knowledge.chunking import chunk_text
from stockade.knowledge.demo import DemoDocument
from stockade.knowledge.retrieval import Passage, search
from stockade.knowledge.service import Knowledge
from stockade.safety.redaction import Redactor

# Passages fetched per question; MRR counts ranks up to this depth.
DEPTH = 10
KINDS = ("lexical", "paraphrase")

Retriever = Callable[[str, int], list[Passage]]


@dataclass(frozen=True)
class Question:
    """A labelled question. ``kind`` is "lexical" when the question shares its key words
    with the matching passage, and "paraphrase" when it uses other words."""

    id: str
    question: str
    document: str
    phrase: str
    kind: str


@dataclass(frozen=True)
class Outcome:
    question: Question
    # The 1-based rank of the first matching passage, or None when none of DEPTH matches.
    rank: int | None


@dataclass(frozen=True)
class Summary:
    questions: int
    recall_at_1: float
    recall_at_5: float
    mrr: float


def load_questions(path: Path) -> list[Question]:
    """Read one JSON object per line. Raise ValueError naming the line of an invalid one."""
    questions = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            fields = json.loads(line)
            question = Question(**{name: str(fields[name]) for name in Question.__annotations__})
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: invalid question ({exc})") from None
        if question.kind not in KINDS:
            raise ValueError(f"{path}:{number}: kind must be one of {KINDS}, not {question.kind}")
        questions.append(question)
    return questions


def label_problems(questions: Sequence[Question], documents: Sequence[DemoDocument]) -> list[str]:
    """List the labels that cannot be trusted: a duplicate id, a missing document, a
    phrase that is absent from its document or also found in another one, or a phrase
    that a chunk boundary cuts in two."""
    texts = {document.file_name: _folded(document.text) for document in documents}
    chunks = {document.file_name: _indexed_chunks(document.text) for document in documents}
    problems = []
    seen: set[str] = set()
    for question in questions:
        if question.id in seen:
            problems.append(f"{question.id}: duplicate id")
        seen.add(question.id)
        if question.document not in texts:
            problems.append(f"{question.id}: no demo document {question.document}")
            continue
        phrase = _folded(question.phrase)
        found_in = sorted(name for name, text in texts.items() if phrase in text)
        if found_in != [question.document]:
            problems.append(f"{question.id}: phrase {question.phrase!r} is in {found_in}")
        elif not any(phrase in chunk for chunk in chunks[question.document]):
            problems.append(f"{question.id}: phrase {question.phrase!r} spans two chunks")
    return problems


def _indexed_chunks(text: str) -> list[str]:
    """Return the folded chunks that indexing makes of ``text``: redacted, then chunked."""
    return [_folded(chunk) for chunk in chunk_text(Redactor().redact(text.strip()).text)]


def hybrid_retriever(knowledge: Knowledge, scope: Scope) -> Retriever:
    """Rank as ``/api/v1/search`` does: vector similarity fused with text rank."""

    def retrieve(query: str, k: int) -> list[Passage]:
        return knowledge.search(scope, query, k)

    return retrieve


def vector_retriever(knowledge: Knowledge, scope: Scope) -> Retriever:
    """Rank by the embedder's vectors alone, with no text rank."""
    assert scope.tenant_id is not None
    tenant_id = scope.tenant_id

    def retrieve(query: str, k: int) -> list[Passage]:
        vector = knowledge.embedder.embed([query])[0]
        with scoped_transaction(knowledge.app, scope) as conn:
            return search(conn, knowledge.keys, tenant_id, vector=vector, query=None, k=k)

    return retrieve


def run(retrieve: Retriever, questions: Sequence[Question]) -> list[Outcome]:
    """Ask every question and record the rank of its first matching passage."""
    return [
        Outcome(question, first_match_rank(retrieve(question.question, DEPTH), question.phrase))
        for question in questions
    ]


def first_match_rank(passages: Sequence[Passage], phrase: str) -> int | None:
    folded = _folded(phrase)
    for rank, passage in enumerate(passages, start=1):
        if folded in _folded(passage.text):
            return rank
    return None


def summarize(outcomes: Sequence[Outcome]) -> Summary:
    if not outcomes:
        raise ValueError("no outcomes to summarize")
    ranks = [outcome.rank for outcome in outcomes]
    total = len(ranks)
    return Summary(
        questions=total,
        recall_at_1=sum(1 for rank in ranks if rank == 1) / total,
        recall_at_5=sum(1 for rank in ranks if rank is not None and rank <= 5) / total,
        mrr=sum(1.0 / rank for rank in ranks if rank is not None) / total,
    )


def of_kind(outcomes: Sequence[Outcome], kind: str) -> list[Outcome]:
    return [outcome for outcome in outcomes if outcome.question.kind == kind]


def _folded(text: str) -> str:
    return " ".join(text.split()).casefold()
