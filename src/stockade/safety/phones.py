"""Phone numbers, found and validated by ``phonenumbers`` (Google's libphonenumber rules).

The matcher runs at ``Leniency.VALID``: a number must be valid for its region's
numbering plan, and may not be glued to letters. Numbers written with a "+" country code
are found whatever the region. A number in national format is read with each region of
the list in order, and the first region that finds numbers in a stretch of digits wins.
A region whose national format starts with a trunk prefix ("0" in the UK, Germany,
France and the Netherlands) is tried only on stretches with a group that starts with it.
The matcher rejects a national number without its trunk prefix at this leniency anyway,
so this only saves parsing. NANP regions (US, Canada), where the trunk prefix "1" is
left out, are always tried.

The matcher parses every digit sequence it meets, a few tens of microseconds each. So
it runs only on stretches of at least seven digits, which every full number in the
default regions has, and prose with small numbers in it never reaches it.

NOTE: text made of little else than digit groups (a pasted table of figures) costs about
10 to 25 ms per KB here, against 0.1 to 0.3 ms per KB for prose, because every stretch
is parsed in each region (measured with bench/redaction.py's inputs and by hand on
100 KB of "1234 " repeated). Bounding that needs a cap on the input size at the caller,
or a cheaper prefilter per region than libphonenumber's parser.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import phonenumbers
from phonenumbers import Leniency, PhoneNumberMatcher

from stockade.safety.spans import PHONE, Span

# US first, then the European markets the product sells to. Order matters only for
# national-format numbers, which the first region that validates them claims.
DEFAULT_PHONE_REGIONS = ("US", "GB", "DE", "FR", "NL", "ES")

# A stretch of digits and the separators people write in phone numbers, with an optional
# extension ("ext. 12", "x12"), which libphonenumber reads as part of the number.
_DIGIT_STRETCH = re.compile(
    r"\+?\(?\d[\d ().\-/]*\d\)?(?:[ ]?(?:ext\.?|x|#)[ ]?\d{1,6}\b)?", re.IGNORECASE
)
_MIN_DIGITS = 7
_NANP_COUNTRY_CODE = 1
# Dates have enough digits to reach the matcher, which rejects them after parsing.
_DATE = re.compile(r"\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[/.\-]\d{1,2}[/.\-]\d{2,4}")

# A number right after one of these labels is an identifier that happens to be a valid
# phone number ("Order 4155550123"), and a number inside a URL is a path or query value.
_IDENTIFIER_LABEL = re.compile(
    r"(?:\b(?:order|invoice|ref|reference|tracking|ticket|account|acct|case|po|sku|serial|"
    r"transaction|txn|booking|confirmation)\b\.?\s*(?:no\b\.?|number|nr\b\.?|#)?\s*[:#]?\s*"
    r"|#\s*)$",
    re.IGNORECASE,
)
_LABEL_LOOKBEHIND = 32
_URL = re.compile(r"\b(?:https?|ftp)://\S+", re.IGNORECASE)
# "ddd-dd-dddd" is how US social security numbers are printed, and no plan of the default
# regions groups its numbers so. Such a string that failed the SSN check is not a phone
# number either, though it may be valid in a 9- or 10-digit plan ("666-12-3456" in Spain).
_SSN_SHAPE = re.compile(r"\d{3}-\d{2}-\d{4}")


class PhoneFinder:
    """Find phone numbers valid in one of ``regions`` (ISO 3166 codes such as "US")."""

    def __init__(self, regions: Sequence[str] = DEFAULT_PHONE_REGIONS) -> None:
        unknown = [region for region in regions if region not in phonenumbers.SUPPORTED_REGIONS]
        if not regions or unknown:
            raise ValueError(
                f"invalid phone regions {list(regions)!r}: give one or more ISO 3166 codes "
                "that phonenumbers supports, such as 'US' or 'GB'"
            )
        self.regions = tuple(regions)
        self._trunk_prefix_starts = {region: _trunk_prefix_start(region) for region in regions}

    def find(self, text: str, found_before: Sequence[Span] = ()) -> list[Span]:
        """Return the phone numbers in ``text`` outside the ``found_before`` spans.

        Those spans (cards, IBANs, ids found by other finders) are masked with letters, so
        the matcher does not try every split of a card number as a phone number.
        """
        masked = _mask(text, found_before)
        spans: list[Span] = []

        for stretch in _DIGIT_STRETCH.finditer(masked):
            if _worth_matching(masked, stretch):
                spans.extend(self._match_stretch(masked, stretch.start(), stretch.end()))

        if not spans:
            return spans
        urls = [(url.start(), url.end()) for url in _URL.finditer(text)] if "://" in text else []
        return [span for span in spans if not _is_identifier(text, span, urls)]

    def _match_stretch(self, text: str, start: int, end: int) -> list[Span]:
        """Match the stretch region by region until too few digits are left unmatched."""
        spans: list[Span] = []

        for region in self.regions:
            trunk_prefix_start = self._trunk_prefix_starts[region]
            if trunk_prefix_start is not None and not trunk_prefix_start.search(text, start, end):
                continue
            for span in _match(text, start, end, region):
                if not any(span.start < other.end and other.start < span.end for other in spans):
                    spans.append(span)
            if _unmatched_digits(text, start, end, spans) < _MIN_DIGITS:
                break

        return spans


def _trunk_prefix_start(region: str) -> re.Pattern[str] | None:
    """Return a pattern for a digit group that starts with the region's trunk prefix."""
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    prefix = metadata.national_prefix if metadata is not None else None
    if prefix is None or phonenumbers.country_code_for_region(region) == _NANP_COUNTRY_CODE:
        return None
    return re.compile(rf"(?<!\d){re.escape(prefix)}")


