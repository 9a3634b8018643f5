"""``POST /v1/chat/completions`` through the TestClient: answers, records and errors."""

from __future__ import annotations

import io
import json
from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import text

from stockade.audit.logs import configure_logging
from stockade.db import Scope, scoped_transaction
from stockade.gateway import budget, control
from stockade.gateway.config import parse_gateway_config
from stockade.gateway.service import Gateway
from stockade.runtime import Runtime
from tests.gateway.conftest import (
    CHAT_MODEL,
    Caller,
    ask,
    audit_events,
    chat_body,
    gateway_document,
    ledger_rows,
    open_reservations,
)
from tests.gateway.upstream import ECHO_PREFIX, MockUpstream


def test_completion_answers_and_settles(
    client: TestClient,
    runtime: Runtime,
    gateway: Gateway,
    upstream: MockUpstream,
    make_caller: Callable[..., Caller],
) -> None:
    caller = make_caller()

    response = ask(client, caller, "what is a stockade", max_tokens=50)

    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == CHAT_MODEL
    assert body["choices"][0]["message"]["content"] == f"{ECHO_PREFIX}what is a stockade"
    assert body["usage"]["completion_tokens"] == len(f"{ECHO_PREFIX}what is a stockade".split())
    assert body["stockade"]["provider"] == "primary"
    assert body["stockade"]["fallback"] is None
    assert upstream.last_request()["model"] == "mock-model"
    assert upstream.last_request()["max_tokens"] == 50
    assert ledger_rows(runtime, caller.tenant_id, "llm_call") == [1]
    assert ledger_rows(runtime, caller.tenant_id, "llm_tokens") == [body["usage"]["total_tokens"]]
    assert open_reservations(runtime, caller.tenant_id) == 0


def test_call_audited_with_trace_id(
    client: TestClient,
    runtime: Runtime,
    gateway: Gateway,
    make_caller: Callable[..., Caller],
) -> None:
    caller = make_caller()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {**caller.headers, "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}

    response = client.post("/v1/chat/completions", json=chat_body("hello"), headers=headers)

    assert response.status_code == 200
    events = audit_events(runtime, caller.tenant_id)
    assert [event.action for event in events] == ["llm:invoked"]
    assert events[0].subject == CHAT_MODEL
    assert events[0].trace_id == trace_id
    assert events[0].request_id == response.headers["x-request-id"]
    assert events[0].data["provider"] == "primary"


def test_trace_id_defaults_to_request_id(
    client: TestClient, runtime: Runtime, gateway: Gateway, make_caller: Callable[..., Caller]
) -> None:
    caller = make_caller()

    response = ask(client, caller, "hi")

    events = audit_events(runtime, caller.tenant_id)
    assert events[0].trace_id == response.headers["x-request-id"]


def test_logs_carry_ids_not_prompt(
    client: TestClient, gateway: Gateway, make_caller: Callable[..., Caller]
) -> None:
    caller = make_caller()
    secret_question = "the launch code is purple-elephant-42"
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)
    try:
        response = ask(client, caller, secret_question)
    finally:
        configure_logging(json=False)

    assert response.status_code == 200
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    calls = [line for line in lines if line["event"] == "gateway_call"]
    assert len(calls) == 1
    assert calls[0]["tenant_id"] == str(caller.tenant_id)
    assert calls[0]["trace_id"] == response.headers["x-request-id"]
    assert calls[0]["model"] == CHAT_MODEL
    assert "purple-elephant" not in stream.getvalue()


def test_missing_token_gets_openai_401(client: TestClient, gateway: Gateway) -> None:
    response = client.post("/v1/chat/completions", json=chat_body("hi"))

    assert response.status_code == 401
    assert "WWW-Authenticate" in response.headers
    error = response.json()["error"]
    assert error["type"] == "authentication_error"
    assert set(error) >= {"message", "type", "param", "code"}


def test_role_without_llm_invoke_gets_403(
    client: TestClient, gateway: Gateway, upstream: MockUpstream, make_caller: Callable[..., Caller]
) -> None:
    auditor = make_caller(roles=("auditor",))

    response = ask(client, auditor, "hi")

    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_error"
    assert upstream.calls == 0


def test_unknown_model_gets_404(
    client: TestClient, gateway: Gateway, make_caller: Callable[..., Caller]
) -> None:
    caller = make_caller()

    response = ask(client, caller, "hi", model="gpt-nonexistent")

    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"


def test_malformed_body_gets_400_naming_field(
    client: TestClient, gateway: Gateway, make_caller: Callable[..., Caller]
) -> None:
    caller = make_caller()
    not_json = client.post(
        "/v1/chat/completions",
        content=b"{not json",
        headers={**caller.headers, "Content-Type": "application/json"},
    )
    bad_role = client.post(
        "/v1/chat/completions",
        json={"model": CHAT_MODEL, "messages": [{"role": "wizard", "content": "x"}]},
        headers=caller.headers,
    )
    no_messages = client.post(
        "/v1/chat/completions", json={"model": CHAT_MODEL, "messages": []}, headers=caller.headers
    )

    assert not_json.status_code == 400
    assert not_json.json()["error"]["type"] == "invalid_request_error"
    assert not_json.json()["error"]["message"].startswith("the body is not valid JSON")
    assert not_json.json()["error"]["param"] is None
    loose = client.post(
        "/v1/chat/completions",
        json={**chat_body("hi"), "stream": "yes"},
        headers=caller.headers,
    )
    assert loose.status_code == 400
    assert loose.json()["error"]["param"] == "stream"
    assert bad_role.status_code == 400
    assert bad_role.json()["error"]["param"] == "messages.0.role"
    assert no_messages.status_code == 400
    assert no_messages.json()["error"]["param"] == "messages"


