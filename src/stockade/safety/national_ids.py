"""National identity numbers: candidate patterns written here, validation from python-stdnum.

Each scheme pairs a pattern with a validator. Some numbers are only digits, and their
check accepts a large share of random digit strings: the Dutch BSN's 11-test accepts
about one in eleven. Such a scheme also needs a label such as "BSN" in the text just
before the number, because otherwise an order or account number of the same length
would be taken for an id. The UK National Insurance number has no check digit, so its
validator is the allocation rules of HMRC's National Insurance Manual (NIM39110),
written out below.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from stdnum.de import idnr
from stdnum.es import dni, nie
from stdnum.fr import nir
from stdnum.it import codicefiscale
from stdnum.nl import bsn
from stdnum.us import ssn

from stockade.safety.spans import NATIONAL_ID, Span

# Each pattern has its look-behind after the first character, so the regex engine can
# skip ahead to the next possible first character (see ``patterns``).

# How far before a number its label may start, in characters.
_LABEL_LOOKBEHIND = 48


@dataclass(frozen=True)
class IdScheme:
    """One kind of national id: how to find candidates and how to validate them."""

    name: str
    pattern: re.Pattern[str]
    is_valid: Callable[[str], bool]
    # Words of which one must appear shortly before the number, or None for no label.
    label: re.Pattern[str] | None = None
    # A cheaper pattern that any text with a candidate matches, tried first.
    hint: re.Pattern[str] | None = None


def _label(*words: str) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(words) + r")\b", re.IGNORECASE)


_NINO_NOT_FIRST = frozenset("DFIQUV")
_NINO_NOT_SECOND = frozenset("DFIOQUV")
_NINO_NOT_PREFIX = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})


def is_valid_nino(number: str) -> bool:
    """Check a UK National Insurance number against HMRC's prefix rules.

    Two letters, six digits and a suffix A to D. Neither prefix letter is D, F, I, Q, U or
    V, the second is not O, and BG, GB, KN, NK, NT, TN and ZZ are not allocated.
    """
    compact = number.replace(" ", "").upper()
    if not re.fullmatch(r"[A-Z]{2}\d{6}[A-D]", compact):
        return False
    prefix = compact[:2]
    if prefix[0] in _NINO_NOT_FIRST or prefix[1] in _NINO_NOT_SECOND:
        return False
    return prefix not in _NINO_NOT_PREFIX


_SSN_LABEL = _label("ssn", "social security")

SCHEMES: tuple[IdScheme, ...] = (
    IdScheme(
        "us_ssn",
        re.compile(r"\d(?<![\w-]\d)\d\d([- ])\d{2}\1\d{4}(?![\w-])"),
        ssn.is_valid,
    ),
    IdScheme(
        "us_ssn_compact",
        re.compile(r"\d(?<![\w.-]\d)\d{8}(?![\w-]|\.\d)"),
        ssn.is_valid,
        _SSN_LABEL,
    ),
    IdScheme(
        "gb_nino",
        re.compile(r"[A-Za-z](?<!\w.)[A-Za-z] ?\d{2} ?\d{2} ?\d{2} ?[A-Da-d](?!\w)"),
        is_valid_nino,
        # Letters are everywhere in prose, so look for the six digits and suffix first.
        hint=re.compile(r"\d\d ?\d\d ?\d\d ?[A-Da-d]"),
    ),
    IdScheme(
        "nl_bsn",
        re.compile(r"\d(?<![\w.-]\d)\d{3}\.?\d{2}\.?\d{3}(?![\w-]|\.\d)"),
        bsn.is_valid,
        _label("bsn", "burgerservicenummer", "sofinummer", "sofi-nummer", "citizen service number"),
    ),
    # Often written with thousands dots ("12.345.678-Z"), which stdnum does not strip.
    IdScheme(
        "es_dni",
        re.compile(r"\d(?<![\w.-]\d)\d\.?\d{3}\.?\d{3}-?[A-Za-z](?!\w)"),
        lambda number: dni.is_valid(number.replace(".", "")),
    ),
    IdScheme("es_nie", re.compile(r"[XYZ](?<![\w-].)-?\d{7}-?[A-Za-z](?!\w)"), nie.is_valid),
    # Printed as "2 95 10 99 126 111 93": sex, year, month, department, commune, serial,
    # key. The spaced form is distinctive; the bare 15 digits need a label.
    IdScheme(
        "fr_nir",
        re.compile(r"[1-478](?<![\w-].) \d{2} \d{2} (?:\d{2}|2[AB]) \d{3} \d{3} \d{2}(?![\w-])"),
        nir.is_valid,
    ),
    IdScheme(
        "fr_nir_compact",
        re.compile(r"[1-478](?<![\w.-].)\d{4}(?:\d{2}|2[AB])\d{8}(?![\w-]|\.\d)"),
        nir.is_valid,
        _label("nir", "insee", "s[ée]curit[ée] sociale", "social security", "num[ée]ro de s[ée]cu"),
    ),
    IdScheme(
        "de_idnr",
        re.compile(r"\d(?<![\w.-]\d)\d ?\d{3} ?\d{3} ?\d{3}(?![\w-]|\.\d)"),
        idnr.is_valid,
        _label(
            "steuer-?id",
            "steuer-identifikationsnummer",
            "steueridentifikationsnummer",
            "identifikationsnummer",
            "idnr",
            "tax id",
            "tin",
        ),
    ),
    IdScheme(
        "it_codice_fiscale",
        re.compile(
            r"[A-Z](?<!\w.)[A-Z]{5}[0-9LMNPQRSTUV]{2}[A-Z][0-9LMNPQRSTUV]{2}[A-Z][0-9LMNPQRSTUV]{3}[A-Z]"
            r"(?!\w)"
        ),
        codicefiscale.is_valid,
    ),
)


def find_national_ids(text: str) -> list[Span]:
    spans: list[Span] = []

    for scheme in SCHEMES:
        if scheme.hint is not None and not scheme.hint.search(text):
            continue
        for match in scheme.pattern.finditer(text):
            if not scheme.is_valid(match.group()):
                continue
            if scheme.label is not None and not _is_labelled(text, match.start(), scheme.label):
                continue
            spans.append(Span(NATIONAL_ID, match.start(), match.end()))

    return spans


def _is_labelled(text: str, start: int, label: re.Pattern[str]) -> bool:
    """Tell whether a label ends shortly before ``start`` with no other number in between."""
    labels = list(label.finditer(text, max(0, start - _LABEL_LOOKBEHIND), start))
    if not labels:
        return False
    between = text[labels[-1].end() : start]
    return not any(char.isdigit() for char in between)
