"""An OpenAI-compatible HTTP upstream (OpenAI, vLLM, Ollama, LM Studio) called with httpx.

Each attempt has a connect and a read timeout; the read timeout also bounds the gap
between two chunks of a stream. Timeouts, refused connections, HTTP 429 and 5xx are
retried up to ``max_retries`` times with jittered delays. A 200 whose body is not a
chat completion fails at once. Every failed attempt counts against the circuit breaker.
A 400, 404 or 422 means the request itself is wrong, so it goes back to the caller
instead of to the next upstream.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import httpx
import structlog

from stockade.gateway.config import UpstreamConfig
from stockade.gateway.providers import (
    ChatCall,
    ChatResult,
    ProviderFailure,
    ProviderRejected,
    StreamEvent,
    Usage,
)
from stockade.gateway.resilience import CircuitBreaker, retry_delay
from stockade.keys import KeyStore

log = structlog.get_logger(__name__)
T = TypeVar("T")

_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_CALLER_ERROR_STATUS = frozenset({400, 404, 413, 422})
_MAX_ERROR_MESSAGE = 300


class Garbled(ValueError):
    """The upstream answered 200 with a body that is not what the protocol says."""


class OpenAIUpstream:
    def __init__(self, config: UpstreamConfig, keystore: KeyStore) -> None:
        self.name = config.name
        self.config = config
        self.keystore = keystore
        self.breaker = CircuitBreaker(
            config.name, config.breaker_failures, config.breaker_reset_seconds
        )
        # httpx pools belong to one event loop, and a test can drive the app from two.
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient]
        self._clients = weakref.WeakKeyDictionary()

    async def complete(self, call: ChatCall) -> ChatResult:
        body = {**_chat_body(call), "stream": False}
        return await self._post("/chat/completions", body, call.headers, _parse_completion)

    async def embed(self, body: Mapping[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
        return await self._post("/embeddings", body, headers, _parse_embeddings)

    async def open_stream(self, call: ChatCall) -> AsyncIterator[StreamEvent]:
        # Usage is always asked for, so the reservation settles with the real count.
        body = {**_chat_body(call), "stream": True, "stream_options": {"include_usage": True}}

        async def opened(response: httpx.Response) -> httpx.Response:
            return response

        response = await self._attempts(
            lambda: self._send("/chat/completions", body, call.headers, stream=True), opened
        )
        return self._events(response)

    def close(self) -> None:
        """Close the connection pools, each on its own event loop, from outside those loops."""
        for loop, client in list(self._clients.items()):
            if loop.is_closed():
                continue
            if loop.is_running():
                asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(timeout=10)
            else:
                loop.run_until_complete(client.aclose())
        self._clients.clear()

    async def _post(
        self,
        path: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        parse: Callable[[Any], T],
    ) -> T:
        async def read(response: httpx.Response) -> T:
            try:
                return parse(response.json())
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                raise Garbled(
                    f"the response is not a valid chat completion ({type(exc).__name__})"
                ) from exc

        return await self._attempts(lambda: self._send(path, body, headers, stream=False), read)

    async def _attempts(
        self,
        send: Callable[[], Awaitable[httpx.Response]],
        read: Callable[[httpx.Response], Awaitable[T]],
    ) -> T:
        """Send with retries; ``read`` turns a 200 response into the result or raises Garbled."""
        retries = self.config.max_retries
        for attempt in range(retries + 1):
            if not self.breaker.allow():
                raise ProviderFailure(self.name, "circuit open")
            retry_after: float | None = None
            try:
                response = await send()
                if response.status_code == 200:
                    result = await read(response)
                    self.breaker.record_success()
                    return result
                reason, retryable, retry_after = await self._refusal(response)
            except httpx.TimeoutException:
                reason, retryable = "timed out", True
            except httpx.TransportError as exc:
                reason, retryable = f"connection failed ({type(exc).__name__})", True
            except Garbled as exc:
                reason, retryable = str(exc), False
            self.breaker.record_failure()
            if not retryable or attempt == retries:
                log.warning(
                    "upstream_failed", upstream=self.name, reason=reason, attempts=attempt + 1
                )
                raise ProviderFailure(self.name, reason)
            delay = retry_delay(attempt, retry_after)
            log.info("upstream_retry", upstream=self.name, reason=reason, delay_s=round(delay, 3))
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises")

    async def _refusal(self, response: httpx.Response) -> tuple[str, bool, float | None]:
        """Classify a non-200 answer; raise ``ProviderRejected`` for a caller's error."""
        status = response.status_code
        content = await response.aread()
        await response.aclose()
        if status in _CALLER_ERROR_STATUS:
            # The upstream is healthy; the request is at fault.
            self.breaker.record_success()
            raise ProviderRejected(self.name, status, _error_message(content))
        retry_after = _seconds(response.headers.get("retry-after"))
        if status in (401, 403):
            log.error("upstream_credentials_refused", upstream=self.name, status=status)
            return f"refused our credentials (HTTP {status})", False, None
        return f"HTTP {status}", status in _RETRYABLE_STATUS, retry_after

    async def _send(
        self, path: str, body: Mapping[str, Any], headers: Mapping[str, str], *, stream: bool
    ) -> httpx.Response:
        client = self._client()
        request = client.build_request(
            "POST", f"{self.config.base_url}{path}", json=body, headers=self._headers(headers)
        )
        return await client.send(request, stream=stream)

    async def _events(self, response: httpx.Response) -> AsyncIterator[StreamEvent]:
        try:
            async for line in response.aiter_lines():
                event = _stream_line(self.name, line)
                if event == "done":
                    return
                if isinstance(event, StreamEvent):
                    yield event
        except httpx.TimeoutException:
            self.breaker.record_failure()
            raise ProviderFailure(self.name, "timed out in the middle of a stream") from None
        except httpx.TransportError as exc:
            self.breaker.record_failure()
            raise ProviderFailure(self.name, f"stream broken ({type(exc).__name__})") from None
        finally:
            await response.aclose()

    def _headers(self, extra: Mapping[str, str]) -> dict[str, str]:
        headers = {"Accept": "application/json", **extra}
        if self.config.api_key_secret:
            secret = self.keystore.get_secret(self.config.api_key_secret)
            if secret is None:
                raise ProviderFailure(
                    self.name, f"key store has no secret {self.config.api_key_secret!r}"
                )
            headers["Authorization"] = f"Bearer {secret.reveal()}"
        return headers

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            timeout = httpx.Timeout(
                self.config.timeout_seconds, connect=self.config.connect_timeout_seconds
            )
            # trust_env=False: no proxy or netrc from the environment reaches provider calls.
            client = httpx.AsyncClient(
                timeout=timeout,
                trust_env=False,
                follow_redirects=False,
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            )
            self._clients[loop] = client
        return client


