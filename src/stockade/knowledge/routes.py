"""``/api/v1/documents`` and ``/api/v1/search``: a tenant's documents and retrieval."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from stockade.access.guard import Principal, require
from stockade.audit.trail import record_event
from stockade.db import scoped_transaction
from stockade.errors import Forbidden, NotFound, Unprocessable
from stockade.knowledge import store
from stockade.knowledge.extract import media_type_of
from stockade.knowledge.jobs import defer_indexing
from stockade.knowledge.retrieval import MAX_K
from stockade.knowledge.service import DocumentTooLarge, Knowledge, Upload
from stockade.safety.redaction import restore

router = APIRouter(prefix="/api/v1", tags=["knowledge"])

# Room for the multipart framing and a title around the file itself.
_MULTIPART_OVERHEAD = 64 * 1024
_MAX_QUERY = 1_000


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("text must not contain the NUL character")
    return value


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    title: Annotated[str, Field(min_length=1, max_length=300), AfterValidator(_no_nul)]
    text: Annotated[str, Field(min_length=1), AfterValidator(_no_nul)]


class Document(BaseModel):
    id: uuid.UUID
    title: str
    media_type: str
    byte_size: int
    status: str
    chunks_done: int
    chunks_total: int | None
    error: str | None
    redacted: dict[str, int]
    created_by: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


class DocumentWithText(Document):
    text: str
    revealed: bool


class DocumentList(BaseModel):
    items: list[Document]


class SearchHit(BaseModel):
    document_id: uuid.UUID
    chunk_id: uuid.UUID
    ordinal: int
    title: str
    text: str
    score: float
    vector_score: float | None
    text_score: float | None


class SearchResults(BaseModel):
    query: str
    k: int
    results: list[SearchHit]


def _knowledge(request: Request) -> Knowledge:
    knowledge: Knowledge = request.app.state.knowledge
    return knowledge


@router.post("/documents", response_model=Document, status_code=202)
async def create_document(
    request: Request, response: Response, principal: Principal = require("documents:write")
) -> dict[str, Any]:
    """Store a document (JSON, or a multipart ``file`` upload) and queue its indexing."""
    knowledge = _knowledge(request)
    scope = principal.scope()
    limit = await run_in_threadpool(knowledge.upload_limit, scope)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()

    if content_type == "multipart/form-data":
        upload = await _multipart_upload(request, limit)
    elif content_type == "application/json":
        # A \u escape takes six bytes for one, so the body may be six times the text;
        # the text itself must fit the plan.
        upload = _json_upload(await _capped_body(request, limit * 6 + 4096))
        if len(upload.data) > limit:
            raise DocumentTooLarge(f"the plan accepts documents up to {limit} bytes", limit=limit)
    else:
        raise Unprocessable("send application/json with title and text, or multipart/form-data")
    document = await run_in_threadpool(knowledge.add, scope, upload, defer=defer_indexing)
    response.headers["Location"] = f"/api/v1/documents/{document['id']}"
    return document


@router.get("/documents", response_model=DocumentList)
def list_documents(
    request: Request,
    principal: Principal = require("documents:read"),
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, object]:
    knowledge = _knowledge(request)
    with scoped_transaction(knowledge.app, principal.scope()) as conn:
        items = store.list_documents(conn, knowledge.keys, principal.tenant_id, limit=limit)
    return {"items": items}


@router.get("/documents/{document_id}", response_model=DocumentWithText)
def read_document(
    request: Request,
    document_id: uuid.UUID,
    principal: Principal = require("documents:read"),
    reveal: bool = False,
) -> dict[str, object]:
    """Return the document with its redacted text, or restored with ``reveal=true``."""
    if reveal and not request.app.state.policy.decide(principal.roles, "pii:reveal").allowed:
        raise Forbidden("revealing redacted personal data needs the pii:reveal permission")
    knowledge = _knowledge(request)
    with scoped_transaction(knowledge.app, principal.scope()) as conn:
        found = store.get_document(conn, knowledge.keys, principal.tenant_id, document_id)
        if found is None:
            raise NotFound("no such document")
        document, body, mapping = found
        if reveal:
            body = restore(body, mapping)
            document["title"] = restore(document["title"], mapping)
            record_event(
                conn,
                tenant_id=principal.tenant_id,
                action="pii:revealed",
                actor_user_id=principal.user_id,
                subject=str(document_id),
                data={"placeholders": len(mapping)},
            )
    return {**document, "text": body, "revealed": reveal}


@router.delete("/documents/{document_id}", status_code=204)
def delete_document(
    request: Request, document_id: uuid.UUID, principal: Principal = require("documents:write")
) -> Response:
    """Delete the document, its chunks and their vectors."""
    knowledge = _knowledge(request)
    with scoped_transaction(knowledge.app, principal.scope()) as conn:
        if not store.delete_document(conn, principal.tenant_id, document_id):
            raise NotFound("no such document")
        record_event(
            conn,
            tenant_id=principal.tenant_id,
            action="document:deleted",
            actor_user_id=principal.user_id,
            subject=str(document_id),
        )
    return Response(status_code=204)


@router.get("/search", response_model=SearchResults)
def search(
    request: Request,
    q: Annotated[str, Query(min_length=1, max_length=_MAX_QUERY)],
    principal: Principal = require("search:query"),
    k: Annotated[int, Query(ge=1, le=MAX_K)] = 5,
) -> dict[str, object]:
    """Return the tenant's ``k`` best chunks for ``q``, vector similarity fused with text rank."""
    query = _no_nul_query(q)
    # NOTE: the query is not redacted, and chunks hold placeholders, so a query for an
    # e-mail address or a phone number matches no chunk by its words. Matching would need
    # a keyed hash of each original value stored beside its placeholder.
    passages = _knowledge(request).search(principal.scope(), query, k)
    results = [
        {name: value for name, value in vars(passage).items() if name != "pii"}
        for passage in passages
    ]
    return {"query": query, "k": k, "results": results}


