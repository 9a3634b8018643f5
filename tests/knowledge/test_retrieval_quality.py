"""Retrieval quality on the demo handbook stays above measured floors.

The floors sit a little below what ``bench/retrieval.py`` measures with the default
``HashingEmbedder`` (docs/benchmarks.md, "Retrieval quality"). Text-rank ties are broken
by random chunk ids, so a run may move by a question or two. The floors leave room for
that and little more.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from stockade.knowledge import evaluation
from stockade.knowledge.demo import add_missing_demo_documents, demo_documents
from stockade.knowledge.embedders import HashingEmbedder
from stockade.knowledge.retrieval import Passage
from stockade.knowledge.service import Knowledge
from tests.conftest import Factory

QUESTIONS = Path(__file__).resolve().parents[2] / "bench" / "data" / "retrieval_questions.jsonl"
# Measured: hybrid 0.862 to 0.897 recall@5 over repeated runs, vector only 0.690.
HYBRID_RECALL_AT_5_FLOOR = 0.82
VECTOR_RECALL_AT_5_FLOOR = 0.64
# Every lexical question's passage is in the hybrid top 5 when measured; allow one miss.
HYBRID_LEXICAL_RECALL_AT_5_FLOOR = 0.96


@pytest.fixture(scope="module")
def questions() -> list[evaluation.Question]:
    return evaluation.load_questions(QUESTIONS)


@pytest.fixture(scope="module")
def outcomes(
    knowledge: Knowledge, factory: Factory, questions: list[evaluation.Question]
) -> dict[str, list[evaluation.Outcome]]:
    """Index the handbook in a new tenant with the default embedder and ask every question."""
    hashing = Knowledge(
        knowledge.app, knowledge.catalog, knowledge.keys, HashingEmbedder(), knowledge.redactor
    )
    member = factory.member(factory.tenant("quality"), roles=("contributor",))
    scope = member.scope()
    add_missing_demo_documents(hashing, scope)
    return {
        "vector": evaluation.run(evaluation.vector_retriever(hashing, scope), questions),
        "hybrid": evaluation.run(evaluation.hybrid_retriever(hashing, scope), questions),
    }


def test_question_labels_match_documents(questions: list[evaluation.Question]) -> None:
    assert len(questions) >= 40
    assert evaluation.label_problems(questions, demo_documents()) == []
    for kind in evaluation.KINDS:
        assert any(question.kind == kind for question in questions), kind


def test_hybrid_recall_stays_above_floor(outcomes: dict[str, list[evaluation.Outcome]]) -> None:
    summary = evaluation.summarize(outcomes["hybrid"])
    missed = [
        outcome.question.id
        for outcome in outcomes["hybrid"]
        if outcome.rank is None or outcome.rank > 5
    ]

    assert summary.recall_at_5 >= HYBRID_RECALL_AT_5_FLOOR, missed


def test_hybrid_finds_lexical_questions(outcomes: dict[str, list[evaluation.Outcome]]) -> None:
    lexical = evaluation.summarize(evaluation.of_kind(outcomes["hybrid"], "lexical"))

    assert lexical.recall_at_5 >= HYBRID_LEXICAL_RECALL_AT_5_FLOOR


def test_vector_recall_stays_above_floor(outcomes: dict[str, list[evaluation.Outcome]]) -> None:
    summary = evaluation.summarize(outcomes["vector"])

    assert summary.recall_at_5 >= VECTOR_RECALL_AT_5_FLOOR


def test_hybrid_beats_vector_only(outcomes: dict[str, list[evaluation.Outcome]]) -> None:
    hybrid = evaluation.summarize(outcomes["hybrid"])
    vector = evaluation.summarize(outcomes["vector"])

    assert hybrid.recall_at_5 > vector.recall_at_5
    assert hybrid.mrr > vector.mrr


def test_match_rank_ignores_case_and_spacing() -> None:
    passage = _passage("Unused items can be returned WITHIN 45 days\n  of delivery.")
    other = _passage("Something else entirely.")

    assert evaluation.first_match_rank([other, passage], "within 45 days of delivery") == 2
    assert evaluation.first_match_rank([other], "within 45 days of delivery") is None


def _passage(text: str) -> Passage:
    return Passage(uuid.uuid4(), uuid.uuid4(), 0, "title", text, 0.0, None, None)
