"""The policy file and the decision function.

A decision starts as denied. It is allowed only when the permission is known and one of
the principal's roles grants it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from sqlalchemy import Engine, text

# Route declarations that are not permissions: no token at all, or any valid token.
PUBLIC = "public"
AUTHENTICATED = "authenticated"


class PolicyError(ValueError):
    """The policy file is malformed; start-up stops."""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


@dataclass(frozen=True)
class Policy:
    permissions: frozenset[str]
    roles: dict[str, frozenset[str]]
    privileged_roles: frozenset[str]

    def decide(self, roles: tuple[str, ...] | list[str], permission: str) -> Decision:
        decision = Decision(False, f"no role grants {permission}")
        if permission not in self.permissions:
            return Decision(False, f"unknown permission {permission}")
        for role in roles:
            if permission in self.roles.get(role, frozenset()):
                decision = Decision(True, f"granted by role {role}")
                break
        return decision

    def check_role(self, role: str) -> None:
        if role not in self.roles:
            known = ", ".join(sorted(self.roles))
            raise PolicyError(f"unknown role {role!r}; roles are: {known}")


def load_policy(path: Path | None = None) -> Policy:
    """Read and validate the policy file: the packaged one unless ``path`` is given."""
    document, source = read_policy_document(path)
    return _validate(document, source)


def read_policy_document(path: Path | None = None) -> tuple[dict[str, object], str]:
    """Parse the policy file as TOML and return it with a name for error messages.

    Other packages read their own sections (billing reads ``[plans]``) through this.
    """
    if path is None:
        raw = resources.files("stockade").joinpath("policy.toml").read_text()
        source = "the packaged policy.toml"
    else:
        try:
            raw = path.read_text()
        except OSError as exc:
            raise PolicyError(f"cannot read policy file {path}: {exc.strerror}") from exc
        source = str(path)
    try:
        document = tomllib.loads(raw)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source} is not valid TOML: {exc}") from exc
    return document, source


def _validate(document: dict[str, object], source: str) -> Policy:
    permissions = document.get("permissions")
    roles = document.get("roles")
    privileged = document.get("privileged_roles", [])
    if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
        raise PolicyError(f"{source}: 'permissions' must be a list of strings")
    if not isinstance(roles, dict) or not roles:
        raise PolicyError(f"{source}: '[roles]' must map each role to a list of permissions")
    known = frozenset(permissions)
    for permission in known:
        if ":" not in permission:
            raise PolicyError(f"{source}: permission {permission!r} is not 'resource:action'")

    table: dict[str, frozenset[str]] = {}
    for role, granted in roles.items():
        if not isinstance(granted, list):
            raise PolicyError(f"{source}: role {role!r} must list its permissions")
        unknown = set(granted) - known
        if unknown:
            raise PolicyError(f"{source}: role {role!r} grants unknown {sorted(unknown)}")
        table[role] = frozenset(granted)

    if not isinstance(privileged, list) or set(privileged) - set(table):
        raise PolicyError(f"{source}: 'privileged_roles' must name roles of [roles]")
    return Policy(known, table, frozenset(privileged))


def publish_policy(owner: Engine, policy: Policy) -> None:
    """Copy the role table into the database, where RLS policies consult it."""
    rows = [
        {"role": role, "permission": permission}
        for role, granted in policy.roles.items()
        for permission in sorted(granted)
    ]
    with owner.begin() as connection:
        connection.execute(text("lock table role_permissions in exclusive mode"))
        connection.execute(text("delete from role_permissions"))
        connection.execute(
            text("insert into role_permissions (role, permission) values (:role, :permission)"),
            rows,
        )
