"""Score a Redactor against labelled text: precision, recall and F1 per entity type.

The labelled file is JSON Lines, one object per line::

    {"text": "Mail alice@example.com", "entities": [
        {"type": "EMAIL", "start": 5, "end": 22, "value": "alice@example.com"}]}

``start`` and ``end`` are character offsets, end exclusive, and ``value`` repeats the
labelled substring so that a wrong offset is caught on load. A prediction counts as
correct only when its type, start and end all equal a label's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from stockade.safety.spans import ENTITY_TYPES, Span

# (type, start, end) of one labelled or predicted entity.
Label = tuple[str, int, int]


class SpanFinder(Protocol):
    def find(self, text: str) -> list[Span]: ...


@dataclass(frozen=True)
class LabelledLine:
    text: str
    labels: frozenset[Label]


@dataclass
class Score:
    """Counts of one entity type over a labelled set, and the rates derived from them."""

    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0

    @property
    def precision(self) -> float:
        predicted = self.true_positives + self.false_positives
        return self.true_positives / predicted if predicted else 1.0

    @property
    def recall(self) -> float:
        labelled = self.true_positives + self.false_negatives
        return self.true_positives / labelled if labelled else 1.0

    @property
    def f1(self) -> float:
        total = self.precision + self.recall
        return 2 * self.precision * self.recall / total if total else 0.0


@dataclass
class Evaluation:
    """Scores per type, their total, and every wrong prediction or missed label."""

    scores: dict[str, Score] = field(default_factory=dict)
    total: Score = field(default_factory=Score)
    false_positives: list[tuple[str, Label]] = field(default_factory=list)
    false_negatives: list[tuple[str, Label]] = field(default_factory=list)


def load_labelled(path: Path) -> list[LabelledLine]:
    """Read a labelled JSON Lines file, checking each label against its text."""
    lines: list[LabelledLine] = []
    with path.open(encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if raw.strip():
                lines.append(_parse_line(json.loads(raw), f"{path}:{number}"))
    return lines


def _parse_line(record: dict[str, Any], where: str) -> LabelledLine:
    text = record["text"]
    labels: set[Label] = set()

    for entity in record["entities"]:
        entity_type, start, end = entity["type"], entity["start"], entity["end"]
        if entity_type not in ENTITY_TYPES:
            raise ValueError(f"{where}: unknown entity type {entity_type!r}")
        if text[start:end] != entity["value"]:
            raise ValueError(
                f"{where}: offsets {start}:{end} select {text[start:end]!r}, "
                f"not the labelled value {entity['value']!r}"
            )
        labels.add((entity_type, start, end))

    return LabelledLine(text, frozenset(labels))


def evaluate(finder: SpanFinder, lines: Iterable[LabelledLine]) -> Evaluation:
    """Compare the finder's spans with the labels, line by line."""
    evaluation = Evaluation()

    for line in lines:
        predicted = {(span.type, span.start, span.end) for span in finder.find(line.text)}
        for label in predicted & line.labels:
            _score(evaluation, label[0]).true_positives += 1
        for label in predicted - line.labels:
            _score(evaluation, label[0]).false_positives += 1
            evaluation.false_positives.append((line.text, label))
        for label in line.labels - predicted:
            _score(evaluation, label[0]).false_negatives += 1
            evaluation.false_negatives.append((line.text, label))

    for score in evaluation.scores.values():
        evaluation.total.true_positives += score.true_positives
        evaluation.total.false_positives += score.false_positives
        evaluation.total.false_negatives += score.false_negatives
    return evaluation


def _score(evaluation: Evaluation, entity_type: str) -> Score:
    return evaluation.scores.setdefault(entity_type, Score())
