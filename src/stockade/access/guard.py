"""Route guards: each route declares the permission it needs, checked on every call."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from fastapi import Depends, Request

from stockade.access.policy import AUTHENTICATED, PUBLIC
from stockade.db import Scope
from stockade.errors import Forbidden


@dataclass(frozen=True)
class Principal:
    """The user, tenant and roles a request acts for, from a verified access token."""

    user_id: uuid.UUID
    tenant_id: uuid.UUID
    roles: tuple[str, ...]
    client_id: str
    amr: tuple[str, ...]
    token_id: str

    def scope(self) -> Scope:
        return Scope(tenant_id=self.tenant_id, roles=self.roles, user_id=self.user_id)


class Authenticator(Protocol):
    def authenticate(self, request: Request) -> Principal:
        """Return the request's principal or raise ``Unauthorized``."""
        ...


class Permit:
    """A FastAPI dependency that carries the permission its route declares."""

    def __init__(self, permission: str) -> None:
        self.permission = permission

    def __repr__(self) -> str:
        return f"Permit({self.permission!r})"

    async def __call__(self, request: Request) -> Principal | None:
        if self.permission == PUBLIC:
            return None
        state = request.app.state
        principal: Principal = state.authenticator.authenticate(request)
        structlog.contextvars.bind_contextvars(
            tenant_id=str(principal.tenant_id), user_id=str(principal.user_id)
        )
        if self.permission == AUTHENTICATED:
            return principal
        decision = state.policy.decide(principal.roles, self.permission)
        if not decision.allowed:
            raise Forbidden(f"this token's roles do not grant {self.permission}")
        return principal


def require(permission: str) -> Any:
    """Declare that a route needs ``permission`` (or ``PUBLIC`` / ``AUTHENTICATED``)."""
    return Depends(Permit(permission))


def declared_permissions(route: Any) -> list[str]:
    """List the permissions a route declares, looking through its dependency tree."""
    found: list[str] = []
    pending = [getattr(route, "dependant", None)]
    while pending:
        dependant = pending.pop()
        if dependant is None:
            continue
        if isinstance(dependant.call, Permit):
            found.append(dependant.call.permission)
        pending.extend(dependant.dependencies)
    return found
