"""A stand-in for an OpenAI-compatible provider, served by uvicorn on 127.0.0.1.

It speaks the parts of the protocol the gateway uses: ``POST /v1/chat/completions``
(plain and server-sent events) and ``POST /v1/embeddings``. Its answer echoes the last
user message, so a test can see what reached the provider. ``mode`` makes it fail the
ways real providers do:

- ``ok``: answer normally
- ``error``: HTTP 500 with an OpenAI error body
- ``hang``: accept the request and answer only after ``HANG_SECONDS``
- ``garbage``: HTTP 200 with an HTML page
- ``reject``: HTTP 400, the provider's word that the request is invalid
- ``break``: stream two chunks, then stop sending without ending the stream

The benchmark uses it too, so it depends on nothing from the tests.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

ECHO_PREFIX = "Echo: "
# Longer than any gateway timeout in the tests; the server cancels it when it stops.
HANG_SECONDS = 300
EMBEDDING_SIZE = 8


class MockUpstream:
    def __init__(self, api_key: str | None = None, delay_seconds: float = 0.0) -> None:
        self.api_key = api_key
        self.delay_seconds = delay_seconds
        self.mode = "ok"
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/embeddings", self._embeddings, methods=["POST"]),
            ]
        )
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None
        self.url = ""

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.requests)

    def last_request(self) -> dict[str, Any]:
        with self._lock:
            return self.requests[-1]

    def start(self) -> MockUpstream:
        port = free_port()
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the mock upstream did not start within 15 seconds")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(timeout=10)

    async def _chat(self, request: Request) -> Response:
        refusal = self._refuse(request)
        if refusal is not None:
            return refusal
        body = await request.json()
        with self._lock:
            self.requests.append(body)
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        failure = await self._failure()
        if failure is not None:
            return failure
        messages = body.get("messages") or []
        question = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        answer = f"{ECHO_PREFIX}{question}"
        usage = {
            "prompt_tokens": sum(len(str(m.get("content", "")).split()) for m in messages),
            "completion_tokens": len(answer.split()),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if body.get("stream"):
            return StreamingResponse(
                self._stream(body, answer, usage), media_type="text/event-stream"
            )
        return JSONResponse(
            {
                "id": "chatcmpl-mock",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        )

    async def _stream(
        self, body: dict[str, Any], answer: str, usage: dict[str, int]
    ) -> AsyncIterator[str]:
        words = answer.split(" ")
        for index, word in enumerate(words):
            piece = word if index == 0 else f" {word}"
            yield _event(body, {"content": piece}, None)
            if self.mode == "break" and index == 1:
                # Stop sending without ending the stream, as a provider that stalls does.
                await asyncio.sleep(HANG_SECONDS)
                return
        yield _event(body, {}, "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            yield "data: " + json.dumps({"choices": [], "usage": usage}) + "\n\n"
        yield "data: [DONE]\n\n"

    async def _embeddings(self, request: Request) -> Response:
        refusal = self._refuse(request)
        if refusal is not None:
            return refusal
        body = await request.json()
        with self._lock:
            self.requests.append(body)
        failure = await self._failure()
        if failure is not None:
            return failure
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = []
        for index, item in enumerate(inputs):
            vector = [float(len(str(item)) % 7 + position) for position in range(EMBEDDING_SIZE)]
            embedding: Any = vector
            if body.get("encoding_format") == "base64":
                embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(len(str(item).split()) for item in inputs)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": body.get("model"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    def _refuse(self, request: Request) -> Response | None:
        if self.api_key is None:
            return None
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return JSONResponse(
                {"error": {"message": "invalid key", "type": "invalid_request_error"}},
                status_code=401,
            )
        return None

    async def _failure(self) -> Response | None:
        if self.mode == "error":
            return JSONResponse(
                {"error": {"message": "the mock provider is down", "type": "server_error"}},
                status_code=500,
            )
        if self.mode == "hang":
            await asyncio.sleep(HANG_SECONDS)
            return Response(status_code=503)
        if self.mode == "garbage":
            return Response("<html><body>502 Bad Gateway</body></html>", media_type="text/html")
        if self.mode == "reject":
            return JSONResponse(
                {"error": {"message": "max_tokens is too large", "type": "invalid_request_error"}},
                status_code=400,
            )
        return None


def _event(body: dict[str, Any], delta: dict[str, Any], finish_reason: str | None) -> str:
    chunk = {
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model"),
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    return "data: " + json.dumps(chunk) + "\n\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
