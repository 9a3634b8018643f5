"""Budgets: exact under concurrency and across processes, fail closed, tokens capped too."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from stockade.config import Settings
from stockade.db import Database
from stockade.gateway.service import Gateway
from stockade.runtime import Runtime
from stockade.web.app import create_app
from tests.gateway.conftest import (
    Caller,
    ask,
    chat_body,
    gateway_document,
    ledger_rows,
    open_reservations,
    to_toml,
    wait_for,
)
from tests.gateway.upstream import MockUpstream, free_port

STOCKADE = str(Path(sys.executable).with_name("stockade"))


async def _fire(urls: list[str], token: str, count: int) -> Counter[int]:
    """Send ``count`` calls at once, spread over ``urls``, and count the statuses."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(timeout=120, limits=limits, trust_env=False) as client:

        async def one(index: int) -> int:
            response = await client.post(
                f"{urls[index % len(urls)]}/v1/chat/completions",
                json=chat_body(f"racer {index}"),
                headers={"Authorization": f"Bearer {token}"},
            )
            return response.status_code

        statuses = await asyncio.gather(*(one(index) for index in range(count)))
    return Counter(statuses)


def test_200_concurrent_calls_reach_upstream_50_times(
    live_server: str,
    runtime: Runtime,
    gateway: Gateway,
    upstream: MockUpstream,
    make_caller: Callable[..., Caller],
) -> None:
    caller = make_caller()
    cap = runtime.plans.by_name("free").llm_calls_per_day

    statuses = asyncio.run(_fire([live_server], caller.token, 200))

    assert cap == 50
    assert statuses == Counter({200: 50, 402: 150})
    assert upstream.calls == 50
    wait_for(
        lambda: len(ledger_rows(runtime, caller.tenant_id, "llm_call")) == 50,
        "all 50 calls were settled",
    )
    assert open_reservations(runtime, caller.tenant_id) == 0


@pytest.fixture
def gateway_processes(
    settings: Settings, upstream: MockUpstream, tmp_path: Path
) -> Iterator[list[str]]:
    """Start two `stockade serve --role gateway` processes on the session's data folder."""
    gateway_file = tmp_path / "gateway.toml"
    gateway_file.write_text(to_toml(gateway_document(upstream.url)))
    env = {
        **os.environ,
        "STOCKADE_ISSUER": settings.issuer,
        "STOCKADE_GATEWAY_FILE": str(gateway_file),
    }
    processes: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    logs: list[Path] = []
    try:
        for index in range(2):
            port = free_port()
            log = tmp_path / f"gateway-{index}.log"
            with open(log, "wb") as output:
                processes.append(
                    subprocess.Popen(  # noqa: S603 - our own entry point with fixed arguments
                        [
                            STOCKADE,
                            "serve",
                            "--role",
                            "gateway",
                            "--port",
                            str(port),
                            "--data-dir",
                            str(settings.data_dir),
                        ],
                        stdout=output,
                        stderr=subprocess.STDOUT,
                        env=env,
                    )
                )
            urls.append(f"http://127.0.0.1:{port}")
            logs.append(log)
        for url, log in zip(urls, logs, strict=True):
            _wait_healthy(url, log)
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)


def _wait_healthy(url: str, log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not start within 90 s; log:\n{log.read_text()}")


def test_two_gateway_processes_share_one_cap(
    gateway_processes: list[str],
    runtime: Runtime,
    upstream: MockUpstream,
    make_caller: Callable[..., Caller],
) -> None:
    caller = make_caller()

    statuses = asyncio.run(_fire(gateway_processes, caller.token, 80))

    assert statuses == Counter({200: 50, 402: 30})
    assert upstream.calls == 50
    wait_for(
        lambda: len(ledger_rows(runtime, caller.tenant_id, "llm_call")) == 50,
        "both processes settled their calls",
    )


def test_gateway_only_role_serves_no_api(
    gateway_processes: list[str], make_caller: Callable[..., Caller]
) -> None:
    caller = make_caller()

    tickets = httpx.get(
        f"{gateway_processes[0]}/api/v1/tickets", headers=caller.headers, trust_env=False
    )
    models = httpx.get(f"{gateway_processes[0]}/v1/models", headers=caller.headers, trust_env=False)

    assert tickets.status_code == 404
    assert models.status_code == 200


def test_unreachable_ledger_fails_closed(
    runtime: Runtime, upstream: MockUpstream, make_caller: Callable[..., Caller]
) -> None:
    caller = make_caller()
    # A closed loopback port: every connection to this "database" is refused.
    unreachable = create_engine(
        "postgresql+psycopg://stockade_app:unused@127.0.0.1:9/stockade", pool_pre_ping=False
    )
    broken = dataclasses.replace(
        runtime, db=Database(owner=runtime.db.owner, app=unreachable, app_role="stockade_app")
    )
    app = create_app(broken)
    app.state.gateway = Gateway(
        dataclasses.replace(app.state.gateway.config, **_config_of(upstream)),
        runtime.keystore,
        unreachable,
        runtime.plans,
        runtime.policy,
        app.state.knowledge.keys,
    )

    with TestClient(app, raise_server_exceptions=False) as probe:
        response = probe.post("/v1/chat/completions", json=chat_body("hi"), headers=caller.headers)

    unreachable.dispose()
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "ledger_unavailable"
    assert "not made" in error["message"]
    assert upstream.calls == 0


def _config_of(upstream: MockUpstream) -> dict[str, object]:
    from stockade.gateway.config import parse_gateway_config

    config = parse_gateway_config(gateway_document(upstream.url), "test")
    return {"upstreams": config.upstreams, "models": config.models, "aliases": config.aliases}


def test_max_tokens_beyond_plan_is_400(
    client: TestClient,
    runtime: Runtime,
    gateway: Gateway,
    upstream: MockUpstream,
    make_caller: Callable[..., Caller],
) -> None:
    caller = make_caller()
    monthly = runtime.plans.by_name("free").llm_tokens_per_month

    response = ask(client, caller, "hi", max_tokens=monthly)

    # No month's window could hold it, so waiting would not help: 400, not 402.
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "max_tokens"
    assert "more than the free plan allows in a whole month" in error["message"]
    assert "Retry-After" not in response.headers
    assert upstream.calls == 0
    assert open_reservations(runtime, caller.tenant_id) == 0
    assert ledger_rows(runtime, caller.tenant_id, "llm_call") == []


def test_failed_call_releases_budget(
    client: TestClient,
    runtime: Runtime,
    gateway: Gateway,
    upstream: MockUpstream,
    make_caller: Callable[..., Caller],
) -> None:
    caller = make_caller()
    upstream.mode = "error"

    response = ask(client, caller, "hi")

    assert response.status_code == 503
    assert ledger_rows(runtime, caller.tenant_id, "llm_call") == []
    assert open_reservations(runtime, caller.tenant_id) == 0
