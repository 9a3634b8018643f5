"""Assemble the FastAPI application and refuse to start with an undeclared route."""

from __future__ import annotations

import time
import uuid
from functools import partial
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stockade.access.guard import declared_permissions, require
from stockade.access.policy import AUTHENTICATED, PUBLIC, Policy
from stockade.audit import routes as audit_routes
from stockade.billing import payment_routes, webhooks
from stockade.billing import routes as billing_routes
from stockade.billing.entitlements import check_seat_available
from stockade.errors import BadInput, OAuthError, Problem, Unprocessable
from stockade.gateway import errors as gateway_errors
from stockade.gateway import routes as gateway_routes
from stockade.gateway.config import load_gateway_config
from stockade.gateway.service import Gateway
from stockade.identity import account, members, signin
from stockade.identity import routes as oauth_routes
from stockade.identity.bearer import BearerAuthenticator
from stockade.identity.provider import Provider
from stockade.identity.throttle import SignInThrottle
from stockade.identity.tokens import TokenService
from stockade.knowledge import routes as knowledge_routes
from stockade.knowledge.service import Knowledge
from stockade.runtime import Runtime
from stockade.tickets import routes as ticket_routes

log = structlog.get_logger(__name__)


class UndeclaredRouteError(RuntimeError):
    """A route declares no permission; deny by default means the app does not start."""


def create_app(
    runtime: Runtime, *, knowledge: Knowledge | None = None, gateway_only: bool = False
) -> FastAPI:
    """Build the app; ``gateway_only`` serves only ``/v1`` and the meta routes."""
    app = FastAPI(
        title="Stockade",
        version="0.1.0",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    tokens = TokenService(runtime.settings, runtime.keystore)
    app.state.settings = runtime.settings
    app.state.keystore = runtime.keystore
    app.state.db = runtime.db
    app.state.policy = runtime.policy
    app.state.plans = runtime.plans
    # Identity adds members; billing decides whether the plan has a seat for them.
    app.state.seat_guard = partial(check_seat_available, catalog=runtime.plans)
    app.state.tokens = tokens
    provider = Provider(runtime.settings, runtime.db, tokens)
    app.state.provider = provider
    app.state.authenticator = BearerAuthenticator(tokens, provider.proofs)
    app.state.throttle = SignInThrottle(runtime.db.app, runtime.keystore)
    app.state.knowledge = knowledge or Knowledge.from_runtime(runtime)
    app.state.gateway = Gateway(
        load_gateway_config(runtime.settings.gateway_file),
        runtime.keystore,
        runtime.db.app,
        runtime.plans,
        runtime.policy,
        app.state.knowledge.keys,
    )

    app.include_router(gateway_routes.router)
    if not gateway_only:
        _add_api_routes(app)
    _add_meta_routes(app)
    _add_error_handlers(app)
    app.add_middleware(RequestLogMiddleware)
    check_routes(app, runtime.policy)
    return app


def _add_api_routes(app: FastAPI) -> None:
    app.include_router(oauth_routes.router)
    app.include_router(signin.router)
    app.include_router(account.router)
    app.include_router(members.router)
    app.include_router(ticket_routes.router)
    app.include_router(knowledge_routes.router)
    app.include_router(audit_routes.router)
    app.include_router(billing_routes.router)
    app.include_router(payment_routes.router)
    app.include_router(webhooks.router)


def api_routes(routes: list[Any]) -> list[APIRoute]:
    """Flatten the app's routes, looking inside included routers.

    FastAPI 0.165 keeps an included router as one wrapper route whose
    ``original_router`` contains the routes; older versions copy them into the app.
    Anything that is neither is returned as is, so the check below rejects it.
    """
    flat: list[Any] = []
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            flat.extend(api_routes(included.routes))
        else:
            flat.append(route)
    return flat


def check_routes(app: FastAPI, policy: Policy) -> None:
    """Raise unless every route declares exactly one known permission."""
    for route in api_routes(app.routes):
        if not isinstance(route, APIRoute):
            raise UndeclaredRouteError(f"route {route!r} is not an API route with a permission")
        declared = declared_permissions(route)
        where = f"{sorted(route.methods or ())} {route.path}"
        if len(declared) != 1:
            raise UndeclaredRouteError(f"route {where} declares {len(declared)} permissions, not 1")
        permission = declared[0]
        if permission not in policy.permissions | {PUBLIC, AUTHENTICATED}:
            raise UndeclaredRouteError(f"route {where} needs unknown permission {permission!r}")


def _add_meta_routes(app: FastAPI) -> None:
    @app.get("/openapi.json", include_in_schema=False, dependencies=[require(PUBLIC)])
    def openapi() -> dict[str, Any]:
        return app.openapi()

    @app.get("/health", include_in_schema=False, dependencies=[require(PUBLIC)])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/", response_class=HTMLResponse, include_in_schema=False, dependencies=[require(PUBLIC)]
    )
    def home(request: Request) -> HTMLResponse:
        return signin.message_page(
            request,
            "Stockade",
            "This server is an OpenID Connect provider and a multi-tenant API. Discovery: "
            "/.well-known/openid-configuration. API: /api/v1/tickets.",
            200,
        )


