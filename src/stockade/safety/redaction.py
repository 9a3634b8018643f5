"""Replace personal data in text with typed placeholders, and put it back.

    redactor = Redactor()
    result = redactor.redact("Mail alice@example.com or bob@example.org")
    result.text      # "Mail <EMAIL_1> or <EMAIL_2>"
    result.mapping   # {"<EMAIL_1>": "alice@example.com", "<EMAIL_2>": "bob@example.org"}
    restore(result.text, result.mapping) == "Mail alice@example.com or bob@example.org"

Detected types: EMAIL, PHONE, CARD, IBAN, IP and NATIONAL_ID (see ``patterns``,
``phones`` and ``national_ids`` for what each accepts). Each distinct value of a type
gets the next number of that type, and the same string again gets the same placeholder.
Values are compared as written: "+1 202 555 0143" and "(202) 555-0143" get two
placeholders, so each restores to its own spelling. Where matches overlap, the longer
one wins, and between equal lengths the more specific type (see ``spans``).

Look-alike placeholders already in the text are escaped, not replaced: ``<EMAIL_1>`` in
the input becomes ``<\\EMAIL_1>`` in the output, and ``restore`` turns it back (see
``placeholders``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from stockade.safety.national_ids import find_national_ids
from stockade.safety.patterns import find_cards, find_emails, find_ibans, find_ips
from stockade.safety.phones import DEFAULT_PHONE_REGIONS, PhoneFinder
from stockade.safety.placeholders import (
    escape_lookalikes,
    format_placeholder,
    parse_placeholder,
    restore,
)
from stockade.safety.spans import (
    CARD,
    EMAIL,
    ENTITY_TYPES,
    IBAN,
    IP,
    NATIONAL_ID,
    PERSON,
    PHONE,
    Span,
    resolve_overlaps,
)

__all__ = [
    "ENTITY_TYPES",
    "SUPPORTED_TYPES",
    "Entity",
    "Redacted",
    "Redactor",
    "UnsupportedEntityType",
    "restore",
]

# NOTE: PERSON is a placeholder type, but nothing detects names. That takes a named-entity
# model: spaCy's English pipelines (used by Presidio) are published outside PyPI, and
# GLiNER fetches its weights from the Hugging Face Hub, so neither installs from PyPI
# alone. A finder returning PERSON spans would be one more entry of ``finders`` below.
SUPPORTED_TYPES = frozenset({EMAIL, PHONE, CARD, IBAN, IP, NATIONAL_ID})


class UnsupportedEntityType(ValueError):
    """Raised when a Redactor is asked for a type it cannot detect."""


@dataclass(frozen=True, slots=True)
class Entity:
    """One replaced occurrence: its offsets in the input and the placeholder that replaced it."""

    type: str
    start: int
    end: int
    placeholder: str
    value: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Redacted:
    """The outcome of one ``Redactor.redact`` call.

    ``mapping`` contains every placeholder known after this call: those of the ``start``
    mapping, if one was given, and those added for this text. ``counts`` counts, per
    type, the distinct values replaced in this text only. The repr leaves out the
    original values.
    """

    text: str
    mapping: dict[str, str] = field(repr=False)
    counts: dict[str, int]
    entities: tuple[Entity, ...] = field(repr=False)


class Redactor:
    """Find personal data and replace it with placeholders.

    Build one per process and share it: ``redact`` keeps no state between calls, so
    concurrent calls from several threads are safe.
    """

    # The types a Redactor can detect; an instance narrows it to the ones it was built for.
    types: frozenset[str] = SUPPORTED_TYPES

    def __init__(
        self,
        types: Iterable[str] | None = None,
        *,
        phone_regions: Sequence[str] = DEFAULT_PHONE_REGIONS,
    ) -> None:
        self.types = _check_types(types)
        self._phones = PhoneFinder(phone_regions) if PHONE in self.types else None
        finders: dict[str, Callable[[str], list[Span]]] = {
            EMAIL: find_emails,
            CARD: find_cards,
            IBAN: find_ibans,
            IP: find_ips,
            NATIONAL_ID: find_national_ids,
        }
        self._finders = [finder for name, finder in finders.items() if name in self.types]

    def find(self, text: str) -> list[Span]:
        """Return the non-overlapping spans of personal data in ``text``, in text order."""
        candidates: list[Span] = []
        for finder in self._finders:
            candidates.extend(finder(text))

        # Phones last: the number matcher is the slowest finder, and it skips what the
        # others found. A digit string that is both a card and a phone number is a card.
        if self._phones is not None:
            candidates.extend(self._phones.find(text, candidates))

        return resolve_overlaps(candidates)

    def redact(self, text: str, start: Mapping[str, str] | None = None) -> Redacted:
        """Replace each value found in ``text`` with its placeholder.

        ``start`` is the mapping of an earlier call, such as an earlier message of the same
        chat or an earlier piece of the same document. A value already in it keeps its
        placeholder, and new values are numbered after the highest number of their type.
        ``start`` itself is not changed.
        """
        numbering = _Numbering(start or {})
        pieces: list[str] = []
        entities: list[Entity] = []
        position = 0

        for span in self.find(text):
            value = text[span.start : span.end]
            placeholder = numbering.placeholder_for(span.type, value)
            pieces.append(escape_lookalikes(text[position : span.start]))
            pieces.append(placeholder)
            entities.append(Entity(span.type, span.start, span.end, placeholder, value))
            position = span.end
        pieces.append(escape_lookalikes(text[position:]))

        distinct = {(entity.type, entity.placeholder) for entity in entities}
        counts = dict(Counter(entity_type for entity_type, _ in distinct))
        return Redacted("".join(pieces), numbering.mapping, counts, tuple(entities))


def _check_types(types: Iterable[str] | None) -> frozenset[str]:
    if types is None:
        return SUPPORTED_TYPES

    requested = frozenset(types)
    if PERSON in requested:
        raise UnsupportedEntityType(
            "PERSON detection is not built: it needs a local named-entity model, and none "
            f"is installed. Detectable types: {', '.join(sorted(SUPPORTED_TYPES))}"
        )
    unknown = requested - SUPPORTED_TYPES
    if unknown:
        raise UnsupportedEntityType(
            f"unknown entity types {sorted(unknown)}; "
            f"detectable types: {', '.join(sorted(SUPPORTED_TYPES))}"
        )
    return requested


class _Numbering:
    """Hand out placeholders per type, continuing an existing mapping."""

    def __init__(self, start: Mapping[str, str]) -> None:
        self.mapping: dict[str, str] = {}
        self._by_value: dict[tuple[str, str], str] = {}
        self._last: Counter[str] = Counter()

        for placeholder, value in start.items():
            parsed = parse_placeholder(placeholder)
            if parsed is None:
                # The key is a placeholder, never an original value, so it is safe to show.
                raise ValueError(
                    f"invalid placeholder {placeholder!r} in the start mapping; "
                    f"expected <TYPE_N> with TYPE one of {', '.join(ENTITY_TYPES)}"
                )
            entity_type, number = parsed
            self.mapping[placeholder] = value
            self._by_value.setdefault((entity_type, value), placeholder)
            self._last[entity_type] = max(self._last[entity_type], number)

    def placeholder_for(self, entity_type: str, value: str) -> str:
        known = self._by_value.get((entity_type, value))
        if known is not None:
            return known

        self._last[entity_type] += 1
        placeholder = format_placeholder(entity_type, self._last[entity_type])
        self.mapping[placeholder] = value
        self._by_value[(entity_type, value)] = placeholder
        return placeholder