def _no_nul_query(value: str) -> str:
    if "\x00" in value or not value.strip():
        raise Unprocessable("q must be non-empty text without the NUL character")
    return value.strip()


def _json_upload(raw: bytes) -> Upload:
    try:
        document = DocumentIn.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise Unprocessable(
            f"the body must be JSON with title and text: {_first_error(exc)}"
        ) from None
    return Upload(document.title, document.text.encode(), "text/plain")


async def _multipart_upload(request: Request, limit: int) -> Upload:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + _MULTIPART_OVERHEAD:
        raise DocumentTooLarge(f"the plan accepts documents up to {limit} bytes", limit=limit)
    async with request.form(max_files=1, max_fields=4) as form:
        file = form.get("file")
        if not isinstance(file, UploadFile) or not file.filename:
            raise Unprocessable("attach the document as the multipart field 'file'")
        media_type = media_type_of(file.filename)
        data = await file.read(limit + 1)
        if len(data) > limit:
            raise DocumentTooLarge(f"the plan accepts documents up to {limit} bytes", limit=limit)
        title = form.get("title")
        title = title.strip() if isinstance(title, str) and title.strip() else file.filename
    if len(title) > 300 or "\x00" in title:
        raise Unprocessable("the title has at most 300 characters and no NUL character")
    return Upload(title, data, media_type)


async def _capped_body(request: Request, cap: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise DocumentTooLarge(f"the request body is larger than {cap} bytes", limit=cap)
    body = bytearray()
    async for piece in request.stream():
        body.extend(piece)
        if len(body) > cap:
            raise DocumentTooLarge(f"the request body is larger than {cap} bytes", limit=cap)
    return bytes(body)


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "body"
        return f"{where}: {error['msg']}"
    return "not valid JSON"