def _worth_matching(text: str, stretch: re.Match[str]) -> bool:
    digits = sum(char.isdigit() for char in stretch.group())
    if digits < _MIN_DIGITS or _DATE.fullmatch(stretch.group()):
        return False
    return not _has_identifier_label(text, stretch.start())


def _unmatched_digits(text: str, start: int, end: int, spans: list[Span]) -> int:
    covered = [False] * (end - start)
    for span in spans:
        for index in range(max(span.start, start), min(span.end, end)):
            covered[index - start] = True
    return sum(
        1 for index, char in enumerate(text[start:end]) if char.isdigit() and not covered[index]
    )


def _mask(text: str, spans: Sequence[Span]) -> str:
    if not spans:
        return text
    pieces: list[str] = []
    position = 0
    for span in sorted(spans, key=lambda span: span.start):
        if span.start < position:
            continue
        pieces.append(text[position : span.start])
        pieces.append("X" * (span.end - span.start))
        position = span.end
    pieces.append(text[position:])
    return "".join(pieces)


def _match(text: str, start: int, end: int, region: str) -> list[Span]:
    """Run the matcher on text[start:end] plus one character of context on each side."""
    low = max(0, start - 1)
    high = min(len(text), end + 1)
    # The matcher stops after max_tries candidates that are not numbers, 65,535 by default,
    # which a long stretch of numbers can reach. Allow one per character instead.
    matcher = PhoneNumberMatcher(
        text[low:high], region, leniency=Leniency.VALID, max_tries=max(high - low, 1)
    )
    return [Span(PHONE, low + match.start, low + match.end) for match in matcher]


def _has_identifier_label(text: str, start: int) -> bool:
    before = text[max(0, start - _LABEL_LOOKBEHIND) : start]
    return _IDENTIFIER_LABEL.search(before) is not None


def _is_identifier(text: str, span: Span, urls: list[tuple[int, int]]) -> bool:
    if _SSN_SHAPE.fullmatch(text, span.start, span.end):
        return True
    if any(url_start <= span.start and span.end <= url_end for url_start, url_end in urls):
        return True
    return _has_identifier_label(text, span.start)
