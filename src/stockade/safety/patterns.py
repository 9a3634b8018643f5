"""Finders for e-mail addresses, card numbers, IBANs and IP addresses.

The candidate patterns are written here; validation comes from libraries where one
exists: python-stdnum for the Luhn and IBAN checksums, the stdlib ``ipaddress`` module
for IP addresses. E-mail addresses have no checksum, so their pattern is the whole test.
"""

from __future__ import annotations

import functools
import ipaddress
import re

from stdnum import iban, luhn, numdb

from stockade.safety.spans import CARD, EMAIL, IBAN, IP, Span

# E-mail: a local part of word characters and "%+-", with single dots or apostrophes
# ("o'brien") inside, then a domain whose last label is letters only. A match may not
# start inside a longer local part. Other characters RFC 5322 allows are left out.
_EMAIL = re.compile(
    r"(?<![\w.%+-])"
    r"[\w%+-]+(?:[.'][\w%+-]+)*"
    r"@"
    r"(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+"
    r"[^\W\d_]{2,63}"
    r"(?![\w-])"
)

# Patterns put their look-behind after the first character where they can. The regex
# engine then skips ahead to the next possible first character instead of trying the
# look-behind at every position, which was about three times faster on 1 KB of prose.

# Card numbers: a run of digit groups joined by single spaces or hyphens. The run is
# atomic, so a run glued to a letter is dropped whole instead of shortened.
_DIGIT_RUN = re.compile(r"(?>\d(?<![\w.,]\d)\d*(?:[ -]\d+)*)(?![\w]|[.,]\d)")
_DIGIT_GROUP = re.compile(r"\d+")
_CARD_LENGTHS = range(13, 20)
# Groups of one or two digits are lists of small numbers, not how cards are printed.
_MIN_CARD_GROUP = 3

# Issuer prefixes (IIN ranges) and lengths of the major networks, so a Luhn-valid run of
# another kind (one in ten random numbers passes Luhn) is not taken for a card.
# Each entry: lowest prefix, highest prefix, allowed lengths.
_CARD_NETWORKS: tuple[tuple[str, str, frozenset[int]], ...] = (
    ("4", "4", frozenset({13, 16, 19})),  # Visa
    ("51", "55", frozenset({16})),  # Mastercard
    ("2221", "2720", frozenset({16})),  # Mastercard 2-series
    ("34", "34", frozenset({15})),  # American Express
    ("37", "37", frozenset({15})),  # American Express
    ("300", "305", frozenset(range(14, 20))),  # Diners Club
    ("36", "36", frozenset(range(14, 20))),  # Diners Club
    ("38", "39", frozenset(range(14, 20))),  # Diners Club
    ("3528", "3589", frozenset(range(16, 20))),  # JCB
    ("6011", "6011", frozenset(range(16, 20))),  # Discover
    ("644", "649", frozenset(range(16, 20))),  # Discover
    ("65", "65", frozenset(range(16, 20))),  # Discover
    ("62", "62", frozenset(range(16, 20))),  # UnionPay
    ("50", "50", frozenset(range(12, 20))),  # Maestro
    ("56", "69", frozenset(range(12, 20))),  # Maestro
)

# IBAN: a country code and two check digits, then as many letters and digits as the
# country's IBAN has, optionally in groups separated by single spaces. The length per
# country comes from stdnum's copy of the IBAN registry. The pattern is anchored on the
# check digits, which are rarer than letters, with the country code behind them.
_IBAN_CHECK_DIGITS = re.compile(r"\d\d(?<=(?<!\w)[A-Za-z]{2}\d\d)")
_IBAN_REGISTRY = numdb.get("iban")

_IPV4 = re.compile(r"\d(?<![\w.]\d)\d{0,2}\.(?:\d{1,3}\.){2}\d{1,3}(?![\w]|\.\d)")
# A dotted quad right after one of these words is a version or section number.
_VERSION_LABEL = re.compile(
    r"(?:\b(?:version|ver|release|build|firmware|revision|rev|section|chapter)\.?:?|§)\s*$",
    re.IGNORECASE,
)
_LABEL_LOOKBEHIND = 24
# IPv6 candidates: hex digits and colons with at least two colons, an optional dotted
# IPv4 tail and an optional zone. ipaddress decides.
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f:]*:[0-9A-Fa-f]*:[0-9A-Fa-f:.]*(?:%[\w-]+(?:\.[\w-]+)*)?")
_HEX_DIGIT = re.compile(r"[0-9A-Fa-f]")


