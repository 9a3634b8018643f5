"""The handbook of Northwind Outfitters, a made-up outdoor retailer, for the demo tenant.

The documents are the Markdown files beside this module, shipped as package data. Their
people, e-mail addresses (example.com) and phone numbers (555-01xx) are invented. The
redactor replaces the addresses and numbers with placeholders when a document is added.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from importlib import resources

from stockade.db import Scope, scoped_transaction
from stockade.knowledge import store
from stockade.knowledge.service import Knowledge, Upload

MEDIA_TYPE = "text/markdown"


@dataclass(frozen=True)
class DemoDocument:
    """One handbook file: its file name, the title from its first heading, and its text."""

    file_name: str
    title: str
    text: str


def demo_documents() -> list[DemoDocument]:
    """Return the handbook's documents in file name order."""
    folder = resources.files(__name__)
    documents = []
    for entry in sorted(folder.iterdir(), key=lambda item: item.name):
        if entry.name.endswith(".md"):
            text = entry.read_text(encoding="utf-8")
            documents.append(DemoDocument(entry.name, _title(entry.name, text), text))
    return documents


def add_missing_demo_documents(knowledge: Knowledge, scope: Scope) -> dict[str, uuid.UUID]:
    """Add and index, at once, each handbook document whose title the tenant lacks.

    ``scope`` needs ``documents:read`` and ``documents:write``. Running this again adds
    nothing, so a seed that calls it on every start stays idempotent. Return the new
    documents' ids by file name.
    """
    assert scope.tenant_id is not None
    tenant_id = scope.tenant_id
    present = _titles(knowledge, scope)

    added: dict[str, uuid.UUID] = {}
    for document in demo_documents():
        if document.title in present:
            continue
        upload = Upload(document.title, document.text.encode(), MEDIA_TYPE)
        # Indexed right below rather than by the worker, so the demo is searchable as
        # soon as the seed returns, even when no worker runs.
        stored = knowledge.add(scope, upload, defer=_index_now)
        knowledge.index(tenant_id, stored["id"], list(scope.roles))
        added[document.file_name] = stored["id"]
    return added


def _titles(knowledge: Knowledge, scope: Scope) -> set[str]:
    assert scope.tenant_id is not None
    with scoped_transaction(knowledge.app, scope) as conn:
        count = store.count_documents(conn, scope.tenant_id)
        documents = store.list_documents(conn, knowledge.keys, scope.tenant_id, limit=max(count, 1))
    return {document["title"] for document in documents}


def _index_now(*_: object) -> None:
    """Stand in for the job queue: the caller indexes the document itself."""


def _title(file_name: str, text: str) -> str:
    first_line = text.lstrip().splitlines()[0] if text.strip() else ""
    if not first_line.startswith("# "):
        raise ValueError(f"demo document {file_name} must open with a '# Title' line")
    return first_line[2:].strip()
