"""Bearer token authentication for resource routes (RFC 6750)."""

from __future__ import annotations

import dataclasses
from functools import partial

import structlog
from fastapi import Request
from sqlalchemy import Connection

from stockade.access.guard import Principal
from stockade.errors import Unauthorized
from stockade.identity.sessions import assert_active
from stockade.identity.tokens import InvalidToken, TokenService

log = structlog.get_logger(__name__)


class BearerAuthenticator:
    def __init__(self, tokens: TokenService) -> None:
        self.tokens = tokens

    def authenticate(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            # RFC 6750 section 3.1: no error code when the request had no credentials.
            raise Unauthorized("an access token is required", error="")
        try:
            principal = self.tokens.verify_access_token(token.strip())
        except InvalidToken as exc:
            log.info("access_token_rejected", reason=str(exc), path=request.url.path)
            raise Unauthorized("the access token is invalid or expired") from None
        # The signature proves who; the check in each transaction proves "still".
        return dataclasses.replace(principal, check=partial(_check_active, principal))


def _check_active(principal: Principal, conn: Connection) -> None:
    assert_active(conn, principal)
