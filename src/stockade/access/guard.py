"""Route guards: each route declares the permission it needs, checked on every call."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from fastapi import Depends, Request
from sqlalchemy import Connection

from stockade.access.policy import AUTHENTICATED, PUBLIC, Policy
from stockade.db import Scope
from stockade.errors import Forbidden, Unauthorized


@dataclass(frozen=True)
class Principal:
    """The user, tenant and roles a request acts for, from a verified access token."""

    user_id: uuid.UUID
    tenant_id: uuid.UUID
    roles: tuple[str, ...]
    client_id: str
    amr: tuple[str, ...]
    token_id: str
    family_id: uuid.UUID | None = None
    issued_at: int = 0
    # RFC 7638 thumbprint of the DPoP key the token is bound to (its cnf.jkt), if any.
    dpop_jkt: str | None = None
    # Privileged roles named by a token whose sign-in lacked MFA: they grant nothing.
    withheld_roles: tuple[str, ...] = ()
    # Run in each of the request's transactions; raises when the token was revoked.
    check: Callable[[Connection], None] | None = field(default=None, compare=False, repr=False)

    @property
    def claimed_roles(self) -> tuple[str, ...]:
        """All roles the token names, before privileged ones without MFA are set aside."""
        return self.roles + self.withheld_roles

    def scope(self) -> Scope:
        return Scope(
            tenant_id=self.tenant_id, roles=self.roles, user_id=self.user_id, check=self.check
        )


class Authenticator(Protocol):
    async def authenticate(self, request: Request) -> Principal:
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
        principal: Principal = await state.authenticator.authenticate(request)
        structlog.contextvars.bind_contextvars(
            tenant_id=str(principal.tenant_id), user_id=str(principal.user_id)
        )
        principal = _without_unproven_roles(principal, state.policy)
        if self.permission == AUTHENTICATED:
            return principal
        decision = state.policy.decide(principal.roles, self.permission)
        if decision.allowed:
            return principal
        if state.policy.decide(principal.claimed_roles, self.permission).allowed:
            # RFC 9470 section 3: the client can fix this by signing in with MFA.
            raise Unauthorized(
                f"{self.permission} needs a sign-in with multi-factor authentication",
                error="insufficient_user_authentication",
                explain=True,
            )
        raise Forbidden(f"this token's roles do not grant {self.permission}")


def _without_unproven_roles(principal: Principal, policy: Policy) -> Principal:
    """Set aside privileged roles unless the sign-in used a second factor (amr "mfa")."""
    if "mfa" in principal.amr:
        return principal
    withheld = tuple(role for role in principal.roles if role in policy.privileged_roles)
    if not withheld:
        return principal
    kept = tuple(role for role in principal.roles if role not in withheld)
    return dataclasses.replace(principal, roles=kept, withheld_roles=withheld)


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
