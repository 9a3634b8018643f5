"""A stand-in for the few Stripe API endpoints Stockade calls, served on 127.0.0.1.

- ``GET /v1/subscriptions`` lists ``subscriptions`` in pages (``limit``, ``starting_after``).
- ``POST /v1/checkout/sessions`` records the form-encoded parameters and returns a session.

Every request must carry ``Authorization: Bearer <api_key>``; others get Stripe's 401 error
shape. Objects follow the shapes of the fixtures next to this file.
"""

from __future__ import annotations

import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit


class StripeStub:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.sessions: list[dict[str, str]] = []
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> StripeStub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_GET(self) -> None:
                stub.requests.append(("GET", self.path))
                if not self._authorized():
                    return
                parts = urlsplit(self.path)
                if parts.path != "/v1/subscriptions":
                    self._error(404, f"Unrecognized request URL (GET: {parts.path})")
                    return
                self._json(200, stub._subscription_page(parse_qs(parts.query)))

            def do_POST(self) -> None:
                stub.requests.append(("POST", self.path))
                if not self._authorized():
                    return
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(parse_qsl(self.rfile.read(length).decode()))
                if urlsplit(self.path).path != "/v1/checkout/sessions":
                    self._error(404, f"Unrecognized request URL (POST: {self.path})")
                    return
                stub.sessions.append(form)
                self._json(200, stub._session(form))

            def _authorized(self) -> bool:
                if self.headers.get("Authorization") == f"Bearer {stub.api_key}":
                    return True
                self._error(401, "Invalid API Key provided")
                return False

            def _error(self, status: int, message: str) -> None:
                kind = "authentication_error" if status == 401 else "invalid_request_error"
                self._json(status, {"error": {"type": kind, "message": message}})

            def _json(self, status: int, document: dict[str, Any]) -> None:
                body = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Request-Id", f"req_stub_{secrets.token_hex(6)}")
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def _subscription_page(self, query: dict[str, list[str]]) -> dict[str, Any]:
        limit = int(query.get("limit", ["10"])[0])
        ordered = list(self.subscriptions.values())
        after = query.get("starting_after", [None])[0]
        if after is not None:
            ids = [item["id"] for item in ordered]
            ordered = ordered[ids.index(after) + 1 :]
        return {
            "object": "list",
            "data": ordered[:limit],
            "has_more": len(ordered) > limit,
            "url": "/v1/subscriptions",
        }

    def _session(self, form: dict[str, str]) -> dict[str, Any]:
        session_id = f"cs_test_{secrets.token_hex(12)}"
        return {
            "id": session_id,
            "object": "checkout.session",
            "mode": form.get("mode"),
            "status": "open",
            "client_reference_id": form.get("client_reference_id"),
            "customer": form.get("customer"),
            "metadata": {
                key[len("metadata[") : -1]: value
                for key, value in form.items()
                if key.startswith("metadata[")
            },
            "success_url": form.get("success_url"),
            "cancel_url": form.get("cancel_url"),
            "url": f"https://checkout.stripe.com/c/pay/{session_id}",
        }
