"""Errors that cross the HTTP boundary.

    Problem                      RFC 9457 problem+json, for /api routes
    ├── BadInput            400
    ├── Unauthorized        401  (adds WWW-Authenticate)
    ├── Forbidden           403
    ├── NotFound            404  "not found" and "not yours" look the same
    ├── Conflict            409
    └── Unprocessable       422
    OAuthError                   RFC 6749 error JSON, for /oauth routes

Each carries a machine code, a status, optional data fields and headers.
"""

from __future__ import annotations

from typing import Any


class Problem(Exception):
    status = 500
    code = "internal-error"
    title = "Internal server error"

    def __init__(
        self, detail: str | None = None, *, headers: dict[str, str] | None = None, **data: Any
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = headers or {}
        self.data = data

    def body(self, instance: str) -> dict[str, Any]:
        return {
            "type": f"urn:stockade:problem:{self.code}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
            **self.data,
        }


class BadInput(Problem):
    status = 400
    code = "bad-request"
    title = "Bad request"


class Unauthorized(Problem):
    status = 401
    code = "unauthorized"
    title = "Authentication required"

    def __init__(
        self,
        detail: str,
        *,
        error: str = "invalid_token",
        explain: bool = False,
        scheme: str = "Bearer",
        params: dict[str, str] | None = None,
    ) -> None:
        # RFC 6750 section 3 (Bearer) and RFC 9449 section 7.1 (DPoP): the challenge names
        # the error. It describes the error only with ``explain``, since for a bad token
        # the description would tell which check failed.
        fields = dict(params or {})
        if error:
            fields["error"] = error
        if explain:
            fields["error_description"] = detail
        challenge = ", ".join(f'{name}="{value}"' for name, value in fields.items())
        super().__init__(
            detail, headers={"WWW-Authenticate": f"{scheme} {challenge}" if fields else scheme}
        )
        self.error = error


class Forbidden(Problem):
    status = 403
    code = "forbidden"
    title = "Forbidden"


class NotFound(Problem):
    status = 404
    code = "not-found"
    title = "Not found"


class Conflict(Problem):
    status = 409
    code = "conflict"
    title = "Conflict"


class Unprocessable(Problem):
    status = 422
    code = "invalid-request"
    title = "Invalid request"


class OAuthError(Exception):
    """An error returned as RFC 6749 section 5.2 JSON."""

    def __init__(
        self,
        error: str,
        description: str,
        *,
        status: int = 400,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
        self.headers = headers or {}

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}
