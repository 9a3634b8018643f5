"""The key store interface and the value types it hands out."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from joserfc.jwk import RSAKey

SIGNING_ALGORITHM = "RS256"


class Secret:
    """A secret value whose ``repr`` and ``str`` never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def matches(self, candidate: str) -> bool:
        """Compare in constant time so timing does not leak a prefix."""
        return hmac.compare_digest(self._value.encode(), candidate.encode())

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and self.matches(other._value)

    def __hash__(self) -> int:
        return hash(Secret)


@dataclass(frozen=True)
class SigningKey:
    """An asymmetric token-signing key; ``retired_at`` set means verify-only."""

    kid: str
    key: RSAKey
    created_at: datetime
    retired_at: datetime | None = None

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r}, retired={self.retired_at is not None})"

    def public_jwk(self) -> dict[str, object]:
        jwk: dict[str, object] = dict(self.key.as_dict(private=False))
        jwk.update({"kid": self.kid, "use": "sig", "alg": SIGNING_ALGORITHM})
        return jwk


@dataclass(frozen=True)
class WrappedKey:
    """A data key encrypted under the key store's wrapping key ``key_id``."""

    key_id: str
    blob: bytes

    def __repr__(self) -> str:
        return f"WrappedKey(key_id={self.key_id!r})"


class KeyStore(Protocol):
    """The interface that every key store backend implements."""

    def current_signing_key(self) -> SigningKey:
        """Return the key new tokens are signed with, creating one on first use."""
        ...

    def signing_keys(self) -> list[SigningKey]:
        """Return every key whose signatures still verify, the current one first."""
        ...

    def rotate_signing_key(self) -> SigningKey:
        """Create a new current key and keep the previous one for verification."""
        ...

    def get_secret(self, name: str) -> Secret | None: ...

    def wrap(self, data_key: bytes, context: bytes) -> WrappedKey:
        """Encrypt a data key under the current wrapping key, bound to ``context``."""
        ...

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        """Decrypt a wrapped data key; the same ``context`` must be given."""
        ...

    def current_wrapping_key_id(self) -> str: ...

    def set_secret(self, name: str, value: Secret, *, overlap: timedelta = ...) -> None:
        """Store a new version of ``name``; older versions stay active for ``overlap``."""
        ...

    def active_secrets(self, name: str, *, now: datetime | None = None) -> list[Secret]:
        """Return the versions of ``name`` that verify now, the newest first."""
        ...

    def get_or_create_secret(self, name: str, nbytes: int = 32) -> Secret: ...
