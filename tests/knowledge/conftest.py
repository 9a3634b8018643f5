"""Worlds for the knowledge tests: documents added and indexed through the real paths."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from stockade.knowledge.service import Knowledge, Upload
from stockade.runtime import Runtime
from stockade.worker import Worker
from tests.conftest import Member


@pytest.fixture(scope="session")
def drain(runtime: Runtime, knowledge: Knowledge) -> Callable[[], None]:
    """Run the background jobs waiting in the queue, then return."""
    worker = Worker(runtime, knowledge=knowledge)
    return worker.drain


def add_indexed(knowledge: Knowledge, member: Member, title: str, body: str) -> uuid.UUID:
    """Add a document as ``member`` and index it at once, without the queue."""
    scope = member.scope()
    document = knowledge.add(scope, Upload(title, body.encode(), "text/plain"), defer=skip_queue)
    knowledge.index(member.tenant_id, document["id"], list(member.roles))
    document_id: uuid.UUID = document["id"]
    return document_id


def skip_queue(*_: object) -> None:
    """Stand in for the job queue when a test indexes the document itself."""
    return None
