"""A local key store: an AES-256-GCM encrypted keyring under the data folder.

Layout of ``<data>/keys`` (folder mode 0700, files 0600):

- ``master.key``: 32 random bytes that encrypt the keyring.
- ``keyring.bin``: a 12-byte nonce followed by the AES-GCM ciphertext of a JSON document.

NOTE: the master key sits beside the keyring, so this backend protects against a copy of
the keyring or a backup that lacks ``master.key``, not against a reader of the whole
folder. Production deployments use Vault transit or a cloud KMS, which keep the key
encryption key outside the machine.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc.jwk import RSAKey

from stockade.keys.store import Secret, SigningKey, WrappedKey

_AAD = b"stockade-keyring-v1"
_RSA_BITS = 2048
# How long a process trusts its cached copy before it looks for another process's change.
_RELOAD_SECONDS = 2.0


class KeyStoreError(RuntimeError):
    """The keyring is unreadable, tampered with or has unsafe permissions."""


class LocalKeyStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._master_path = folder / "master.key"
        self._keyring_path = folder / "keyring.bin"
        self._lock_path = folder / ".lock"
        self._cache: dict[str, Any] | None = None
        self._cache_stamp: tuple[float, float] = (0.0, 0.0)
        self._generation = 0
        self._parsed: tuple[int, list[SigningKey]] = (-1, [])
        self._prepare_folder()

    def __repr__(self) -> str:
        return f"LocalKeyStore({str(self.folder)!r})"

    # Signing keys

    def current_signing_key(self) -> SigningKey:
        keys = self.signing_keys()
        if keys and keys[0].retired_at is None:
            return keys[0]
        return self.rotate_signing_key()

    def signing_keys(self) -> list[SigningKey]:
        document = self._read()
        # Parsing an RSA key costs milliseconds, so parse once per keyring version.
        if self._parsed[0] != self._generation:
            parsed = [_signing_key_from(entry) for entry in document["signing_keys"]]
            self._parsed = (self._generation, parsed)
        return list(self._parsed[1])

    def rotate_signing_key(self) -> SigningKey:
        with self._locked() as document:
            now = _now()
            for entry in document["signing_keys"]:
                entry["retired_at"] = entry["retired_at"] or now.isoformat()
            key = RSAKey.generate_key(_RSA_BITS, private=True)
            entry = {
                "kid": secrets.token_urlsafe(12),
                "private_pem": key.as_pem(private=True).decode(),
                "created_at": now.isoformat(),
                "retired_at": None,
            }
            # Keep the new key and two predecessors: enough to verify every token issued
            # within the longest allowed access token lifetime after two rotations.
            document["signing_keys"] = [entry, *document["signing_keys"]][:3]
        return _signing_key_from(entry)

    # Named secrets

    def get_secret(self, name: str) -> Secret | None:
        versions = self._read()["secrets"].get(name)
        if not versions:
            return None
        return Secret(versions[0]["value"])

    def set_secret(self, name: str, value: Secret, *, overlap: timedelta = timedelta(0)) -> None:
        """Store a new version of ``name``; older versions stay active for ``overlap``."""
        if overlap < timedelta(0):
            raise ValueError("a rotation overlap cannot be negative")
        with self._locked() as document:
            versions = document["secrets"].setdefault(name, [])
            versions.insert(
                0,
                {
                    "value": value.reveal(),
                    "created_at": _now().isoformat(),
                    "overlap_seconds": int(overlap.total_seconds()),
                },
            )
            # The current version and two predecessors, as for signing keys.
            del versions[3:]

    def active_secrets(self, name: str, *, now: datetime | None = None) -> list[Secret]:
        """Return the versions of ``name`` that verify now, the newest first.

        The newest version is always active. An older version stays active until the
        earliest moment at which a newer version's overlap ends, so a rotation with no
        overlap retires every earlier version at once.
        """
        versions = self._read()["secrets"].get(name) or []
        moment = now or _now()
        active: list[Secret] = []
        retires_at: datetime | None = None
        for entry in versions:
            if retires_at is not None and moment >= retires_at:
                break
            active.append(Secret(entry["value"]))
            overlap = timedelta(seconds=entry.get("overlap_seconds", 0))
            ends = datetime.fromisoformat(entry["created_at"]) + overlap
            retires_at = ends if retires_at is None else min(retires_at, ends)
        return active

    def get_or_create_secret(self, name: str, nbytes: int = 32) -> Secret:
        existing = self.get_secret(name)
        if existing is not None:
            return existing
        with self._locked() as document:
            versions = document["secrets"].setdefault(name, [])
            if not versions:
                value = secrets.token_urlsafe(nbytes)
                versions.append({"value": value, "created_at": _now().isoformat()})
            return Secret(versions[0]["value"])

    # Wrapping keys: the key encryption keys of envelope encryption

    def wrap(self, data_key: bytes, context: bytes) -> WrappedKey:
        """Encrypt ``data_key`` under the current wrapping key, bound to ``context``."""
        entry = self._current_wrapping_entry()
        nonce = secrets.token_bytes(12)
        sealed = AESGCM(base64.b64decode(entry["key"])).encrypt(nonce, data_key, context)
        return WrappedKey(key_id=entry["id"], blob=nonce + sealed)

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        """Decrypt a data key wrapped by ``wrap`` with the same ``context``."""
        entries = self._read().get("wrapping_keys", [])
        entry = next((item for item in entries if item["id"] == wrapped.key_id), None)
        if entry is None:
            raise KeyStoreError(f"wrapping key {wrapped.key_id!r} is not in the keyring")
        try:
            return AESGCM(base64.b64decode(entry["key"])).decrypt(
                wrapped.blob[:12], wrapped.blob[12:], context
            )
        except InvalidTag:
            raise KeyStoreError(
                f"a data key wrapped by {wrapped.key_id!r} does not decrypt in this context"
            ) from None

    def wrapping_key_ids(self) -> list[str]:
        """Return the ids of the wrapping keys kept, the current one first."""
        return [entry["id"] for entry in self._read().get("wrapping_keys", [])]

    def current_wrapping_key_id(self) -> str:
        return str(self._current_wrapping_entry()["id"])

    def rotate_wrapping_key(self) -> str:
        """Make a new current wrapping key; earlier ones stay to unwrap until re-wrapped."""
        with self._locked() as document:
            entry = _new_wrapping_entry()
            document.setdefault("wrapping_keys", []).insert(0, entry)
        return str(entry["id"])

    def retire_wrapping_keys(self, keep: set[str]) -> int:
        """Delete every wrapping key but the current one and those in ``keep``."""
        with self._locked() as document:
            entries = document.get("wrapping_keys", [])
            kept = [
                entry for index, entry in enumerate(entries) if index == 0 or entry["id"] in keep
            ]
            document["wrapping_keys"] = kept
        return len(entries) - len(kept)

    def _current_wrapping_entry(self) -> dict[str, Any]:
        entries = self._read().get("wrapping_keys")
        if entries:
            return dict(entries[0])
        with self._locked() as document:
            entries = document.setdefault("wrapping_keys", [])
            if not entries:
                entries.append(_new_wrapping_entry())
            return dict(entries[0])

    # Storage

    def _prepare_folder(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.folder, 0o700)
        with self._file_lock():
            if not self._master_path.exists():
                _write_private(self._master_path, secrets.token_bytes(32), exclusive=True)
        mode = self._master_path.stat().st_mode & 0o777
        if mode & 0o077:
            raise KeyStoreError(
                f"{self._master_path} has mode {mode:o}; run 'chmod 600' on it before starting"
            )

    def _read(self) -> dict[str, Any]:
        stamp = self._stamp()
        if self._cache is not None and stamp == self._cache_stamp:
            return self._cache
        with self._file_lock():
            document = self._decrypt()
        if document != self._cache:
            self._generation += 1
        self._cache = document
        self._cache_stamp = self._stamp()
        return document

    def _stamp(self) -> tuple[float, float]:
        # The modification time detects another process's write; the coarse clock
        # re-checks now and then in case two writes land within one mtime tick.
        try:
            mtime = self._keyring_path.stat().st_mtime_ns / 1e9
        except FileNotFoundError:
            mtime = 0.0
        return (mtime, time.monotonic() // _RELOAD_SECONDS)

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        with open(self._lock_path, "a+b") as handle:
            os.chmod(self._lock_path, 0o600)
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Read, let the caller change, then write the keyring under an exclusive lock."""
        with self._file_lock():
            document = self._decrypt()
            yield document
            self._encrypt(document)
        self._cache = None

    def _decrypt(self) -> dict[str, Any]:
        if not self._keyring_path.exists():
            return {"version": 1, "signing_keys": [], "secrets": {}}
        blob = self._keyring_path.read_bytes()
        try:
            plaintext = AESGCM(self._master_path.read_bytes()).decrypt(blob[:12], blob[12:], _AAD)
        except Exception as exc:
            raise KeyStoreError(
                f"{self._keyring_path} does not decrypt with {self._master_path}: "
                "the keyring or its master key was changed or replaced"
            ) from exc
        document: dict[str, Any] = json.loads(plaintext)
        return document

    def _encrypt(self, document: dict[str, Any]) -> None:
        nonce = secrets.token_bytes(12)
        ciphertext = AESGCM(self._master_path.read_bytes()).encrypt(
            nonce, json.dumps(document).encode(), _AAD
        )
        temporary = self._keyring_path.with_suffix(".tmp")
        _write_private(temporary, nonce + ciphertext, exclusive=False)
        os.replace(temporary, self._keyring_path)


def _write_private(path: Path, data: bytes, *, exclusive: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    descriptor = os.open(path, flags, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def _new_wrapping_entry() -> dict[str, Any]:
    return {
        "id": "wk-" + secrets.token_urlsafe(9),
        "key": base64.b64encode(secrets.token_bytes(32)).decode(),
        "created_at": _now().isoformat(),
    }


def _signing_key_from(entry: dict[str, Any]) -> SigningKey:
    retired = entry.get("retired_at")
    return SigningKey(
        kid=entry["kid"],
        key=RSAKey.import_key(entry["private_pem"]),
        created_at=datetime.fromisoformat(entry["created_at"]),
        retired_at=datetime.fromisoformat(retired) if retired else None,
    )


def _now() -> datetime:
    return datetime.now(UTC)
