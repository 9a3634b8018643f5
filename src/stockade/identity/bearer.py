"""Access token authentication for resource routes: Bearer (RFC 6750) and DPoP (RFC 9449).

An unbound token comes as ``Authorization: Bearer <token>`` and costs a signature check
on the event loop. A DPoP-bound token (one with ``cnf.jkt``) must come as
``Authorization: DPoP <token>`` with a ``DPoP`` proof header. The proof is verified, and
its ``jti`` recorded, in the thread pool, since recording it is a database write.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import structlog
from fastapi import Request
from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool

from stockade.access.guard import Principal
from stockade.errors import Unauthorized
from stockade.identity import dpop
from stockade.identity.sessions import assert_active
from stockade.identity.tokens import InvalidToken, TokenService

log = structlog.get_logger(__name__)


class BearerAuthenticator:
    def __init__(self, tokens: TokenService, proofs: dpop.ProofVerifier) -> None:
        self.tokens = tokens
        self.proofs = proofs

    async def authenticate(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "dpop" and token.strip():
            return await self._authenticate_dpop(request, token.strip())
        if scheme.lower() != "bearer" or not token.strip():
            # RFC 6750 section 3.1: no error code when the request had no credentials.
            raise Unauthorized("an access token is required", error="")
        try:
            principal = self.tokens.verify_access_token(token.strip())
        except InvalidToken as exc:
            log.info("access_token_rejected", reason=str(exc), path=request.url.path)
            raise Unauthorized("the access token is invalid or expired") from None
        if principal.dpop_jkt is not None:
            # RFC 9449 section 7.2: a bound token sent as a Bearer token is rejected, because
            # otherwise a thief who copied it would need no key.
            log.info("access_token_rejected", reason="DPoP-bound token sent as Bearer")
            raise dpop.unauthorized(
                "this access token is DPoP-bound: send it with the DPoP scheme and a proof",
                "invalid_token",
            )
        return _checked_on_use(principal)

    async def _authenticate_dpop(self, request: Request, token: str) -> Principal:
        try:
            principal = self.tokens.verify_access_token(token)
        except InvalidToken as exc:
            log.info("access_token_rejected", reason=str(exc), path=request.url.path)
            raise dpop.unauthorized(
                "the access token is invalid or expired", "invalid_token"
            ) from None
        if principal.dpop_jkt is None:
            log.info("access_token_rejected", reason="unbound token sent with the DPoP scheme")
            raise dpop.unauthorized("this access token is not DPoP-bound", "invalid_token")
        try:
            proof = dpop.single_proof(request.headers.getlist("dpop"))
            if proof is None:
                raise dpop.InvalidProof("no DPoP header")
            await run_in_threadpool(
                self.proofs.verify,
                proof,
                method=request.method,
                path=_request_path(request),
                access_token=token,
                bound_to=principal.dpop_jkt,
            )
        except dpop.InvalidProof as exc:
            log.info("dpop_proof_rejected", reason=str(exc), path=request.url.path)
            raise dpop.unauthorized(
                "the DPoP proof is missing or invalid", "invalid_dpop_proof"
            ) from None
        return _checked_on_use(principal)


def _request_path(request: Request) -> str:
    """Return the request's path as sent, percent escapes included, without the query."""
    raw_path = request.scope.get("raw_path")
    if isinstance(raw_path, bytes):
        return raw_path.decode("latin-1")
    return request.url.path


def _checked_on_use(principal: Principal) -> Principal:
    # The signature proves who; the check in each transaction proves "still".
    return dataclasses.replace(principal, check=partial(_check_active, principal))


def _check_active(principal: Principal, conn: Connection) -> None:
    assert_active(conn, principal)
