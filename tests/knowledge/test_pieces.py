"""Chunking, text extraction and the embedders, each on its own."""

from __future__ import annotations

import itertools
import json
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stockade.keys import LocalKeyStore, Secret
from stockade.knowledge.chunking import chunk_text
from stockade.knowledge.embedders import (
    DIMENSIONS,
    EMBEDDINGS_KEY,
    EmbedderError,
    HashingEmbedder,
    OpenAIEmbedder,
)
from stockade.knowledge.extract import UnsupportedDocument, extract_text, media_type_of
from tests.knowledge.samples import minimal_pdf

words = st.text(alphabet="abcdefghij ", min_size=1, max_size=30)


@given(st.lists(words, min_size=1, max_size=40))
def test_chunks_keep_every_word(paragraphs: list[str]) -> None:
    text = "\n\n".join(paragraphs)
    chunks = chunk_text(text, target=120)
    assert all(len(chunk) <= 120 for chunk in chunks)
    assert set(" ".join(chunks).split()) == set(text.split())


def test_long_paragraph_splits_between_sentences_with_overlap() -> None:
    sentences = [f"Sentence number {n} talks about topic {n}." for n in range(40)]
    chunks = chunk_text(" ".join(sentences), target=200)
    assert len(chunks) > 5
    for previous, following in itertools.pairwise(chunks):
        assert following.split(". ")[0].rstrip(".") in previous  # the cut sentence repeats
    assert all(chunk.endswith(".") for chunk in chunks)


def test_extraction_by_format() -> None:
    assert media_type_of("Report.PDF") == "application/pdf"
    assert extract_text(minimal_pdf("Forty spaces in the garage"), "application/pdf").startswith(
        "Forty spaces"
    )
    html = b"<h1>Title</h1><style>p{}</style><p>One &amp; two</p><p>three</p>"
    assert extract_text(html, "text/html") == "Title\n\nOne & two\n\nthree"
    assert extract_text("\ufeffna\u00efve".encode(), "text/plain") == "na\u00efve"
    for data, media_type in ((b"   ", "text/plain"), (b"<p></p>", "text/html")):
        with pytest.raises(UnsupportedDocument, match="no text"):
            extract_text(data, media_type)
    with pytest.raises(UnsupportedDocument):
        media_type_of("archive.zip")


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_hashing_embedder_follows_shared_words() -> None:
    embedder = HashingEmbedder()
    refund, refunds, parking, empty = embedder.embed(
        [
            "How long does a refund take?",
            "Refunds are paid within five days.",
            "The parking garage opens at seven.",
            "the and of",
        ]
    )
    for vector in (refund, refunds, parking, empty):
        assert len(vector) == DIMENSIONS
        assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, rel_tol=1e-9)
    assert _cosine(refund, refunds) > _cosine(refund, parking) + 0.1
    assert embedder.embed(["same text"]) == embedder.embed(["same text"])


class _Embeddings(BaseHTTPRequestHandler):
    """An OpenAI-compatible /v1/embeddings endpoint whose response each test sets."""

    answer: Any = None
    status = 200
    seen: list[dict[str, Any]] = []  # noqa: RUF012 - shared by the test on purpose

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"auth": self.headers.get("Authorization"), "body": body})
        answer = self.answer(body) if callable(self.answer) else self.answer
        payload = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_: Any) -> None:
        return


@pytest.fixture
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Embeddings)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Embeddings.seen, _Embeddings.status = [], 200
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _answer(body: dict[str, Any]) -> dict[str, Any]:
    data = [
        {"object": "embedding", "index": index, "embedding": [float(index + 1)] * DIMENSIONS}
        for index, _ in enumerate(body["input"])
    ]
    return {"object": "list", "data": list(reversed(data)), "model": body["model"]}


def test_openai_embedder_speaks_the_protocol(upstream: str, tmp_path: Any) -> None:
    keystore = LocalKeyStore(tmp_path / "keys")
    keystore.set_secret(EMBEDDINGS_KEY, Secret("sk-test-embeddings"))
    _Embeddings.answer = staticmethod(_answer)
    embedder = OpenAIEmbedder(upstream, "text-embedding-3-small", keystore)

    first, second = embedder.embed(["one", "two"])
    assert math.isclose(first[0], 1 / math.sqrt(DIMENSIONS))  # unit length
    assert first == second
    request = _Embeddings.seen[0]
    assert request["auth"] == "Bearer sk-test-embeddings"
    assert request["body"] == {
        "model": "text-embedding-3-small",
        "input": ["one", "two"],
        "dimensions": DIMENSIONS,
    }


@pytest.mark.parametrize(
    ("status", "answer", "message"),
    [
        (500, {"error": {"message": "down"}}, "returned HTTP 500"),
        (200, b"not json", "malformed"),
        (200, {"data": [{"index": 0, "embedding": [1.0, 2.0]}]}, "expected 1 of 384"),
        (200, {"data": "nothing"}, "malformed"),
    ],
)
def test_openai_embedder_refuses_bad_answers(
    upstream: str, tmp_path: Any, status: int, answer: Any, message: str
) -> None:
    _Embeddings.status, _Embeddings.answer = status, answer
    embedder = OpenAIEmbedder(upstream, "m", LocalKeyStore(tmp_path / "keys"))
    with pytest.raises(EmbedderError, match=message):
        embedder.embed(["text"])


def test_openai_embedder_reports_an_unreachable_endpoint(tmp_path: Any) -> None:
    # Port 9 on loopback (discard) has no listener here: the connection is refused.
    embedder = OpenAIEmbedder("http://127.0.0.1:9/v1", "m", LocalKeyStore(tmp_path / "keys"))
    with pytest.raises(EmbedderError, match="ConnectError"):
        embedder.embed(["text"])