def _is_oauth(request: Request) -> bool:
    return request.url.path.startswith("/oauth/")


def _problem_response(request: Request, problem: Problem) -> JSONResponse:
    return JSONResponse(
        problem.body(request.url.path),
        status_code=problem.status,
        headers=problem.headers,
        media_type="application/problem+json",
    )


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def on_problem(request: Request, exc: Problem) -> JSONResponse:
        if gateway_errors.is_gateway_path(request.url.path):
            return gateway_errors.openai_error_response(exc)
        if _is_oauth(request) and exc.status == 401:
            error = getattr(exc, "error", "") or "invalid_token"
            return JSONResponse(
                {"error": error, "error_description": exc.detail},
                status_code=401,
                headers=exc.headers,
            )
        return _problem_response(request, exc)

    @app.exception_handler(OAuthError)
    async def on_oauth_error(request: Request, exc: OAuthError) -> JSONResponse:
        headers = {"Cache-Control": "no-store", **exc.headers}
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(DataError)
    async def on_unstorable(request: Request, exc: DataError) -> JSONResponse:
        # The database refused a value the input checks let through, such as text with a
        # NUL character: bad input, not a server fault.
        log.info("unstorable_input", path=request.url.path, error=type(exc.orig).__name__)
        description = "the request contains a value that cannot be stored, e.g. a NUL character"
        if gateway_errors.is_gateway_path(request.url.path):
            return gateway_errors.openai_error_response(BadInput(description))
        if _is_oauth(request):
            return await on_oauth_error(request, OAuthError("invalid_request", description))
        return _problem_response(request, BadInput(description))

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        if gateway_errors.is_gateway_path(request.url.path):
            return gateway_errors.openai_validation_response(list(exc.errors()))
        if _is_oauth(request):
            return await on_oauth_error(request, OAuthError("invalid_request", "malformed request"))
        errors = [
            {"location": [str(part) for part in error["loc"]], "message": error["msg"]}
            for error in exc.errors()
        ]
        return _problem_response(request, Unprocessable("the request is not valid", errors=errors))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if _is_oauth(request):
            return await on_oauth_error(
                request, OAuthError("invalid_request", str(exc.detail), status=exc.status_code)
            )
        problem = Problem(str(exc.detail), headers=dict(exc.headers or {}))
        problem.status = exc.status_code
        problem.code = "http-error"
        problem.title = str(exc.detail)
        if gateway_errors.is_gateway_path(request.url.path):
            return gateway_errors.openai_error_response(problem)
        return _problem_response(request, problem)


def _internal_error(path: str) -> JSONResponse:
    if gateway_errors.is_gateway_path(path):
        return gateway_errors.openai_internal_error()
    if path.startswith("/oauth/"):
        body = {"error": "server_error", "error_description": "internal error"}
        return JSONResponse(body, status_code=500)
    problem = Problem("an internal error occurred; see the server log")
    return JSONResponse(problem.body(path), status_code=500, media_type="application/problem+json")


class RequestLogMiddleware:
    """Bind a request id for every log line and log one line per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Respond here, so the error becomes one structured log line and a clean 500
            # rather than the server's plain-text traceback.
            log.exception("unhandled_error", path=scope["path"])
            if not response_started:
                response = _internal_error(scope["path"])
                await response(scope, receive, send_with_id)
        finally:
            log.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
            structlog.contextvars.clear_contextvars()
