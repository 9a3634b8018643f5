"""Account pages: ``/account``, MFA enrolment at ``/account/mfa``, the ``/login/mfa`` step."""

from __future__ import annotations

import uuid

import segno
import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from stockade.access.guard import require
from stockade.access.policy import PUBLIC
from stockade.audit.trail import record_event
from stockade.db import Scope, scoped_transaction
from stockade.identity import mfa, store
from stockade.identity.passwords import PasswordRejected, check_new_password, hash_password
from stockade.identity.signin import (
    SESSION_COOKIE,
    csrf_valid,
    current_session,
    login_form,
    message_page,
    render_form,
)

log = structlog.get_logger(__name__)
router = APIRouter()
# Wrong codes allowed in one pending session before the password must be entered again,
# which the sign-in throttle then counts.
MAX_CODE_FAILURES = 5


def _next_url(query: str) -> str:
    return f"/oauth/authorize?{query}" if query else "/account"


def _user_email(request: Request, user_id: uuid.UUID) -> str:
    with scoped_transaction(request.app.state.db.app, Scope(user_id=user_id)) as conn:
        user = store.find_user(conn, user_id)
    return user.email if user else ""


@router.get("/account", response_class=HTMLResponse, dependencies=[require(PUBLIC)])
def account(request: Request) -> Response:
    session = current_session(request)
    if session is None:
        return RedirectResponse("/login", status_code=303)
    user_id, amr, _ = session
    return render_form(
        request,
        "account.html",
        email=_user_email(request, user_id),
        amr=amr,
        enrolled=mfa.is_enrolled(request.app.state.db.app, user_id),
    )


@router.get("/account/mfa", response_class=HTMLResponse, dependencies=[require(PUBLIC)])
def show_enrolment(request: Request) -> Response:
    return _enrolment_page(request, request.url.query)


def _enrolment_page(
    request: Request,
    query: str,
    error: str | None = None,
    status: int = 200,
    *,
    keep_secret: bool = False,
) -> Response:
    session = current_session(request)
    if session is None:
        return login_form(request, query)
    user_id = session[0]
    state = request.app.state
    try:
        kept = mfa.pending_secret(state.db.app, state.keystore, user_id) if keep_secret else None
        secret = kept or mfa.start_enrolment(state.db.app, state.keystore, user_id)
    except mfa.EnrolmentError as exc:
        return message_page(request, "Multi-factor sign-in", str(exc), 409)
    uri = mfa.provisioning_uri(secret, _user_email(request, user_id))
    return render_form(
        request,
        "mfa_enrol.html",
        status,
        qr_svg=segno.make(uri, error="m").svg_inline(scale=4),
        secret=secret,
        authorization_request=query,
        required=bool(query),
        error=error,
    )


@router.post("/account/mfa", response_class=HTMLResponse, dependencies=[require(PUBLIC)])
async def confirm_enrolment(request: Request) -> Response:
    return await run_in_threadpool(_confirm_enrolment, request, await request.form())


def _confirm_enrolment(request: Request, form: FormData) -> Response:
    query = str(form.get("request", ""))
    if not csrf_valid(request, str(form.get("csrf_token", ""))):
        return message_page(request, "Form expired", "Reload the page and try again.", 400)
    session = current_session(request)
    raw = request.cookies.get(SESSION_COOKIE, "")
    if session is None or not raw:
        return login_form(request, query)

    state = request.app.state
    codes = mfa.confirm_enrolment(
        state.db.app, state.keystore, session[0], str(form.get("otp", "")).strip()
    )
    if codes is None:
        error = "That code did not match. Check the phone's clock and try the next code."
        return _enrolment_page(request, query, error=error, status=400, keep_secret=True)
    # Confirming proved possession of the authenticator, so this session now has MFA.
    store.complete_second_factor(state.db.app, raw, mfa.MFA_AMR)
    log.info("mfa_enrolled", user_id=str(session[0]))
    return render_form(request, "mfa_codes.html", codes=codes, next_url=_next_url(query))


@router.get("/login/mfa", response_class=HTMLResponse, dependencies=[require(PUBLIC)])
def show_second_factor(request: Request) -> Response:
    query = request.url.query
    if _pending_user(request) is None:
        return login_form(request, query)
    return render_form(request, "mfa_verify.html", authorization_request=query)


@router.post("/login/mfa", response_class=HTMLResponse, dependencies=[require(PUBLIC)])
async def submit_second_factor(request: Request) -> Response:
    return await run_in_threadpool(_submit_second_factor, request, await request.form())


