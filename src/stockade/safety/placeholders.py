"""Typed placeholders such as ``<EMAIL_1>``, the escaping of look-alikes, and ``restore``.

A text may already contain a string shaped like a placeholder: a user pasting an earlier
redacted prompt, or someone trying to have ``restore`` put another value in its place.
Redaction therefore escapes every look-alike it leaves in the text by adding one
backslash after its "<" (``<EMAIL_1>`` becomes ``<\\EMAIL_1>``, and ``<\\EMAIL_1>``
becomes ``<\\\\EMAIL_1>``), and ``restore`` removes one again. Only a look-alike with no
backslash is a real placeholder, so ``restore(redact(text).text, mapping) == text`` holds
for every text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from stockade.safety.spans import ENTITY_TYPES

# Any "<NAME_N>" with an upper-case name, after any number of backslashes. This is wider
# than the placeholders this module writes, so a type added later is escaped already.
_LOOKALIKE = re.compile(r"<(\\*)([A-Z]+(?:_[A-Z]+)*_\d+)>")
_PLACEHOLDER = re.compile(r"<(" + "|".join(ENTITY_TYPES) + r")_([1-9]\d*)>")
# The placeholders that redaction writes (escaped look-alikes do not match).
PLACEHOLDER = _PLACEHOLDER


def format_placeholder(entity_type: str, number: int) -> str:
    return f"<{entity_type}_{number}>"


def parse_placeholder(placeholder: str) -> tuple[str, int] | None:
    """Return the type and number of a placeholder this module could have written, else None."""
    match = _PLACEHOLDER.fullmatch(placeholder)
    if match is None:
        return None
    return match.group(1), int(match.group(2))


def escape_lookalikes(text: str) -> str:
    if "<" not in text:
        return text
    return _LOOKALIKE.sub(r"<\\\1\2>", text)


def restore(text: str, mapping: Mapping[str, str]) -> str:
    """Put the original values back for the placeholders of ``mapping`` found in ``text``.

    A placeholder that ``mapping`` lacks stays as it is, and an escaped look-alike loses
    one backslash. Replacement is one pass, so a restored value is never read again.
    """
    if "<" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        backslashes, name = match.group(1), match.group(2)
        if backslashes:
            return f"<{backslashes[1:]}{name}>"
        whole = match.group()
        return mapping.get(whole, whole)

    return _LOOKALIKE.sub(replace, text)
