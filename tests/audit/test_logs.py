"""Structured logs: one JSON line per request with its ids, and never a token."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from stockade.audit.logs import configure_logging
from stockade.runtime import Runtime
from tests.conftest import Factory, bearer


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    configure_logging(json=True, stream=buffer)
    yield buffer
    configure_logging(json=False)


def test_request_line_carries_tenant_and_request_id(
    client: TestClient, factory: Factory, log_lines: io.StringIO
) -> None:
    member = factory.member(roles=("viewer",))
    token = factory.token(member)

    response = client.get("/api/v1/tickets", headers=bearer(token))

    events = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    requests = [event for event in events if event["event"] == "request"]
    assert len(requests) == 1
    assert requests[0]["tenant_id"] == str(member.tenant_id)
    assert requests[0]["request_id"] == response.headers["x-request-id"]
    assert requests[0]["status"] == 200
    assert token not in log_lines.getvalue()


def test_rejected_token_is_logged_without_token(client: TestClient, log_lines: io.StringIO) -> None:
    forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."

    client.get("/api/v1/tickets", headers=bearer(forged))

    events = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    assert any(event["event"] == "access_token_rejected" for event in events)
    assert forged not in log_lines.getvalue()


def test_unhandled_error_logs_no_locals(runtime: Runtime, log_lines: io.StringIO) -> None:
    from stockade.access.guard import require
    from stockade.access.policy import PUBLIC
    from stockade.web.app import create_app

    app = create_app(runtime)

    @app.get("/api/v1/explode", dependencies=[require(PUBLIC)])
    def explode(password: str) -> None:
        raise RuntimeError(f"failed after reading {len(password)} characters")

    with TestClient(app) as probe:
        response = probe.get("/api/v1/explode", params={"password": "hunter2-in-a-query"})

    assert response.status_code == 500
    assert "unhandled_error" in log_lines.getvalue()
    assert "hunter2-in-a-query" not in log_lines.getvalue()