def find_emails(text: str) -> list[Span]:
    if "@" not in text:
        return []
    return [Span(EMAIL, match.start(), match.end()) for match in _EMAIL.finditer(text)]


def find_cards(text: str) -> list[Span]:
    spans: list[Span] = []
    for run in _DIGIT_RUN.finditer(text):
        groups = [(group.start(), group.end()) for group in _DIGIT_GROUP.finditer(run.group())]
        offset = run.start()
        spans.extend(
            Span(CARD, offset + start, offset + end)
            for start, end in _card_windows(run.group(), groups)
        )
    return spans


def _card_windows(run: str, groups: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Return the (start, end) of each stretch of whole groups that is a card number."""
    windows: list[tuple[int, int]] = []

    for first in range(len(groups)):
        digits = ""
        for last in range(first, len(groups)):
            start, end = groups[last]
            if end - start < _MIN_CARD_GROUP:
                break
            digits += run[start:end]
            if len(digits) > _CARD_LENGTHS[-1]:
                break
            if is_card_number(digits):
                windows.append((groups[first][0], end))

    return windows


def is_card_number(digits: str) -> bool:
    """Tell whether a digit string has a card network's prefix and length, and passes Luhn."""
    if len(digits) not in _CARD_LENGTHS:
        return False
    if not any(
        low <= digits[: len(low)] <= high and len(digits) in lengths
        for low, high, lengths in _CARD_NETWORKS
    ):
        return False
    return luhn.is_valid(digits)


def find_ibans(text: str) -> list[Span]:
    spans: list[Span] = []
    covered_until = 0

    for check_digits in _IBAN_CHECK_DIGITS.finditer(text):
        start = check_digits.start() - 2
        if start < covered_until:
            continue
        end = _iban_end(text, start, check_digits.end())
        if end is not None:
            spans.append(Span(IBAN, start, end))
            covered_until = end

    return spans


def _iban_end(text: str, start: int, body_start: int) -> int | None:
    """Return where the IBAN starting at ``start`` ends, or None when there is none."""
    length = _iban_length(text[start : start + 2].upper())
    if length is None:
        return None

    # Count letters and digits, skipping single spaces, until the country's length.
    count = 4
    end = body_start
    while count < length and end < len(text):
        if text[end].isascii() and text[end].isalnum():
            count += 1
        elif text[end] != " " or text[end - 1] == " ":
            return None
        end += 1

    glued = end < len(text) and text[end].isalnum()
    if count < length or glued or not iban.is_valid(text[start:end]):
        return None
    return end


@functools.cache
def _iban_length(country_code: str) -> int | None:
    """Return the IBAN length of a country from stdnum's registry, or None if it has none."""
    info = _IBAN_REGISTRY.info(country_code)
    structure = info[0][1].get("bban") if info else None
    if not structure:
        return None
    return 4 + sum(int(size) for size in re.findall(r"(\d+)!", structure))


def find_ips(text: str) -> list[Span]:
    spans: list[Span] = []
    if "." in text:
        spans.extend(_find_ipv4(text))
    if text.count(":") >= 2:
        spans.extend(_find_ipv6(text))
    return spans


def _find_ipv4(text: str) -> list[Span]:
    spans: list[Span] = []

    for match in _IPV4.finditer(text):
        try:
            ipaddress.IPv4Address(match.group())
        except ValueError:
            continue
        before = text[max(0, match.start() - _LABEL_LOOKBEHIND) : match.start()]
        if _VERSION_LABEL.search(before):
            continue
        spans.append(Span(IP, match.start(), match.end()))

    return spans


def _find_ipv6(text: str) -> list[Span]:
    spans: list[Span] = []

    for match in _IPV6.finditer(text):
        candidate = match.group()
        # A sentence or a label may end right after an address: retry without that mark.
        if not _is_ipv6(candidate) and candidate[-1] in ".:":
            candidate = candidate[:-1]
        end = match.start() + len(candidate)
        glued = end < len(text) and (text[end].isalnum() or text[end] == "_")
        if _is_ipv6(candidate) and not glued:
            spans.append(Span(IP, match.start(), end))

    return spans


def _is_ipv6(candidate: str) -> bool:
    if not _HEX_DIGIT.search(candidate):
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True