def test_nul_and_loose_types_get_400(
    client: TestClient, gateway: Gateway, make_caller: Callable[..., Caller]
) -> None:
    caller = make_caller()
    cases = [
        ("/v1/chat/completions", chat_body("a\x00b")),
        ("/v1/chat/completions", {**chat_body("hi"), "max_tokens": True}),
        ("/v1/embeddings", {"model": "any", "input": ["fine", "a\x00b"]}),
    ]
    for path, body in cases:
        response = client.post(path, json=body, headers=caller.headers)
        assert response.status_code == 400, (path, body, response.text)
        assert response.json()["error"]["type"] == "invalid_request_error"
    wrong_method = client.get("/v1/chat/completions", headers=caller.headers)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["type"] == "invalid_request_error"


def test_lone_surrogate_gets_400(
    client: TestClient, gateway: Gateway, make_caller: Callable[..., Caller]
) -> None:
    caller = make_caller()
    headers = {**caller.headers, "Content-Type": "application/json"}
    bodies = {
        "/v1/chat/completions": b'{"model": "%s", "messages": [{"role": "user", "content":'
        b' "\\ud800 hi"}]}' % CHAT_MODEL.encode(),
        "/v1/embeddings": b'{"model": "any", "input": "\\ud800 hi"}',
    }
    for path, body in bodies.items():
        response = client.post(path, content=body, headers=headers)
        assert response.status_code == 400, (path, response.text)
        assert "invalid Unicode" in response.json()["error"]["message"]


def test_unsupported_fields_refused_and_released(
    client: TestClient,
    runtime: Runtime,
    gateway: Gateway,
    upstream: MockUpstream,
    make_caller: Callable[..., Caller],
) -> None:
    caller = make_caller()
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]

    with_tools = ask(client, caller, "hi", tools=tools)
    two_choices = ask(client, caller, "hi", n=2)

    assert with_tools.status_code == 400
    assert with_tools.json()["error"]["param"] == "tools"
    assert two_choices.status_code == 400
    assert two_choices.json()["error"]["param"] == "n"
    assert upstream.calls == 0
    assert ledger_rows(runtime, caller.tenant_id, "llm_call") == []


def test_tenant_allow_list_limits_models(
    client: TestClient,
    runtime: Runtime,
    gateway: Gateway,
    upstream: MockUpstream,
    make_caller: Callable[..., Caller],
) -> None:
    caller = make_caller()
    control.set_settings(
        runtime.db.owner,
        gateway.config,
        caller.tenant_id,
        allowed_models=["stockade-extractive"],
        sample_consent=False,
        sample_percent=0,
    )

    refused = ask(client, caller, "hi")
    listed = client.get("/v1/models", headers=caller.headers)

    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "model_not_allowed"
    assert upstream.calls == 0
    assert [model["id"] for model in listed.json()["data"]] == ["stockade-extractive"]
    assert open_reservations(runtime, caller.tenant_id) == 0


def test_default_allow_list_from_file(
    client: TestClient,
    install_gateway: Callable[..., Gateway],
    upstream: MockUpstream,
    make_caller: Callable[..., Caller],
) -> None:
    document = {**gateway_document(upstream.url), "default_allowed_models": ["mock-chat"]}
    install_gateway(parse_gateway_config(document, "test"))
    caller = make_caller()

    listed = client.get("/v1/models", headers=caller.headers)
    refused = ask(client, caller, "hi", model="stockade-extractive")

    assert [model["id"] for model in listed.json()["data"]] == ["mock-chat"]
    assert refused.status_code == 403


def test_provider_rejection_is_400(
    client: TestClient,
    runtime: Runtime,
    gateway: Gateway,
    upstream: MockUpstream,
    make_caller: Callable[..., Caller],
) -> None:
    caller = make_caller()
    upstream.mode = "reject"

    response = ask(client, caller, "hi")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "upstream_rejected"
    assert "max_tokens is too large" in error["message"]
    assert ledger_rows(runtime, caller.tenant_id, "llm_call") == []
    assert open_reservations(runtime, caller.tenant_id) == 0
    assert [event.action for event in audit_events(runtime, caller.tenant_id)] == ["llm:failed"]


def test_sampling_only_with_consent(
    client: TestClient, runtime: Runtime, gateway: Gateway, make_caller: Callable[..., Caller]
) -> None:
    consenting = make_caller()
    silent = make_caller()
    control.set_settings(
        runtime.db.owner,
        gateway.config,
        consenting.tenant_id,
        allowed_models=None,
        sample_consent=True,
        sample_percent=100,
    )
    control.set_settings(
        runtime.db.owner,
        gateway.config,
        silent.tenant_id,
        allowed_models=None,
        sample_consent=False,
        sample_percent=100,
    )

    for caller in (consenting, silent):
        response = ask(client, caller, "write to jane@example.com")
        assert response.status_code == 200

    samples = {}
    for caller in (consenting, silent):
        auditor = Scope(tenant_id=caller.tenant_id, roles=("auditor",))
        with scoped_transaction(runtime.db.app, auditor) as conn:
            samples[caller.tenant_id] = budget.read_samples(conn, gateway.keys, caller.tenant_id)
    assert samples[silent.tenant_id] == []
    [sample] = samples[consenting.tenant_id]
    assert sample.prompt == [{"role": "user", "content": "write to <EMAIL_1>"}]
    assert "jane@example.com" not in sample.output
    auditor = Scope(tenant_id=consenting.tenant_id, roles=("auditor",))
    with scoped_transaction(runtime.db.app, auditor) as conn:
        stored = conn.execute(text("select t::text from gateway_samples as t")).scalars().all()
    assert len(stored) == 1
    assert "EMAIL_1" not in stored[0]
    assert "write to" not in stored[0]
