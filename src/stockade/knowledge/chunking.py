"""Split a document's text into passages of about ``TARGET_CHARS`` characters.

Paragraphs are kept whole where they fit; a long paragraph is split between sentences,
and a sentence longer than a chunk between words. The last sentence of a chunk split
from a paragraph opens the next one, so a passage spanning the cut is found in either.
"""

from __future__ import annotations

import re

TARGET_CHARS = 800
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def chunk_text(text: str, target: int = TARGET_CHARS) -> list[str]:
    chunks: list[str] = []
    current = ""
    for paragraph in _paragraphs(text):
        for piece in _pieces(paragraph, target):
            if current and len(current) + 2 + len(piece) > target:
                chunks.append(current)
                current = ""
            current = f"{current}\n\n{piece}" if current else piece
    if current:
        chunks.append(current)
    return chunks


def _paragraphs(text: str) -> list[str]:
    return [" ".join(part.split()) for part in _PARAGRAPH_BREAK.split(text) if part.strip()]


def _pieces(paragraph: str, target: int) -> list[str]:
    if len(paragraph) <= target:
        return [paragraph]

    pieces: list[str] = []
    current = ""
    for sentence in _sentences(paragraph, target):
        if current and len(current) + 1 + len(sentence) > target:
            pieces.append(current)
            last = _SENTENCE_END.split(current)[-1]
            current = last if len(last) + 1 + len(sentence) <= target else ""
        current = f"{current} {sentence}" if current else sentence
    if current:
        pieces.append(current)
    return pieces


def _sentences(paragraph: str, target: int) -> list[str]:
    sentences: list[str] = []
    for sentence in _SENTENCE_END.split(paragraph):
        while len(sentence) > target:
            cut = sentence.rfind(" ", 0, target)
            cut = cut if cut > 0 else target
            sentences.append(sentence[:cut])
            sentence = sentence[cut:].lstrip()
        if sentence:
            sentences.append(sentence)
    return sentences
