"""The OpenID Connect endpoints: discovery, authorize, token, JWKS, userinfo, revoke."""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import unquote_plus

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from stockade.access.guard import Principal, require
from stockade.access.policy import AUTHENTICATED, PUBLIC
from stockade.db import scoped_transaction
from stockade.errors import NotFound, OAuthError
from stockade.identity import dpop, store
from stockade.identity.provider import SUPPORTED_SCOPES, AuthorizationRequestError, Provider
from stockade.identity.signin import (
    authorization_error,
    current_session,
    issue_code_redirect,
    login_form,
    tenant_picker,
)

router = APIRouter()
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# Form bodies at the token endpoint are a few hundred bytes; refuse anything far larger.
_MAX_FORM_BYTES = 16 * 1024


@router.get("/.well-known/openid-configuration", dependencies=[require(PUBLIC)])
def discovery(request: Request) -> dict[str, Any]:
    issuer = request.app.state.settings.issuer
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/oauth/authorize",
        "token_endpoint": f"{issuer}/oauth/token",
        "jwks_uri": f"{issuer}/oauth/jwks",
        "userinfo_endpoint": f"{issuer}/oauth/userinfo",
        "revocation_endpoint": f"{issuer}/oauth/revoke",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "none",
        ],
        "revocation_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "none",
        ],
        "code_challenge_methods_supported": ["S256"],
        "dpop_signing_alg_values_supported": list(dpop.ALGORITHMS),
        "scopes_supported": sorted(SUPPORTED_SCOPES),
        "claims_supported": [
            "sub",
            "iss",
            "aud",
            "exp",
            "iat",
            "auth_time",
            "nonce",
            "amr",
            "email",
            "tenant_id",
        ],
        "authorization_response_iss_parameter_supported": True,
    }


@router.get("/oauth/authorize", dependencies=[require(PUBLIC)])
def authorize(request: Request) -> Response:
    provider = request.app.state.provider
    try:
        authorization = provider.parse_authorization_request(dict(request.query_params))
    except AuthorizationRequestError as exc:
        return authorization_error(request, exc)

    query = authorization.query()
    session = None if authorization.prompt == "login" else current_session(request)
    if session is None:
        if authorization.prompt == "none":
            return authorization_error(
                request,
                _redirect_error(
                    provider, authorization, "login_required", "the user is not signed in"
                ),
            )
        return login_form(request, query)

    user_id, amr, authenticated_at = session
    choices = store.tenant_choices(request.app.state.db.app, user_id)
    if not choices:
        return authorization_error(
            request,
            _redirect_error(
                provider, authorization, "access_denied", "the account belongs to no tenant"
            ),
        )
    if len(choices) > 1 or authorization.prompt == "select_account":
        return tenant_picker(request, query, choices)
    return issue_code_redirect(request, authorization, choices[0], user_id, amr, authenticated_at)


def _redirect_error(
    provider: Any, authorization: Any, error: str, description: str
) -> AuthorizationRequestError:
    location = provider.client_redirect(
        authorization.redirect_uri,
        error=error,
        error_description=description,
        state=authorization.state,
    )
    return AuthorizationRequestError(error, description, location)


@router.post("/oauth/token", dependencies=[require(PUBLIC)])
async def token(request: Request) -> JSONResponse:
    form = await _oauth_form(request)
    basic = _basic_credentials(request)
    try:
        proof = dpop.single_proof(request.headers.getlist("dpop"))
    except dpop.InvalidProof:
        raise OAuthError("invalid_dpop_proof", "send at most one DPoP header") from None
    # The provider blocks on the database, so it runs in the thread pool. On the event loop
    # it would stall every other request, and concurrent token requests would never overlap.
    body = await run_in_threadpool(_grant_tokens, request.app.state.provider, form, basic, proof)
    return JSONResponse(body, headers=_NO_STORE)


def _grant_tokens(
    provider: Provider, form: dict[str, str], basic: tuple[str, str] | None, proof: str | None
) -> dict[str, Any]:
    client = provider.authenticate_client(form, basic)
    grant_type = form.get("grant_type")
    if not grant_type:
        raise OAuthError("invalid_request", "the grant_type parameter is required")
    if grant_type == "authorization_code":
        return provider.exchange_code(form, client, provider.verify_dpop(proof))
    if grant_type == "refresh_token":
        return provider.refresh(form, client, provider.verify_dpop(proof))
    raise OAuthError(
        "unsupported_grant_type", "grant_type must be authorization_code or refresh_token"
    )


@router.post("/oauth/revoke", dependencies=[require(PUBLIC)])
async def revoke(request: Request) -> Response:
    form = await _oauth_form(request)
    basic = _basic_credentials(request)
    await run_in_threadpool(_revoke_token, request.app.state.provider, form, basic)
    return Response(status_code=200, headers=_NO_STORE)


def _revoke_token(provider: Provider, form: dict[str, str], basic: tuple[str, str] | None) -> None:
    client = provider.authenticate_client(form, basic)
    if not form.get("token"):
        raise OAuthError("invalid_request", "the token parameter is required")
    provider.revoke(form["token"], client)


@router.get("/oauth/jwks", dependencies=[require(PUBLIC)])
def jwks(request: Request) -> JSONResponse:
    return JSONResponse(
        request.app.state.tokens.jwks(), headers={"Cache-Control": "public, max-age=300"}
    )


@router.post("/oauth/userinfo", operation_id="userinfo_post")
@router.get("/oauth/userinfo", operation_id="userinfo_get")
def userinfo(request: Request, principal: Principal = require(AUTHENTICATED)) -> dict[str, Any]:
    with scoped_transaction(request.app.state.db.app, principal.scope()) as conn:
        user = store.find_user(conn, principal.user_id)
    if user is None:
        raise NotFound("the user of this token no longer exists")
    return {
        "sub": str(user.id),
        "email": user.email,
        "tenant_id": str(principal.tenant_id),
        "roles": list(principal.roles),
    }


async def _oauth_form(request: Request) -> dict[str, str]:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("application/x-www-form-urlencoded"):
        raise OAuthError("invalid_request", "send parameters as application/x-www-form-urlencoded")
    if int(request.headers.get("content-length") or 0) > _MAX_FORM_BYTES:
        raise OAuthError("invalid_request", "the request body is too large")
    form = await request.form()
    values: dict[str, str] = {}
    for key, value in form.multi_items():
        # RFC 6749 section 3.2: parameters must not repeat.
        if key in values:
            raise OAuthError("invalid_request", f"parameter {key} is repeated")
        values[key] = str(value)
    return values


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise OAuthError("invalid_client", "malformed Basic credentials", status=401) from None
    client_id, separator, secret = decoded.partition(":")
    if not separator:
        raise OAuthError("invalid_client", "malformed Basic credentials", status=401)
    # RFC 6749 section 2.3.1: both parts are form-urlencoded before Basic encoding.
    return unquote_plus(client_id), unquote_plus(secret)
