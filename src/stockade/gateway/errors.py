"""Gateway errors, and their rendering as OpenAI error JSON on ``/v1`` routes.

    Problem (stockade.errors)
    ├── BadInput                     400  (InvalidRequest adds the ``param``)
    ├── ModelNotAllowed         403  the tenant's allow-list lacks the model
    ├── ModelNotFound           404
    ├── UnsupportedFeature      400  a request field the gateway does not serve
    ├── UpstreamRejected        400  the provider refused the request as invalid
    ├── LedgerUnavailable       503  the usage ledger cannot be reached; nothing was sent
    └── UpstreamUnavailable     503  every provider failed and no cached answer fits

A client of ``/v1`` gets ``{"error": {"message", "type", "param", "code"}}``, the body
that OpenAI's SDKs parse, with the Problem's status and headers (``Retry-After`` on a
402, ``WWW-Authenticate`` on a 401).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi.responses import JSONResponse

from stockade.errors import BadInput, Problem
from stockade.gateway.providers import ProviderRejected

T = TypeVar("T")

GATEWAY_PREFIX = "/v1/"

# OpenAI's error types by status, so that clients which switch on `type` keep working.
# 402 is Stockade's own: budget_exceeded.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "budget_exceeded",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class InvalidRequest(BadInput):
    code = "invalid-request"

    def __init__(self, detail: str, *, param: str | None = None) -> None:
        super().__init__(detail)
        self.param = param


class UnsupportedFeature(InvalidRequest):
    code = "unsupported-parameter"


class ModelNotFound(Problem):
    status = 404
    code = "model-not-found"
    title = "Model not found"

    def __init__(self, model: str) -> None:
        super().__init__(f"the model {model!r} does not exist; GET /v1/models lists the models")
        self.param = "model"


class ModelNotAllowed(Problem):
    status = 403
    code = "model-not-allowed"
    title = "Model not allowed"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"this tenant may not use the model {model!r}; GET /v1/models lists its models"
        )
        self.param = "model"


class UpstreamRejected(BadInput):
    code = "upstream-rejected"


class LedgerUnavailable(Problem):
    status = 503
    code = "ledger-unavailable"
    title = "Usage ledger unavailable"


class UpstreamUnavailable(Problem):
    status = 503
    code = "upstream-unavailable"
    title = "Model provider unavailable"


def is_gateway_path(path: str) -> bool:
    return path.startswith(GATEWAY_PREFIX)


def openai_error_body(problem: Problem) -> dict[str, Any]:
    """Return ``problem`` as OpenAI's error object, with its data fields beside the four keys."""
    error: dict[str, Any] = {
        **{key: value for key, value in problem.data.items() if key != "errors"},
        "message": problem.detail,
        "type": _TYPES.get(problem.status, "server_error"),
        "param": getattr(problem, "param", None),
        "code": problem.code.replace("-", "_"),
    }
    return {"error": error}


def openai_error_response(problem: Problem) -> JSONResponse:
    return JSONResponse(
        openai_error_body(problem), status_code=problem.status, headers=problem.headers
    )


def openai_validation_response(errors: list[dict[str, Any]]) -> JSONResponse:
    """Render a request body that failed validation as a 400 naming the first bad field."""
    first = errors[0] if errors else {"loc": (), "msg": "the request is not valid"}
    if first.get("type") == "json_invalid":
        # Its location is a character offset, not a field.
        return openai_error_response(InvalidRequest(f"the body is not valid JSON: {first['msg']}"))
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    message = str(first.get("msg", "the request is not valid"))
    if param:
        message = f"{param}: {message}"
    return openai_error_response(InvalidRequest(message, param=param))


def openai_internal_error() -> JSONResponse:
    problem = Problem("an internal error occurred; see the server log")
    return openai_error_response(problem)


async def bad_request_on_rejection(call: Awaitable[T]) -> T:
    """Await a provider call, turning the provider's "invalid request" into a 400 for the caller."""
    try:
        return await call
    except ProviderRejected as exc:
        raise UpstreamRejected(f"the provider rejected the request: {exc.message}") from None
