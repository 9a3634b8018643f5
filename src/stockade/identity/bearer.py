"""Bearer token authentication for resource routes (RFC 6750)."""

from __future__ import annotations

import structlog
from fastapi import Request

from stockade.access.guard import Principal
from stockade.errors import Unauthorized
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
            return self.tokens.verify_access_token(token.strip())
        except InvalidToken as exc:
            log.info("access_token_rejected", reason=str(exc), path=request.url.path)
            raise Unauthorized("the access token is invalid or expired") from None