def _submit_second_factor(request: Request, form: FormData) -> Response:
    query = str(form.get("request", ""))
    if not csrf_valid(request, str(form.get("csrf_token", ""))):
        return message_page(request, "Form expired", "Please sign in again.", 400)
    user_id = _pending_user(request)
    raw = request.cookies.get(SESSION_COOKIE, "")
    if user_id is None or not raw:
        return login_form(request, query)

    state = request.app.state
    if mfa.verify_second_factor(state.db.app, state.keystore, user_id, str(form.get("otp", ""))):
        store.complete_second_factor(state.db.app, raw, mfa.MFA_AMR)
        state.throttle.clear_account(_user_email(request, user_id))
        log.info("mfa_passed", user_id=str(user_id))
        return RedirectResponse(_next_url(query), status_code=303)

    log.info("mfa_failed", user_id=str(user_id))
    _audit_code_failure(request, user_id)
    if not store.count_second_factor_failure(state.db.app, raw, MAX_CODE_FAILURES):
        return login_form(request, query, error="Too many wrong codes; sign in again.", status=401)
    return render_form(
        request,
        "mfa_verify.html",
        401,
        authorization_request=query,
        error="That code is not valid or was already used.",
    )


def _audit_code_failure(request: Request, user_id: uuid.UUID) -> None:
    """Record a wrong second-factor code in the trail of each tenant the user belongs to."""
    engine = request.app.state.db.app
    for choice in store.tenant_choices(engine, user_id):
        with scoped_transaction(engine, Scope(tenant_id=choice.tenant_id, user_id=user_id)) as conn:
            record_event(
                conn,
                tenant_id=choice.tenant_id,
                action="signin:mfa-failed",
                actor_user_id=user_id,
                subject=str(user_id),
            )


def _pending_user(request: Request) -> uuid.UUID | None:
    raw = request.cookies.get(SESSION_COOKIE)
    if not raw:
        return None
    session = store.browser_session(request.app.state.db.app, raw, pending=True)
    return session[0] if session else None


def _invitation(request: Request, token: str) -> tuple[uuid.UUID, uuid.UUID, str, str] | None:
    """Find a live invitation: its tenant, user, the user's e-mail and the tenant name."""
    tenant_id = store.tenant_of_token(token)
    if tenant_id is None:
        return None
    with scoped_transaction(request.app.state.db.app, Scope(tenant_id=tenant_id)) as conn:
        row = conn.execute(
            text(
                "select i.user_id, t.name from invitations i join tenants t on t.id = i.tenant_id"
                " where i.token_hash = :hash and i.accepted_at is null and i.expires_at > now()"
            ),
            {"hash": store.token_hash(token)},
        ).first()
    if row is None:
        return None
    return tenant_id, row[0], _user_email(request, row[0]), row[1]


@router.get("/invitation", response_class=HTMLResponse, dependencies=[require(PUBLIC)])
def show_invitation(request: Request, token: str = "") -> Response:
    found = _invitation(request, token)
    if found is None:
        return message_page(request, "Invitation", "This invitation is invalid or expired.", 404)
    return render_form(
        request, "invitation.html", token=token, email=found[2], tenant_name=found[3]
    )


@router.post("/invitation", response_class=HTMLResponse, dependencies=[require(PUBLIC)])
async def accept_invitation(request: Request) -> Response:
    return await run_in_threadpool(_accept_invitation, request, await request.form())


def _accept_invitation(request: Request, form: FormData) -> Response:
    token = str(form.get("token", ""))
    if not csrf_valid(request, str(form.get("csrf_token", ""))):
        return message_page(request, "Form expired", "Reload the invitation link.", 400)
    found = _invitation(request, token)
    if found is None:
        return message_page(request, "Invitation", "This invitation is invalid or expired.", 404)
    tenant_id, user_id, email, tenant_name = found
    password = str(form.get("password", ""))
    try:
        check_new_password(password, email=email, previous_hashes=[])
    except PasswordRejected as exc:
        return render_form(
            request,
            "invitation.html",
            400,
            token=token,
            email=email,
            tenant_name=tenant_name,
            error=str(exc),
        )
    scope = Scope(tenant_id=tenant_id, user_id=user_id)
    with scoped_transaction(request.app.state.db.app, scope) as conn:
        accepted = conn.execute(
            text(
                "update invitations set accepted_at = now() where token_hash = :hash"
                " and accepted_at is null returning 1"
            ),
            {"hash": store.token_hash(token)},
        ).first()
        if accepted is not None:
            conn.execute(
                text(
                    "update users set password_hash = :hash, password_changed_at = now()"
                    " where id = :user"
                ),
                {"hash": hash_password(password), "user": user_id},
            )
    if accepted is None:
        return message_page(request, "Invitation", "This invitation was used already.", 409)
    log.info("invitation_accepted", user_id=str(user_id), tenant_id=str(tenant_id))
    return message_page(request, "Welcome", "Your password is set. You can sign in now.", 200)
