"""Shared fixtures: one real PostgreSQL for the run, the app, a live server, factories.

The database is the embedded pgserver under a temporary folder, or the server that
``STOCKADE_DATABASE_URL`` names. Each test makes its own tenants with unique names, so
tests never need to clean up after one another.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text

from stockade.config import Settings, load_settings
from stockade.db import Scope
from stockade.identity import admin, sessions
from stockade.identity.passwords import hash_password
from stockade.knowledge.service import Knowledge
from stockade.runtime import Runtime, open_runtime
from stockade.web.app import create_app

# Generated once per run; tests sign in with it, it is never stored in the repository.
TEST_PASSWORD = f"test-{uuid.uuid4().hex}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def port() -> int:
    return _free_port()


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory, port: int) -> Settings:
    data_dir = tmp_path_factory.mktemp("stockade-data")
    return load_settings(data_dir=data_dir, issuer=f"http://127.0.0.1:{port}")


@pytest.fixture(scope="session")
def runtime(settings: Settings) -> Iterator[Runtime]:
    opened = open_runtime(settings)
    yield opened
    opened.close()


@pytest.fixture(scope="session")
def app(runtime: Runtime) -> FastAPI:
    return create_app(runtime)


@pytest.fixture(scope="session")
def knowledge(app: FastAPI) -> Knowledge:
    found: Knowledge = app.state.knowledge
    return found


@pytest.fixture(scope="session")
def client(app: FastAPI, settings: Settings) -> Iterator[TestClient]:
    with TestClient(app, base_url=settings.issuer, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def live_server(app: FastAPI, settings: Settings, port: int) -> Iterator[str]:
    """Serve the app with uvicorn on a loopback port for clients that speak real HTTP."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start within 15 seconds")
        time.sleep(0.05)
    yield settings.issuer
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="session")
def password_hash() -> str:
    # Hashing costs ~0.1 s by design; factories reuse one hash of TEST_PASSWORD.
    return hash_password(TEST_PASSWORD)


@dataclass(frozen=True)
class Member:
    user_id: uuid.UUID
    email: str
    tenant_id: uuid.UUID
    tenant: str
    roles: tuple[str, ...]
    # The token family that ``Factory.token`` issues this member's tokens in.
    family_id: uuid.UUID

    def scope(self) -> Scope:
        """The scope a request of this member's runs in."""
        return Scope(tenant_id=self.tenant_id, roles=self.roles, user_id=self.user_id)


class Factory:
    """Builds tenants, members, clients and tokens through the real code paths."""

    def __init__(self, runtime: Runtime, app: FastAPI, password_hash: str) -> None:
        self.runtime = runtime
        self.app = app
        self.password_hash = password_hash
        self._client_id: str | None = None

    def tenant(self, prefix: str = "t") -> tuple[uuid.UUID, str]:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        return admin.create_tenant(self.runtime.db.owner, name), name

    def member(
        self,
        tenant: tuple[uuid.UUID, str] | None = None,
        roles: tuple[str, ...] = ("viewer",),
        email: str | None = None,
    ) -> Member:
        tenant_id, name = tenant or self.tenant()
        email = email or f"user-{uuid.uuid4().hex[:12]}@example.test"
        with self.runtime.db.owner.begin() as conn:
            row = conn.execute(text("select id from users where email = :e"), {"e": email}).first()
            user_id = row[0] if row else uuid.uuid4()
            if row is None:
                conn.execute(
                    text("insert into users (id, email, password_hash) values (:id, :e, :h)"),
                    {"id": user_id, "e": email, "h": self.password_hash},
                )
            for role in roles:
                conn.execute(
                    text(
                        "insert into memberships (tenant_id, user_id, role)"
                        " values (:t, :u, :r) on conflict do nothing"
                    ),
                    {"t": tenant_id, "u": user_id, "r": role},
                )
        family_id = uuid.uuid4()
        with self.runtime.db.owner.begin() as conn:
            sessions.open_family(
                conn,
                family_id=family_id,
                tenant_id=tenant_id,
                user_id=user_id,
                client_id=self.test_client_id(),
                browser_session=None,
            )
        return Member(user_id, email, tenant_id, name, roles, family_id)

    def token(self, member: Member, amr: tuple[str, ...] = ("pwd", "otp", "mfa")) -> str:
        """Mint an access token for ``member`` in its token family, as sign-in would."""
        token, _ = self.app.state.tokens.issue_access_token(
            user_id=member.user_id,
            tenant_id=member.tenant_id,
            roles=list(member.roles),
            client_id=self.test_client_id(),
            scope="openid",
            amr=list(amr),
            auth_time=int(time.time()),
            family_id=member.family_id,
        )
        return str(token)

    def test_client_id(self) -> str:
        """Return the id of one client registered for tokens minted by ``token``."""
        if self._client_id is None:
            self._client_id = self.client("http://127.0.0.1:8765/callback").client_id
        return self._client_id

    def client(self, redirect_uri: str, *, public: bool = True) -> admin.RegisteredClient:
        return admin.create_client(self.runtime.db.owner, "test app", [redirect_uri], public=public)

    def ticket(self, member: Member, title: str = "a ticket") -> dict[str, object]:
        with self.runtime.db.owner.begin() as conn:
            row = conn.execute(
                text(
                    "insert into tickets (tenant_id, title, body) values (:t, :title, 'body')"
                    " returning id, title"
                ),
                {"t": member.tenant_id, "title": title},
            ).one()
        return {"id": str(row[0]), "title": row[1]}


@pytest.fixture(scope="session")
def factory(runtime: Runtime, app: FastAPI, password_hash: str) -> Factory:
    return Factory(runtime, app, password_hash)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def http(live_server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server, timeout=30) as session:
        yield session


@pytest.fixture(scope="session", autouse=True)
def _logs() -> None:
    # Plain tracebacks without local variables, as in production.
    from stockade.audit.logs import configure_logging

    configure_logging(json=False)
