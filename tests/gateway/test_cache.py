"""The answer cache during an outage: served with a header, per tenant, never for free."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from stockade.db import Scope, scoped_transaction
from stockade.gateway import control
from stockade.gateway.service import Gateway
from stockade.knowledge.service import Knowledge
from stockade.runtime import Runtime
from tests.gateway.conftest import Caller, ask, ledger_rows
from tests.gateway.upstream import ECHO_PREFIX, MockUpstream
from tests.knowledge.conftest import add_indexed

QUESTION = "what is the refund policy?"


@pytest.fixture
def forced_outage(runtime: Runtime) -> Iterator[Callable[[], None]]:
    """Return a function that forces the outage fallback; it is cleared after the test."""

    def force() -> None:
        control.set_outage(runtime.db.owner, forced=True)

    yield force
    control.set_outage(runtime.db.owner, forced=False)


def _ask(
    client: TestClient, caller: Caller, question: str = QUESTION, **fields: object
) -> httpx.Response:
    return ask(client, caller, question, **fields)


def test_forced_outage_serves_cached_answer(
    client: TestClient,
    runtime: Runtime,
    gateway: Gateway,
    upstream: MockUpstream,
    forced_outage: Callable[[], None],
    make_caller: Callable[..., Caller],
) -> None:
    caller = make_caller()
    fresh = _ask(client, caller)
    forced_outage()

    # Whitespace differences do not matter; the key uses the normalized messages.
    cached = _ask(client, caller, "what is the   refund policy?")
    uncached = _ask(client, caller, "a question never asked")

    assert fresh.status_code == 200
    assert "Stockade-Fallback" not in fresh.headers
    assert cached.status_code == 200
    assert cached.headers["Stockade-Fallback"] == "cache"
    assert cached.json()["choices"][0]["message"]["content"] == f"{ECHO_PREFIX}{QUESTION}"
    assert cached.json()["stockade"]["fallback"] == "cache"
    assert uncached.status_code == 503
    assert "no cached answer" in uncached.json()["error"]["message"]
    assert upstream.calls == 1
    # The cached answer counts as a call; it used no provider tokens.
    assert ledger_rows(runtime, caller.tenant_id, "llm_call") == [1, 1]
    assert ledger_rows(runtime, caller.tenant_id, "llm_tokens")[1] == 0


def test_provider_outage_serves_cached_answer(
    client: TestClient, gateway: Gateway, upstream: MockUpstream, make_caller: Callable[..., Caller]
) -> None:
    caller = make_caller()
    _ask(client, caller)
    upstream.mode = "error"

    cached = _ask(client, caller)

    assert cached.status_code == 200
    assert cached.headers["Stockade-Fallback"] == "cache"


def test_cache_never_crosses_tenants(
    client: TestClient,
    gateway: Gateway,
    upstream: MockUpstream,
    forced_outage: Callable[[], None],
    make_caller: Callable[..., Caller],
) -> None:
    tenant_a = make_caller()
    tenant_b = make_caller()
    assert _ask(client, tenant_a, "the secret plan of tenant a").status_code == 200
    forced_outage()

    other_tenant = _ask(client, tenant_b, "the secret plan of tenant a")
    own_tenant = _ask(client, tenant_a, "the secret plan of tenant a")

    assert other_tenant.status_code == 503
    assert "tenant a" not in other_tenant.text.replace("the secret plan of tenant a", "")
    assert own_tenant.status_code == 200
    assert own_tenant.headers["Stockade-Fallback"] == "cache"


def test_cached_answer_restores_each_callers_values(
    client: TestClient,
    gateway: Gateway,
    forced_outage: Callable[[], None],
    make_caller: Callable[..., Caller],
) -> None:
    admin = make_caller(roles=("admin",))
    viewer = make_caller(roles=("viewer",), tenant=(admin.tenant_id, admin.member.tenant))
    _ask(client, admin, "write to alice@example.com")
    forced_outage()

    revealed = _ask(client, admin, "write to bob@example.org")
    hidden = _ask(client, viewer, "write to carol@example.net")

    assert revealed.headers["Stockade-Fallback"] == "cache"
    assert revealed.json()["choices"][0]["message"]["content"] == "Echo: write to bob@example.org"
    assert hidden.json()["choices"][0]["message"]["content"] == "Echo: write to <EMAIL_1>"
    assert "alice" not in revealed.text + hidden.text


def test_streamed_answer_from_cache(
    client: TestClient,
    gateway: Gateway,
    forced_outage: Callable[[], None],
    make_caller: Callable[..., Caller],
) -> None:
    caller = make_caller()
    _ask(client, caller)
    forced_outage()

    response = _ask(client, caller, stream=True)

    assert response.status_code == 200
    assert response.headers["Stockade-Fallback"] == "cache"
    assert response.text.rstrip().endswith("data: [DONE]")
    assert ECHO_PREFIX.strip() in response.text


def test_cached_answers_are_sealed_at_rest(
    client: TestClient,
    runtime: Runtime,
    gateway: Gateway,
    upstream: MockUpstream,
    make_caller: Callable[..., Caller],
) -> None:
    caller = make_caller()
    assert _ask(client, caller, "which lighthouse keeps the logbook?").status_code == 200

    # The cache has no operator policy: read it in the tenant's scope, but raw.
    scope = Scope(tenant_id=caller.tenant_id, roles=("viewer",))
    with scoped_transaction(runtime.db.app, scope) as conn:
        rows = conn.execute(text("select t::text from gateway_cache as t")).scalars().all()
    assert len(rows) == 1
    assert "lighthouse" not in rows[0]
    assert ECHO_PREFIX.strip() not in rows[0]


def test_deleting_a_document_forgets_answers_citing_it(
    client: TestClient,
    gateway: Gateway,
    knowledge: Knowledge,
    forced_outage: Callable[[], None],
    make_caller: Callable[..., Caller],
) -> None:
    caller = make_caller(roles=("contributor",))
    question, kept = "When does the aurora tour leave?", "Where does the glacier walk start?"
    # Asked while the tenant has one document, so this answer cites only that one.
    add_indexed(knowledge, caller.member, "Glacier", "The glacier walk starts at the lodge.")
    assert _ask(client, caller, kept, model="stockade-rag").status_code == 200
    document_id = add_indexed(
        knowledge, caller.member, "Aurora", "The aurora tour leaves the harbour at nine."
    )
    first = _ask(client, caller, question, model="stockade-rag")
    assert first.status_code == 200
    assert first.json()["stockade"]["citations"][0]["document_id"] == str(document_id)

    deleted = client.delete(f"/api/v1/documents/{document_id}", headers=caller.headers)
    assert deleted.status_code == 204
    forced_outage()

    after = _ask(client, caller, question, model="stockade-rag")
    assert after.status_code == 503
    assert "harbour" not in after.text
    # The answer citing only the other document is still served from the cache.
    still = _ask(client, caller, kept, model="stockade-rag")
    assert still.status_code == 200
    assert still.headers["Stockade-Fallback"] == "cache"
