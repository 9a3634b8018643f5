"""Embedders behind one interface: text in, unit vectors of ``DIMENSIONS`` floats out.

- ``HashingEmbedder`` (the default): works offline with no model and no download. Word
  stems (Snowball) and character trigrams are hashed into signed buckets, so passages
  that share words or word forms point the same way. It knows no synonyms.
- ``OpenAIEmbedder``: any OpenAI-compatible ``/embeddings`` endpoint, asked for
  ``DIMENSIONS`` dimensions.
- ``SentenceTransformerEmbedder``: a local sentence-transformers model, from the
  ``local-models`` extra.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

import httpx
import snowballstemmer

from stockade.config import Settings
from stockade.keys.store import KeyStore

# The width of the embedding column (migration 0007).
DIMENSIONS = 384
EMBEDDINGS_KEY = "embeddings-api-key"
LOCAL_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_WORD = re.compile(r"\w+", re.UNICODE)
# Words too common to say what a passage is about.
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "do",
        "does",
        "for",
        "from",
        "has",
        "have",
        "how",
        "i",
        "if",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "our",
        "so",
        "that",
        "the",
        "their",
        "them",
        "there",
        "these",
        "they",
        "this",
        "to",
        "was",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
        "we",
    ]
)
_TRIGRAM_WEIGHT = 0.35
_STEMMER = snowballstemmer.stemmer("english")


class EmbedderError(RuntimeError):
    """The embedder could not turn text into vectors; the message says why."""


class Embedder(Protocol):
    name: str

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Return one unit vector of ``DIMENSIONS`` floats per text, in order."""
        ...


class HashingEmbedder:
    name = "hashing"

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [self._one(text) for text in texts]

    def _one(self, text: str) -> list[float]:
        vector = [0.0] * DIMENSIONS
        for feature, weight in _features(text).items():
            digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
            bucket = int.from_bytes(digest[:4], "little") % DIMENSIONS
            sign = 1.0 if digest[4] & 1 else -1.0
            vector[bucket] += sign * weight
        return _unit(vector)


class OpenAIEmbedder:
    def __init__(self, base_url: str, model: str, keystore: KeyStore, timeout: float = 30.0):
        self.name = f"openai:{model}"
        self.model = model
        self._url = f"{base_url}/embeddings"
        self._keystore = keystore
        self._timeout = timeout

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        key = self._keystore.get_secret(EMBEDDINGS_KEY)
        headers = {"Authorization": f"Bearer {key.reveal()}"} if key is not None else {}
        body = {"model": self.model, "input": list(texts), "dimensions": DIMENSIONS}
        try:
            response = httpx.post(self._url, json=body, headers=headers, timeout=self._timeout)
        except httpx.HTTPError as exc:
            raise EmbedderError(f"the embeddings endpoint failed: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise EmbedderError(f"the embeddings endpoint answered {response.status_code}")
        return _vectors_from(response, len(texts))


class SentenceTransformerEmbedder:
    def __init__(self, model: str = LOCAL_MODEL) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise EmbedderError(
                "STOCKADE_EMBEDDER=sentence-transformers needs the local-models extra:"
                " pip install 'stockade[local-models]'"
            ) from None
        self.name = f"sentence-transformers:{model}"
        self._model: Any = SentenceTransformer(model)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors = self._model.encode(list(texts), normalize_embeddings=True)
        result = [[float(value) for value in vector] for vector in vectors]
        if result and len(result[0]) != DIMENSIONS:
            raise EmbedderError(f"the model gives {len(result[0])} dimensions, not {DIMENSIONS}")
        return result


def embedder_from(settings: Settings, keystore: KeyStore) -> Embedder:
    if settings.embedder == "openai":
        assert settings.embeddings_url is not None  # checked by Settings
        return OpenAIEmbedder(
            settings.embeddings_url, settings.embeddings_model or "text-embedding-3-small", keystore
        )
    if settings.embedder == "sentence-transformers":
        return SentenceTransformerEmbedder(settings.embeddings_model or LOCAL_MODEL)
    return HashingEmbedder()


def vector_literal(vector: Sequence[float]) -> str:
    """pgvector's text form, for a ``cast(:v as vector)`` parameter."""
    return "[" + ",".join(f"{value:.7g}" for value in vector) + "]"


def _features(text: str) -> dict[str, float]:
    counts: Counter[str] = Counter()
    for word in _WORD.findall(text.lower()):
        if word in _STOPWORDS or len(word) < 2:
            continue
        counts["w:" + _stem(word)] += 1
        padded = f"#{word}#"
        counts.update("t:" + padded[start : start + 3] for start in range(len(padded) - 2))
    # Sublinear counts: a word said ten times is not ten times as telling.
    return {
        feature: (1.0 + math.log(count)) * (1.0 if feature[0] == "w" else _TRIGRAM_WEIGHT)
        for feature, count in counts.items()
    }


@functools.lru_cache(maxsize=65_536)
def _stem(word: str) -> str:
    # "refund", "refunds" and "refunded" become one feature.
    stem: str = _STEMMER.stemWord(word)
    return stem


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(value * value for value in vector))
    if norm == 0.0:
        # An empty or all-stopword text: a fixed direction, so the column stays valid.
        vector = [0.0] * DIMENSIONS
        vector[0] = 1.0
        return vector
    return [value / norm for value in vector]


def _vectors_from(response: httpx.Response, expected: int) -> list[list[float]]:
    try:
        data = sorted(response.json()["data"], key=lambda item: item["index"])
        vectors = [[float(value) for value in item["embedding"]] for item in data]
    except (ValueError, KeyError, TypeError) as exc:
        raise EmbedderError(
            f"the embeddings endpoint sent a malformed body ({exc!r:.80})"
        ) from None
    if len(vectors) != expected or any(len(vector) != DIMENSIONS for vector in vectors):
        raise EmbedderError(
            f"the embeddings endpoint sent {len(vectors)} vectors; expected {expected}"
            f" of {DIMENSIONS} dimensions"
        )
    return [_unit(vector) for vector in vectors]
