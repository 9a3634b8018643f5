"""The documents API: upload, background indexing with progress, limits, delete, reveal."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from fastapi.testclient import TestClient
from sqlalchemy import text

from stockade.billing.plans import set_plan
from stockade.knowledge.embedders import HashingEmbedder
from stockade.knowledge.service import Knowledge, Upload
from stockade.runtime import Runtime
from tests.conftest import Factory, Member, bearer
from tests.knowledge.conftest import skip_queue
from tests.knowledge.samples import minimal_pdf

HANDBOOK = (
    "Expense reports are due on the fifth working day of each month.\n\n"
    "Questions about travel go to Ines Duarte at ines.duarte@example.com or +1 202-555-0143."
)


def _headers(factory: Factory, member: Member) -> dict[str, str]:
    return bearer(factory.token(member))


def test_upload_is_indexed_in_the_background(
    client: TestClient, factory: Factory, drain: Callable[[], None]
) -> None:
    member = factory.member(roles=("contributor",))
    headers = _headers(factory, member)

    created = client.post(
        "/api/v1/documents", json={"title": "Handbook", "text": HANDBOOK}, headers=headers
    )
    assert created.status_code == 202, created.text
    document = created.json()
    assert document["status"] == "queued"
    assert document["chunks_done"] == 0
    assert document["chunks_total"] is None

    drain()
    read = client.get(f"/api/v1/documents/{document['id']}", headers=headers).json()
    assert read["status"] == "ready"
    assert read["chunks_total"] >= 1
    assert read["chunks_done"] == read["chunks_total"]

    listed = client.get("/api/v1/documents", headers=headers).json()["items"]
    assert [item["id"] for item in listed] == [document["id"]]
    assert "text" not in listed[0]

    found = client.get(
        "/api/v1/search", params={"q": "when are expense reports due"}, headers=headers
    )
    assert found.status_code == 200, found.text
    best = found.json()["results"][0]
    assert "fifth working day" in best["text"]
    assert best["document_id"] == document["id"]
    assert best["title"] == "Handbook"
    assert "pii" not in best  # placeholders' originals never leave through search


def test_pii_redacted_and_revealed_to_admin(
    client: TestClient, factory: Factory, runtime: Runtime, drain: Callable[[], None]
) -> None:
    tenant = factory.tenant("pii")
    writer = factory.member(tenant, roles=("contributor",))
    admin = factory.member(tenant, roles=("admin",))
    created = client.post(
        "/api/v1/documents",
        json={"title": "Travel for ines.duarte@example.com", "text": HANDBOOK},
        headers=_headers(factory, writer),
    ).json()
    # The title is redacted at once, the text by the indexing job.
    assert created["title"] == "Travel for <EMAIL_1>"
    assert created["redacted"] == {}
    drain()

    path = f"/api/v1/documents/{created['id']}"
    plain = client.get(path, headers=_headers(factory, writer)).json()
    assert plain["redacted"] == {"EMAIL": 1, "PHONE": 1}
    assert "ines.duarte@example.com" not in plain["text"]
    assert "<EMAIL_1>" in plain["text"]
    assert "<PHONE_1>" in plain["text"]
    assert plain["revealed"] is False

    refused = client.get(path, params={"reveal": "true"}, headers=_headers(factory, writer))
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"

    revealed = client.get(path, params={"reveal": "true"}, headers=_headers(factory, admin)).json()
    assert revealed["text"] == HANDBOOK
    assert revealed["revealed"] is True
    assert revealed["title"] == "Travel for ines.duarte@example.com"
    with runtime.db.owner.begin() as conn:
        actions = (
            conn.execute(
                text("select action from audit_events where tenant_id = :t order by seq"),
                {"t": tenant[0]},
            )
            .scalars()
            .all()
        )
    assert actions == ["document:created", "pii:revealed"]


def test_multipart_uploads_of_each_format(
    client: TestClient, factory: Factory, drain: Callable[[], None]
) -> None:
    member = factory.member(roles=("contributor",))
    headers = _headers(factory, member)
    files = {
        "notes.txt": b"Plain text about the parking garage.",
        "guide.md": b"# Guide\n\nThe *parking garage* opens at seven.",
        "page.html": (
            b"<html><head><title>x</title><script>var hidden = 1;</script></head>"
            b"<body><p>The parking garage closes at nine.</p></body></html>"
        ),
        "memo.pdf": minimal_pdf("The parking garage has forty spaces."),
    }
    ids = {}
    for name, data in files.items():
        response = client.post("/api/v1/documents", files={"file": (name, data)}, headers=headers)
        assert response.status_code == 202, (name, response.text)
        assert response.json()["title"] == name
        ids[name] = response.json()["id"]

    drain()
    for name, document_id in ids.items():
        read = client.get(f"/api/v1/documents/{document_id}", headers=headers).json()
        assert read["status"] == "ready", name
        assert "parking garage" in read["text"], name
    html = client.get(f"/api/v1/documents/{ids['page.html']}", headers=headers).json()
    assert "hidden" not in html["text"]


def test_bad_uploads_get_clear_answers(client: TestClient, factory: Factory) -> None:
    member = factory.member(roles=("contributor",))
    headers = _headers(factory, member)
    cases = [
        ({"files": {"file": ("tool.exe", b"MZ")}}, 422, "cannot read .exe"),
        ({"files": {"file": ("broken.pdf", b"%PDF-1.4 not really")}}, 422, "PDF"),
        ({"files": {"file": ("latin.txt", "caf\xe9".encode("latin-1"))}}, 422, "UTF-8"),
        ({"files": {"other": ("a.txt", b"x")}}, 422, "'file'"),
        ({"json": {"title": "x"}}, 422, "text"),
        ({"json": {"title": "x", "text": "a\x00b"}}, 422, "NUL"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, "JSON"),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 422, "multipart"),
    ]
    for kwargs, status, words in cases:
        extra = kwargs.pop("headers", {})
        response = client.post("/api/v1/documents", headers={**headers, **extra}, **kwargs)
        assert response.status_code == status, (kwargs, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert words in response.json()["detail"], response.json()
    assert client.get("/api/v1/documents", headers=headers).json()["items"] == []


def test_plan_limits_on_size_and_count(
    client: TestClient, factory: Factory, runtime: Runtime
) -> None:
    tenant = factory.tenant("limits")
    member = factory.member(tenant, roles=("contributor",))
    headers = _headers(factory, member)
    free = runtime.plans.by_name("free")

    too_big = "x" * (free.document_bytes + 1)
    for kwargs in (
        {"json": {"title": "big", "text": too_big}},
        {"files": {"file": ("big.txt", too_big)}},
    ):
        response = client.post("/api/v1/documents", headers=headers, **kwargs)
        assert response.status_code == 413, response.text
        assert response.json()["limit"] == free.document_bytes

    for number in range(free.documents):
        response = client.post(
            "/api/v1/documents", json={"title": f"d{number}", "text": "short"}, headers=headers
        )
        assert response.status_code == 202
    refused = client.post(
        "/api/v1/documents", json={"title": "one more", "text": "x"}, headers=headers
    )
    assert refused.status_code == 402
    assert refused.json()["limit"] == free.documents

    set_plan(runtime.db.owner, tenant[0], runtime.plans.by_name("pro"), "upgrade")
    accepted = client.post(
        "/api/v1/documents", json={"title": "more", "text": "x"}, headers=headers
    )
    assert accepted.status_code == 202


def test_delete_removes_chunks_and_vectors(
    client: TestClient, factory: Factory, runtime: Runtime, drain: Callable[[], None]
) -> None:
    member = factory.member(roles=("contributor",))
    headers = _headers(factory, member)
    created = client.post(
        "/api/v1/documents", json={"title": "Gone", "text": HANDBOOK * 20}, headers=headers
    ).json()
    drain()

    def chunks() -> int:
        with runtime.db.owner.begin() as conn:
            return int(
                conn.execute(
                    text("select count(*) from document_chunks where document_id = :d"),
                    {"d": created["id"]},
                ).scalar_one()
            )

    assert chunks() > 1
    assert client.delete(f"/api/v1/documents/{created['id']}", headers=headers).status_code == 204
    assert chunks() == 0
    assert client.get(f"/api/v1/documents/{created['id']}", headers=headers).status_code == 404
    assert client.delete(f"/api/v1/documents/{created['id']}", headers=headers).status_code == 404
    found = client.get("/api/v1/search", params={"q": "expense reports"}, headers=headers).json()
    assert found["results"] == []


def test_permissions(client: TestClient, factory: Factory) -> None:
    tenant = factory.tenant("perm")
    viewer = factory.member(tenant, roles=("viewer",))
    billing = factory.member(tenant, roles=("billing-admin",))
    body = {"title": "t", "text": "x"}
    assert (
        client.post("/api/v1/documents", json=body, headers=_headers(factory, viewer)).status_code
        == 403
    )
    assert client.get("/api/v1/documents", headers=_headers(factory, viewer)).status_code == 200
    assert client.get("/api/v1/documents", headers=_headers(factory, billing)).status_code == 403
    search = client.get("/api/v1/search", params={"q": "x"}, headers=_headers(factory, billing))
    assert search.status_code == 403
    assert client.get("/api/v1/search", params={"q": "x"}).status_code == 401


def test_search_rejects_bad_parameters(client: TestClient, factory: Factory) -> None:
    headers = _headers(factory, factory.member(roles=("viewer",)))
    for params in (
        {"q": ""},
        {"q": "a", "k": "0"},
        {"q": "a", "k": "51"},
        {"q": "x" * 1001},
        {"q": " "},
    ):
        response = client.get("/api/v1/search", params=params, headers=headers)
        assert response.status_code in (400, 422), (params, response.text)
        assert response.headers["content-type"] == "application/problem+json"


def test_escaped_json_judged_by_text_size(
    client: TestClient, factory: Factory, runtime: Runtime
) -> None:
    headers = _headers(factory, factory.member(roles=("contributor",)))
    limit = runtime.plans.by_name("free").document_bytes
    # Each "é" is two bytes of text and six ("\u00e9") on the wire.
    text = "é" * (limit // 2 - 10)
    body = json.dumps({"title": "accents", "text": text}).encode()
    assert len(body) > 2 * limit

    response = client.post(
        "/api/v1/documents",
        content=body,
        headers={**headers, "content-type": "application/json"},
    )
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/api/v1/documents/{response.json()['id']}"


def test_delete_while_indexing_stops_quietly(
    runtime: Runtime, factory: Factory, knowledge: Knowledge
) -> None:
    member = factory.member(roles=("contributor",))
    created = knowledge.add(
        member.scope(),
        Upload("long", ("\n\n".join([HANDBOOK] * 300)).encode(), "text/plain"),
        defer=skip_queue,
    )

    class DeletingEmbedder(HashingEmbedder):
        """Deletes the document while its second batch is being embedded."""

        calls = 0

        def embed(self, texts: Sequence[str]) -> list[list[float]]:
            self.calls += 1
            if self.calls == 2:
                with runtime.db.owner.begin() as conn:
                    conn.execute(text("delete from documents where id = :d"), {"d": created["id"]})
            return super().embed(texts)

    embedder = DeletingEmbedder()
    indexer = Knowledge(
        knowledge.app, knowledge.catalog, knowledge.keys, embedder, knowledge.redactor
    )
    indexer.index(member.tenant_id, created["id"], list(member.roles))
    assert embedder.calls == 2  # it stopped after the batch whose document was gone

    with runtime.db.owner.begin() as conn:
        left = conn.execute(
            text("select count(*) from document_chunks where document_id = :d"),
            {"d": created["id"]},
        ).scalar_one()
    assert left == 0


def test_unreadable_file_fails_in_job(
    client: TestClient, factory: Factory, runtime: Runtime, drain: Callable[[], None]
) -> None:
    member = factory.member(roles=("contributor",))
    headers = _headers(factory, member)
    # A PDF file that opens but whose only page has no text.
    blank = minimal_pdf("").replace(b"() Tj", b"")
    created = client.post(
        "/api/v1/documents", files={"file": ("blank.pdf", blank)}, headers=headers
    )
    assert created.status_code == 202, created.text
    drain()

    document = client.get(created.headers["location"], headers=headers).json()
    assert document["status"] == "failed"
    assert document["error"] == "the document has no text to index"
    with runtime.db.owner.begin() as conn:
        kept = conn.execute(
            text("select upload_sealed is not null from documents where id = :d"),
            {"d": document["id"]},
        ).scalar_one()
    assert kept  # the file stays until the document is deleted
