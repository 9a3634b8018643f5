"""Gateway fixtures: a mock provider on 127.0.0.1 and a gateway pointed at it.

The session's app serves both the TestClient and the live uvicorn server, so installing
a gateway in ``app.state.gateway`` reaches both; the fixture puts the previous one back.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text

from stockade.db import Scope, scoped_transaction
from stockade.gateway.config import GatewayConfig, parse_gateway_config
from stockade.gateway.service import Gateway
from stockade.keys import Secret
from stockade.runtime import Runtime
from tests.conftest import Factory, Member, bearer
from tests.gateway.upstream import MockUpstream

PRIMARY_KEY_NAME = "gateway-test-primary"
CHAT_MODEL = "mock-chat"
CHAIN_MODEL = "chain-chat"
EMBEDDING_MODEL = "mock-embed"


def gateway_document(primary_url: str, backup_url: str | None = None) -> dict[str, Any]:
    """Return a gateway file (as parsed TOML) whose upstreams are the mock providers."""
    upstreams: dict[str, Any] = {
        "primary": {
            "base_url": f"{primary_url}/v1",
            "api_key_secret": PRIMARY_KEY_NAME,
            "timeout_seconds": 0.5,
            "connect_timeout_seconds": 0.5,
            "max_retries": 1,
            "breaker_failures": 50,
            "breaker_reset_seconds": 5,
        }
    }
    chain = ["primary:mock-model"]
    if backup_url is not None:
        upstreams["backup"] = {
            "base_url": f"{backup_url}/v1",
            "timeout_seconds": 2,
            "max_retries": 0,
        }
        chain.append("backup:backup-model")
    return {
        "upstreams": upstreams,
        "models": {
            CHAT_MODEL: {"route": ["primary:mock-model"]},
            CHAIN_MODEL: {"route": chain},
            EMBEDDING_MODEL: {"route": ["primary:mock-embedding"], "kind": "embedding"},
        },
        "aliases": {"mock-rag": {"model": CHAT_MODEL, "retrieve": True}},
    }


def to_toml(document: dict[str, Any]) -> str:
    """Write a gateway document as TOML: top-level values, then one table per entry."""
    lines = [
        f"{key} = {json.dumps(value)}"
        for key, value in document.items()
        if not isinstance(value, dict)
    ]
    for section, entries in document.items():
        if not isinstance(entries, dict):
            continue
        for name, table in entries.items():
            lines.append(f"[{section}.{json.dumps(name)}]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def upstream(runtime: Runtime) -> Iterator[MockUpstream]:
    """The primary mock provider; it requires the API key stored in the key store."""
    key = f"sk-test-{secrets.token_hex(16)}"
    runtime.keystore.set_secret(PRIMARY_KEY_NAME, Secret(key))
    server = MockUpstream(api_key=key).start()
    yield server
    server.stop()


@pytest.fixture
def backup() -> Iterator[MockUpstream]:
    server = MockUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def install_gateway(app: FastAPI, runtime: Runtime) -> Iterator[Callable[[GatewayConfig], Gateway]]:
    """Return a function that serves a gateway built from a config until the test ends."""
    previous = app.state.gateway
    installed: list[Gateway] = []

    def install(config: GatewayConfig) -> Gateway:
        gateway = Gateway(
            config,
            runtime.keystore,
            runtime.db.app,
            runtime.plans,
            runtime.policy,
            app.state.knowledge.keys,
        )
        app.state.gateway = gateway
        installed.append(gateway)
        return gateway

    yield install
    app.state.gateway = previous
    for gateway in installed:
        gateway.close()


@pytest.fixture
def gateway(install_gateway: Callable[[GatewayConfig], Gateway], upstream: MockUpstream) -> Gateway:
    return install_gateway(parse_gateway_config(gateway_document(upstream.url), "test"))


@dataclass(frozen=True)
class Caller:
    member: Member
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)

    @property
    def tenant_id(self) -> uuid.UUID:
        return self.member.tenant_id


@pytest.fixture
def make_caller(factory: Factory) -> Callable[..., Caller]:
    """Return a function that makes a member of a new tenant (or a given one) and a token."""

    def make(
        roles: tuple[str, ...] = ("viewer",), tenant: tuple[uuid.UUID, str] | None = None
    ) -> Caller:
        member = factory.member(tenant or factory.tenant("gw"), roles=roles)
        return Caller(member, factory.token(member))

    return make


def chat_body(question: str, model: str = CHAT_MODEL, **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": question}], **fields}


def ask(client: TestClient, caller: Caller, question: str, **fields: Any) -> httpx.Response:
    """Send one user message to ``/v1/chat/completions`` as ``caller``."""
    return client.post(
        "/v1/chat/completions", json=chat_body(question, **fields), headers=caller.headers
    )


def _usage_reader(runtime: Runtime, tenant_id: uuid.UUID) -> Any:
    # The usage tables have no operator policy: read them in the tenant's scope, with a
    # role that has usage:read.
    return scoped_transaction(runtime.db.app, Scope(tenant_id=tenant_id, roles=("auditor",)))


def ledger_rows(runtime: Runtime, tenant_id: uuid.UUID, kind: str) -> list[int]:
    with _usage_reader(runtime, tenant_id) as conn:
        rows = conn.execute(
            text(
                "select quantity from usage_ledger where tenant_id = :t and kind = :k order by id"
            ),
            {"t": tenant_id, "k": kind},
        )
        return [int(row[0]) for row in rows]


def audit_events(runtime: Runtime, tenant_id: uuid.UUID, prefix: str = "llm:") -> list[Any]:
    with runtime.db.owner.connect() as conn:
        return list(
            conn.execute(
                text(
                    "select action, subject, trace_id, request_id, data from audit_events"
                    " where tenant_id = :t and action like :p order by seq"
                ),
                {"t": tenant_id, "p": f"{prefix}%"},
            )
        )


def open_reservations(runtime: Runtime, tenant_id: uuid.UUID) -> int:
    with _usage_reader(runtime, tenant_id) as conn:
        return int(
            conn.execute(
                text(
                    "select count(*) from usage_reservations"
                    " where tenant_id = :t and status = 'reserved'"
                ),
                {"t": tenant_id},
            ).scalar_one()
        )


def wait_for(check: Callable[[], bool], what: str, seconds: float = 10) -> None:
    """Poll ``check`` until it holds; the settlement after a response runs in the background."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {seconds} s")
        time.sleep(0.05)