def _chat_body(call: ChatCall) -> dict[str, Any]:
    return {
        **call.params,
        "model": call.model,
        "messages": [dict(message) for message in call.messages],
        "max_tokens": call.max_tokens,
    }


def _parse_completion(data: Any) -> ChatResult:
    choice = data["choices"][0]
    content = choice["message"].get("content") or ""
    if not isinstance(content, str):
        raise TypeError("message content is not text")
    usage = data.get("usage") or {}
    return ChatResult(
        content=content,
        finish_reason=str(choice.get("finish_reason") or "stop"),
        usage=Usage(_count(usage, "prompt_tokens"), _count(usage, "completion_tokens")),
    )


def _parse_embeddings(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data["data"], list):
        raise TypeError("no list of embeddings")
    for item in data["data"]:
        if not isinstance(item, dict) or "embedding" not in item:
            raise TypeError("an item has no embedding")
    return data


def _stream_line(provider: str, line: str) -> StreamEvent | str | None:
    """Parse one line of server-sent events: an event, "done", or None for anything else."""
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if payload == "[DONE]":
        return "done"
    try:
        chunk = json.loads(payload)
        usage = chunk.get("usage")
        choices = chunk.get("choices") or []
        delta = choices[0].get("delta") or {} if choices else {}
        text = delta.get("content") or ""
        if not isinstance(text, str):
            raise TypeError("delta content is not text")
        return StreamEvent(
            delta=text,
            finish_reason=choices[0].get("finish_reason") if choices else None,
            usage=Usage(_count(usage, "prompt_tokens"), _count(usage, "completion_tokens"))
            if usage
            else None,
        )
    except (ValueError, AttributeError, TypeError, IndexError) as exc:
        raise ProviderFailure(provider, f"invalid stream data ({type(exc).__name__})") from None


def _count(usage: Mapping[str, Any], key: str) -> int:
    value = usage.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"usage.{key} is not a whole number")
    return value


def _error_message(content: bytes) -> str:
    try:
        message = json.loads(content)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return "no error message"
    return str(message)[:_MAX_ERROR_MESSAGE]


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
