"""The official ``openai`` SDK, unchanged, against a live Stockade server on 127.0.0.1."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import openai
import pytest

from stockade.gateway.service import Gateway
from stockade.runtime import Runtime
from tests.gateway.conftest import (
    CHAT_MODEL,
    EMBEDDING_MODEL,
    Caller,
    audit_events,
    ledger_rows,
    wait_for,
)
from tests.gateway.upstream import ECHO_PREFIX, EMBEDDING_SIZE, MockUpstream


@pytest.fixture
def sdk(
    live_server: str, gateway: Gateway, make_caller: Callable[..., Caller]
) -> Iterator[tuple[openai.OpenAI, Caller]]:
    caller = make_caller()
    # max_retries=0: every status the test gets is the gateway's own response.
    http_client = httpx.Client(trust_env=False)
    client = openai.OpenAI(
        api_key=caller.token, base_url=f"{live_server}/v1", max_retries=0, http_client=http_client
    )
    yield client, caller
    client.close()


def test_sdk_plain_completion(
    sdk: tuple[openai.OpenAI, Caller], runtime: Runtime, upstream: MockUpstream
) -> None:
    client, caller = sdk

    completion = client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "ping from the SDK"}]
    )

    assert completion.choices[0].message.content == f"{ECHO_PREFIX}ping from the SDK"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == CHAT_MODEL
    assert completion.usage is not None
    assert completion.usage.total_tokens > 0
    assert (completion.model_extra or {})["stockade"]["provider"] == "primary"
    wait_for(
        lambda: ledger_rows(runtime, caller.tenant_id, "llm_call") == [1], "the call was settled"
    )


def test_sdk_streaming_with_usage(
    sdk: tuple[openai.OpenAI, Caller], runtime: Runtime, upstream: MockUpstream
) -> None:
    client, caller = sdk

    stream = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "stream these five words"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert text == f"{ECHO_PREFIX}stream these five words"
    assert finishes[-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(text.split())
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert upstream.last_request()["stream"] is True
    wait_for(
        lambda: (
            ledger_rows(runtime, caller.tenant_id, "llm_tokens")
            == [chunks[-1].usage.total_tokens if chunks[-1].usage else -1]
        ),
        "the stream was settled with the provider's token count",
    )


def test_sdk_streaming_without_usage(sdk: tuple[openai.OpenAI, Caller]) -> None:
    client, _ = sdk

    chunks = list(
        client.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "no usage please"}], stream=True
        )
    )

    assert all(chunk.usage is None for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == (
        f"{ECHO_PREFIX}no usage please"
    )


def test_sdk_embeddings_default_base64(
    sdk: tuple[openai.OpenAI, Caller], runtime: Runtime, upstream: MockUpstream
) -> None:
    client, caller = sdk

    result = client.embeddings.create(model=EMBEDDING_MODEL, input=["first text", "second"])
    floats = client.embeddings.create(model=EMBEDDING_MODEL, input="one", encoding_format="float")

    assert [len(item.embedding) for item in result.data] == [EMBEDDING_SIZE, EMBEDDING_SIZE]
    assert result.model == EMBEDDING_MODEL
    assert result.usage.prompt_tokens == 3
    assert len(floats.data[0].embedding) == EMBEDDING_SIZE
    wait_for(
        lambda: ledger_rows(runtime, caller.tenant_id, "llm_call") == [1, 1],
        "both embedding calls were settled",
    )


def test_sdk_lists_models(sdk: tuple[openai.OpenAI, Caller]) -> None:
    client, _ = sdk

    names = [model.id for model in client.models.list()]

    assert CHAT_MODEL in names
    assert "stockade-extractive" in names
    assert "stockade-rag" in names


def test_sdk_sees_402_with_retry_after(
    sdk: tuple[openai.OpenAI, Caller], runtime: Runtime, upstream: MockUpstream
) -> None:
    client, caller = sdk
    free_calls_per_day = runtime.plans.by_name("free").llm_calls_per_day
    for index in range(free_calls_per_day):
        client.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": f"call {index}"}]
        )

    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "one too many"}]
        )

    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    expected = math.ceil((midnight - now).total_seconds())
    response = raised.value.response
    assert response.status_code == 402
    assert abs(int(response.headers["retry-after"]) - expected) <= 2
    error = response.json()["error"]
    assert error["type"] == "budget_exceeded"
    assert error["code"] == "budget_exceeded"
    assert error["limit"] == free_calls_per_day
    assert upstream.calls == free_calls_per_day
    refused = audit_events(runtime, caller.tenant_id, "llm:refused")
    assert [event.data["kind"] for event in refused] == ["llm_call"]
    assert [event.subject for event in refused] == [CHAT_MODEL]
