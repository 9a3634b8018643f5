"""Detected spans and the rule that picks one span where several overlap."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

EMAIL = "EMAIL"
PHONE = "PHONE"
CARD = "CARD"
IBAN = "IBAN"
IP = "IP"
NATIONAL_ID = "NATIONAL_ID"
PERSON = "PERSON"

# Every type name a placeholder may carry, including PERSON, which no detector here finds.
ENTITY_TYPES = (EMAIL, PHONE, CARD, IBAN, IP, NATIONAL_ID, PERSON)

# Tie-break between overlapping spans of the same length: a checksum-validated type beats
# a format-only one, and PHONE, whose validation accepts the most digit strings, comes last.
_SPECIFICITY = {CARD: 0, IBAN: 1, NATIONAL_ID: 2, EMAIL: 3, IP: 4, PHONE: 5, PERSON: 6}


@dataclass(frozen=True, slots=True)
class Span:
    """A validated match: its entity type and its offsets in the text, end exclusive."""

    type: str
    start: int
    end: int


def resolve_overlaps(spans: Iterable[Span]) -> list[Span]:
    """Choose non-overlapping spans, the longest first, then the most specific type.

    Returns the chosen spans in text order.
    """
    ranked = sorted(
        spans, key=lambda span: (span.start - span.end, _SPECIFICITY[span.type], span.start)
    )
    starts: list[int] = []
    chosen: list[Span] = []

    for span in ranked:
        index = bisect.bisect_left(starts, span.start)
        overlaps_next = index < len(chosen) and chosen[index].start < span.end
        overlaps_previous = index > 0 and chosen[index - 1].end > span.start
        if overlaps_next or overlaps_previous:
            continue
        starts.insert(index, span.start)
        chosen.insert(index, span)

    return chosen
