"""The offline ``extractive`` provider: answers with sentences of the retrieved passages.

It runs no language model and needs no network, so the demo works anywhere. Its answer
says that it is extractive, quotes the sentences that share the most words with the
question, each with the ``[n]`` of its passage, and lists the sources. Without
passages it says that it found none rather than inventing an answer.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence

from stockade.gateway.providers import (
    ChatCall,
    ChatResult,
    SourcePassage,
    StreamEvent,
    Usage,
    estimate_prompt_tokens,
    estimate_tokens,
)

NAME = "extractive"
LABEL = (
    "Answered by Stockade's offline extractive provider: the sentences below are quoted"
    " from this tenant's documents, and no language model wrote them."
)
NO_PASSAGES = (
    "Stockade's offline extractive provider answers only from this tenant's documents,"
    " and it found no passage that matches the question."
)
_MAX_SENTENCES = 3
_STREAM_PIECE = 64
_WORD = re.compile(r"[^\W_]{3,}")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# Words too common to show that a sentence is about the question.
_STOPWORDS = frozenset(
    [
        "the",
        "and",
        "for",
        "are",
        "but",
        "not",
        "you",
        "all",
        "any",
        "can",
        "had",
        "her",
        "was",
        "one",
        "our",
        "out",
        "has",
        "his",
        "how",
        "its",
        "may",
        "who",
        "did",
        "get",
        "him",
        "let",
        "say",
        "she",
        "too",
        "use",
        "what",
        "when",
        "where",
        "which",
        "with",
        "this",
        "that",
        "from",
        "have",
        "they",
        "will",
        "would",
        "there",
        "their",
        "about",
        "into",
        "than",
        "then",
        "them",
        "these",
        "those",
        "does",
        "is",
    ]
)


class ExtractiveProvider:
    name = NAME

    async def complete(self, call: ChatCall) -> ChatResult:
        content = compose_answer(call.question, call.passages)
        usage = Usage(estimate_prompt_tokens(call.messages), estimate_tokens(content))
        return ChatResult(content=content, finish_reason="stop", usage=usage)

    async def open_stream(self, call: ChatCall) -> AsyncIterator[StreamEvent]:
        result = await self.complete(call)
        return _pieces(result)


async def _pieces(result: ChatResult) -> AsyncIterator[StreamEvent]:
    for start in range(0, len(result.content), _STREAM_PIECE):
        yield StreamEvent(delta=result.content[start : start + _STREAM_PIECE])
    yield StreamEvent(finish_reason=result.finish_reason)
    yield StreamEvent(usage=result.usage)


def compose_answer(question: str, passages: Sequence[SourcePassage]) -> str:
    """Quote the sentences of ``passages`` that best match ``question``, with citations."""
    if not passages:
        return NO_PASSAGES
    wanted = _words(question)
    candidates = [
        (len(wanted & _words(sentence)), order, position, sentence)
        for order, passage in enumerate(passages)
        for position, sentence in enumerate(_sentences(passage.text))
    ]
    # The most shared words first; on a tie, the earlier passage and sentence.
    best = sorted(candidates, key=lambda item: (-item[0], item[1], item[2]))[:_MAX_SENTENCES]
    # Shown in document order, each with its passage's number.
    chosen = sorted(best, key=lambda item: (item[1], item[2]))
    lines = [LABEL, ""]
    lines += [f"- {sentence} [{passages[order].index}]" for _, order, _, sentence in chosen]
    lines += ["", "Sources:"]
    lines += [f"[{passage.index}] {passage.title}" for passage in passages]
    return "\n".join(lines)


def _sentences(text: str) -> list[str]:
    return [part.strip() for part in _SENTENCE_END.split(" ".join(text.split())) if part.strip()]


def _words(text: str) -> set[str]:
    return {word for word in _WORD.findall(text.lower()) if word not in _STOPWORDS}
