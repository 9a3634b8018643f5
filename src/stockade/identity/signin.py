"""The sign-in pages: ``/login``, the tenant picker, and sign-out.

Forms carry a CSRF token: the HMAC of a random cookie value under a key store key, so a
page on another site can neither read nor forge it (signed double-submit cookie).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from stockade.access.guard import require
from stockade.access.policy import PUBLIC
from stockade.identity import mfa, sessions, store, throttle
from stockade.identity.passwords import dummy_hash, hash_password, needs_rehash, verify_password
from stockade.identity.provider import AuthorizationRequest, AuthorizationRequestError, now_utc

log = structlog.get_logger(__name__)
router = APIRouter()
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")

SESSION_COOKIE = "stockade_session"
CSRF_COOKIE = "stockade_csrf"
_HTML_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    response = templates.TemplateResponse(request, name, context, status_code=status)
    response.headers.update(_HTML_HEADERS)
    return response


def message_page(request: Request, heading: str, message: str, status: int) -> HTMLResponse:
    return render(
        request, "message.html", status, heading=heading, message=message, is_error=status >= 400
    )


# CSRF


def csrf_token_for(request: Request, cookie_value: str) -> str:
    key = request.app.state.keystore.get_or_create_secret("csrf-key").reveal().encode()
    return hmac.new(key, cookie_value.encode(), hashlib.sha256).hexdigest()


def csrf_cookie(request: Request) -> str:
    return request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)


def csrf_valid(request: Request, submitted: str) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE)
    if not cookie or not submitted:
        return False
    return hmac.compare_digest(csrf_token_for(request, cookie), submitted)


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        httponly=True,
        samesite="lax",
        secure=request.app.state.settings.issuer.startswith("https://"),
        path="/",
    )


def render_form(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """Render a page with a form, adding its CSRF token and cookie."""
    cookie = csrf_cookie(request)
    response = render(request, name, status, csrf_token=csrf_token_for(request, cookie), **context)
    set_cookie(request, response, CSRF_COOKIE, cookie, max_age=3600)
    return response


def login_form(
    request: Request,
    authorization_query: str,
    *,
    error: str | None = None,
    email: str = "",
    status: int = 200,
) -> HTMLResponse:
    cookie = csrf_cookie(request)
    params = dict(parse_qsl(authorization_query))
    client = store.find_client(request.app.state.db.app, params.get("client_id", ""))
    response = render(
        request,
        "login.html",
        status,
        csrf_token=csrf_token_for(request, cookie),
        authorization_request=authorization_query,
        client_name=client.name if client else None,
        error=error,
        email=email,
    )
    set_cookie(request, response, CSRF_COOKIE, cookie, max_age=3600)
    return response


def tenant_picker(
    request: Request, authorization_query: str, choices: list[store.TenantChoice]
) -> HTMLResponse:
    cookie = csrf_cookie(request)
    response = render(
        request,
        "tenant.html",
        csrf_token=csrf_token_for(request, cookie),
        authorization_request=authorization_query,
        choices=choices,
    )
    set_cookie(request, response, CSRF_COOKIE, cookie, max_age=3600)
    return response


def current_session(request: Request) -> tuple[uuid.UUID, tuple[str, ...], Any] | None:
    raw = request.cookies.get(SESSION_COOKIE)
    if not raw:
        return None
    return store.browser_session(request.app.state.db.app, raw)


# Routes


@router.get("/login", response_class=HTMLResponse, dependencies=[require(PUBLIC)])
def show_login(request: Request) -> HTMLResponse:
    return login_form(request, request.url.query)


@router.post("/login", response_class=HTMLResponse, dependencies=[require(PUBLIC)])
async def submit_login(request: Request) -> Response:
    # Password hashing and the database block, so the work runs in the thread pool.
    return await run_in_threadpool(_sign_in, request, await request.form())


def _sign_in(request: Request, form: FormData) -> Response:
    email = str(form.get("email", "")).strip().lower()
    password = str(form.get("password", ""))
    query = str(form.get("request", ""))
    if not csrf_valid(request, str(form.get("csrf_token", ""))):
        return login_form(
            request, query, error="The form expired; please sign in again.", email=email, status=400
        )

    state = request.app.state
    # Known and unknown e-mail addresses meet the same counters and get the same responses.
    attempt = state.throttle.begin(email, throttle.client_host(request))
    if attempt.retry_after:
        return _too_many_attempts(request, query, email, attempt.retry_after)
    user = store.find_user_by_email(state.db.app, email) if email else None
    # Verify against a dummy hash for unknown e-mail addresses so both cost the same.
    valid = verify_password(user.password_hash if user else dummy_hash(), password)
    if user is None or not valid:
        log.info("sign_in_failed", reason="bad_credentials")
        state.throttle.record_failure(attempt, user.id if user else None)
        return login_form(
            request,
            query,
            error="The e-mail address or password is incorrect.",
            email=email,
            status=401,
        )

    if not mfa.is_enrolled(state.db.app, user.id):
        state.throttle.record_success(attempt, user.id)
    # NOTE: with MFA, the attempt stays counted until the code step passes, so guessing
    # codes costs password attempts, which the account throttle delays and locks.
    if needs_rehash(user.password_hash):
        store.replace_password_hash(state.db.app, user.id, hash_password(password))
    log.info("password_verified", user_id=str(user.id))
    return start_session(request, user.id, query)


def _too_many_attempts(request: Request, query: str, email: str, retry_after: int) -> Response:
    """Return 429 and the wait, without checking the password, whether or not it is right."""
    wait = throttle.wait_text(retry_after)
    error = f"Too many sign-in attempts. Try again in {wait}."
    response = login_form(request, query, error=error, email=email, status=429)
    response.headers["Retry-After"] = str(retry_after)
    return response


def start_session(request: Request, user_id: uuid.UUID, query: str) -> Response:
    """Open a browser session after the password; a user with MFA must pass it next."""
    state = request.app.state
    pending = mfa.is_enrolled(state.db.app, user_id)
    raw = store.create_browser_session(
        state.db.app, user_id, ["pwd"], state.settings.browser_session_hours, mfa_pending=pending
    )
    if pending:
        target = f"/login/mfa?{query}"
    else:
        target = f"/oauth/authorize?{query}" if query else "/account"
    response = RedirectResponse(target, status_code=303)
    set_cookie(
        request, response, SESSION_COOKIE, raw, max_age=state.settings.browser_session_hours * 3600
    )
    return response


@router.get("/login/done", response_class=HTMLResponse, dependencies=[require(PUBLIC)])
def signed_in(request: Request) -> HTMLResponse:
    if current_session(request) is None:
        return message_page(request, "Not signed in", "Your session has ended.", 401)
    return message_page(request, "Signed in", "You are signed in to Stockade.", 200)


@router.post("/login/tenant", response_class=HTMLResponse, dependencies=[require(PUBLIC)])
async def choose_tenant(request: Request) -> Response:
    return await run_in_threadpool(_choose_tenant, request, await request.form())


def _choose_tenant(request: Request, form: FormData) -> Response:
    query = str(form.get("request", ""))
    if not csrf_valid(request, str(form.get("csrf_token", ""))):
        return message_page(request, "Form expired", "Please start signing in again.", 400)
    session = current_session(request)
    if session is None:
        return login_form(request, query)
    user_id, amr, authenticated_at = session

    provider = request.app.state.provider
    try:
        authorization = provider.parse_authorization_request(dict(parse_qsl(query)))
    except AuthorizationRequestError as exc:
        return authorization_error(request, exc)
    choices = store.tenant_choices(request.app.state.db.app, user_id)
    chosen = next((c for c in choices if str(c.tenant_id) == form.get("tenant_id")), None)
    if chosen is None:
        return tenant_picker(request, query, choices)
    return issue_code_redirect(request, authorization, chosen, user_id, amr, authenticated_at)


@router.post("/logout", response_class=HTMLResponse, dependencies=[require(PUBLIC)])
async def logout(request: Request) -> Response:
    return await run_in_threadpool(_logout, request, await request.form())


def _logout(request: Request, form: FormData) -> Response:
    if not csrf_valid(request, str(form.get("csrf_token", ""))):
        return message_page(request, "Form expired", "Reload the page and try again.", 400)
    engine = request.app.state.db.app
    raw = request.cookies.get(SESSION_COOKIE)
    session = current_session(request)
    if raw and session is not None:
        user_id = session[0]
        if form.get("everywhere"):
            sessions.sign_out_everywhere(engine, user_id)
        else:
            # Tokens that this sign-in issued stop at once; other devices stay signed in.
            sessions.revoke_browser_session(engine, user_id, store.token_hash(raw))
            store.end_browser_session(engine, raw)
    response = message_page(request, "Signed out", "You are signed out.", 200)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def issue_code_redirect(
    request: Request,
    authorization: AuthorizationRequest,
    choice: store.TenantChoice,
    user_id: uuid.UUID,
    amr: tuple[str, ...],
    authenticated_at: Any,
) -> Response:
    """Redirect to the client with a code, or first to the MFA step a privileged role needs."""
    detour = privileged_step(request, choice.roles, amr, authorization.query())
    if detour is not None:
        return detour
    tenant_id = choice.tenant_id
    location = request.app.state.provider.issue_code(
        authorization,
        user_id=user_id,
        tenant_id=tenant_id,
        amr=amr,
        authenticated_at=authenticated_at or now_utc(),
        browser_session=session_hash(request),
    )
    return RedirectResponse(location, status_code=303)


def session_hash(request: Request) -> bytes | None:
    raw = request.cookies.get(SESSION_COOKIE)
    return store.token_hash(raw) if raw else None


def authorization_error(request: Request, exc: AuthorizationRequestError) -> Response:
    if exc.redirect is None:
        return message_page(request, "Sign-in request rejected", exc.description, 400)
    return RedirectResponse(exc.redirect, status_code=303)


def privileged_step(
    request: Request, roles: tuple[str, ...], amr: tuple[str, ...], query: str
) -> Response | None:
    """Return where a privileged member without MFA must go first, or None to go on.

    Members holding a privileged role get no token until their sign-in used a second
    factor: enrolment if they have none, the code step if they have one.
    """
    state = request.app.state
    if not set(roles) & state.policy.privileged_roles or "mfa" in amr:
        return None
    session = current_session(request)
    raw = request.cookies.get(SESSION_COOKIE, "")
    if session is None or not raw:
        return login_form(request, query)
    if mfa.is_enrolled(state.db.app, session[0]):
        store.require_second_factor(state.db.app, raw)
        return RedirectResponse(f"/login/mfa?{query}", status_code=303)
    return RedirectResponse(f"/account/mfa?{query}", status_code=303)
