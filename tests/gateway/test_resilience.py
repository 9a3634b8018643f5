"""Providers that hang, err or send garbage: a fallback, the cache, or a clear 503."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
from fastapi.testclient import TestClient

from stockade.gateway.config import parse_gateway_config
from stockade.gateway.resilience import BreakerState, CircuitBreaker, retry_delay
from stockade.gateway.service import Gateway
from stockade.runtime import Runtime
from tests.gateway.conftest import (
    CHAIN_MODEL,
    CHAT_MODEL,
    Caller,
    ask,
    chat_body,
    gateway_document,
    ledger_rows,
    open_reservations,
)
from tests.gateway.upstream import ECHO_PREFIX, MockUpstream


@pytest.fixture
def chained(
    install_gateway: Callable[..., Gateway], upstream: MockUpstream, backup: MockUpstream
) -> Gateway:
    return install_gateway(parse_gateway_config(gateway_document(upstream.url, backup.url), "t"))


@pytest.mark.parametrize("mode", ["hang", "error", "garbage"])
def test_failing_primary_falls_back(
    mode: str,
    client: TestClient,
    chained: Gateway,
    upstream: MockUpstream,
    backup: MockUpstream,
    make_caller: Callable[..., Caller],
) -> None:
    caller = make_caller()
    upstream.mode = mode

    response = ask(client, caller, "still there?", model=CHAIN_MODEL)

    assert response.status_code == 200
    body = response.json()
    assert body["choices"][0]["message"]["content"] == f"{ECHO_PREFIX}still there?"
    assert body["stockade"]["provider"] == "backup"
    assert body["stockade"]["fallback"] == "chain"
    assert backup.last_request()["model"] == "backup-model"
    # Garbage is not retried; a timeout or a 500 is retried once (max_retries = 1).
    assert upstream.calls == (1 if mode == "garbage" else 2)


@pytest.mark.parametrize("mode", ["hang", "error", "garbage"])
def test_failing_only_provider_gives_clear_503(
    mode: str,
    client: TestClient,
    runtime: Runtime,
    gateway: Gateway,
    upstream: MockUpstream,
    make_caller: Callable[..., Caller],
) -> None:
    caller = make_caller()
    upstream.mode = mode
    started = time.monotonic()

    response = ask(client, caller, "hello?")

    assert response.status_code == 503
    assert time.monotonic() - started < 10
    error = response.json()["error"]
    assert error["code"] == "upstream_unavailable"
    assert "no cached answer" in error["message"]
    assert "Traceback" not in response.text
    assert open_reservations(runtime, caller.tenant_id) == 0
    assert ledger_rows(runtime, caller.tenant_id, "llm_call") == []


def test_failing_stream_gets_503(
    client: TestClient, gateway: Gateway, upstream: MockUpstream, make_caller: Callable[..., Caller]
) -> None:
    caller = make_caller()
    upstream.mode = "error"

    response = ask(client, caller, "hi", stream=True)

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "upstream_unavailable"


def test_stream_broken_midway_ends_with_error_event(
    live_server: str,
    runtime: Runtime,
    gateway: Gateway,
    upstream: MockUpstream,
    make_caller: Callable[..., Caller],
) -> None:
    caller = make_caller()
    upstream.mode = "break"

    with httpx.Client(base_url=live_server, timeout=30, trust_env=False) as http:
        response = http.post(
            "/v1/chat/completions",
            json=chat_body("one two three four", stream=True),
            headers=caller.headers,
        )

    assert response.status_code == 200
    events = [line for line in response.text.splitlines() if line.startswith("data:")]
    assert '"code":"upstream_interrupted"' in events[-1]
    assert "data: [DONE]" not in events
    assert "Echo:" in response.text
    # The provider produced tokens before it stalled, so the call is charged, not released.
    deadline = time.monotonic() + 10
    while not ledger_rows(runtime, caller.tenant_id, "llm_call"):
        assert time.monotonic() < deadline, "the broken stream was never settled"
        time.sleep(0.05)
    assert open_reservations(runtime, caller.tenant_id) == 0


def test_breaker_opens_and_skips_provider(
    client: TestClient,
    install_gateway: Callable[..., Gateway],
    upstream: MockUpstream,
    backup: MockUpstream,
    make_caller: Callable[..., Caller],
) -> None:
    document = gateway_document(upstream.url, backup.url)
    document["upstreams"]["primary"].update(breaker_failures=2, breaker_reset_seconds=60)
    gateway = install_gateway(parse_gateway_config(document, "t"))
    caller = make_caller()
    upstream.mode = "error"

    first = ask(client, caller, "a", model=CHAIN_MODEL)
    calls_when_opened = upstream.calls
    second = ask(client, caller, "b", model=CHAIN_MODEL)

    assert first.json()["stockade"]["provider"] == "backup"
    assert gateway.upstreams["primary"].breaker.state is BreakerState.OPEN
    assert second.json()["stockade"]["provider"] == "backup"
    assert upstream.calls == calls_when_opened == 2


def test_breaker_half_open_allows_one_trial() -> None:
    now = [0.0]
    breaker = CircuitBreaker("p", failure_threshold=2, reset_seconds=10, clock=lambda: now[0])

    breaker.record_failure()
    closed_after_one = breaker.allow()
    breaker.record_failure()
    refused_while_open = breaker.allow()
    now[0] = 10.0
    trial = breaker.allow()
    second_trial = breaker.allow()
    breaker.record_success()

    assert closed_after_one
    assert not refused_while_open
    assert trial
    assert not second_trial
    assert breaker.state is BreakerState.CLOSED


def test_failed_trial_reopens_breaker() -> None:
    now = [0.0]
    breaker = CircuitBreaker("p", failure_threshold=1, reset_seconds=5, clock=lambda: now[0])
    breaker.record_failure()
    now[0] = 5.0

    assert breaker.allow()
    breaker.record_failure()

    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()


def test_retry_delay_is_bounded_jitter() -> None:
    delays = [retry_delay(attempt) for attempt in range(10) for _ in range(50)]

    assert all(0 <= delay <= 2.0 for delay in delays)
    assert len(set(delays)) > 100
    assert retry_delay(0, retry_after=30) == 2.0
    assert retry_delay(3, retry_after=0.5) == 0.5


def test_missing_upstream_key_is_a_provider_failure(
    client: TestClient,
    runtime: Runtime,
    install_gateway: Callable[..., Gateway],
    upstream: MockUpstream,
    make_caller: Callable[..., Caller],
) -> None:
    document = gateway_document(upstream.url)
    document["upstreams"]["primary"]["api_key_secret"] = "gateway-never-stored"
    install_gateway(parse_gateway_config(document, "t"))
    caller = make_caller()

    response = ask(client, caller, "hi")

    assert response.status_code == 503
    assert "gateway-never-stored" not in response.text
    assert upstream.calls == 0
    assert CHAT_MODEL in response.json()["error"]["message"]
