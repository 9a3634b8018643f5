"""Envelope encryption: one data key per tenant, wrapped by the key store.

A tenant's data key (AES-256) is made on first use and stored in ``tenant_data_keys``
wrapped by the key store's current wrapping key, with the tenant id as associated data.
Rows are sealed with AES-256-GCM under the data key. The associated data names the
tenant, the table, the column and the row, so a ciphertext copied to another row or
another tenant does not open. Rotating the wrapping key re-wraps the data keys and
leaves the sealed rows as they are.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import uuid
from dataclasses import dataclass, field

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, Engine, text

from stockade.keys.local import KeyStoreError
from stockade.keys.store import KeyStore, WrappedKey

log = structlog.get_logger(__name__)

DATA_KEY_VERSION = 1
_NONCE_BYTES = 12
_SEAL_PREFIX = b"stockade-seal-v1"
_WRAP_PREFIX = b"stockade-data-key-v1"


# A row's identity in associated data: its uuid, or the bytes of another unique key.
RowId = uuid.UUID | bytes


class SealError(ValueError):
    """A sealed value did not open: wrong tenant, row or column, or it was altered."""


@dataclass(frozen=True)
class DataKey:
    """A tenant's unwrapped data key. It never leaves the process."""

    tenant_id: uuid.UUID
    version: int
    _key: bytes = field(repr=False)

    def seal(self, plaintext: bytes, *, table: str, column: str, row_id: RowId) -> bytes:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        aad = self._associated(table, column, row_id)
        return nonce + AESGCM(self._key).encrypt(nonce, plaintext, aad)

    def open(self, sealed: bytes, *, table: str, column: str, row_id: RowId) -> bytes:
        aad = self._associated(table, column, row_id)
        try:
            return AESGCM(self._key).decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], aad)
        except InvalidTag:
            raise SealError(
                f"a sealed {table}.{column} value does not open for this tenant and row"
            ) from None

    def derive(self, purpose: str) -> bytes:
        """Derive a subkey for one purpose (such as keyed search hashes), fixed for this key."""
        return hmac.new(
            self._key, b"stockade-derive-v1|" + purpose.encode(), hashlib.sha256
        ).digest()

    def _associated(self, table: str, column: str, row_id: RowId) -> bytes:
        row = row_id.bytes if isinstance(row_id, uuid.UUID) else row_id
        return b"|".join((_SEAL_PREFIX, self.tenant_id.bytes, table.encode(), column.encode(), row))


class DataKeys:
    """Find, make and cache tenants' data keys.

    The cache keeps unwrapped keys for the life of the process, so a sealed read costs
    one AES-GCM operation and no key store call.
    """

    def __init__(self, keystore: KeyStore) -> None:
        self.keystore = keystore
        self._cache: dict[tuple[uuid.UUID, int], DataKey] = {}
        self._lock = threading.Lock()

    def current(self, conn: Connection, tenant_id: uuid.UUID) -> DataKey:
        """Return the tenant's data key for new writes, making it on first use.

        ``conn`` is a transaction scoped to ``tenant_id``.
        """
        cached = self._cache.get((tenant_id, DATA_KEY_VERSION))
        if cached is not None:
            return cached
        self._insert_if_missing(conn, tenant_id)
        return self.version(conn, tenant_id, DATA_KEY_VERSION)

    def version(self, conn: Connection, tenant_id: uuid.UUID, version: int) -> DataKey:
        """Return the tenant's data key ``version``, as named by a sealed row."""
        cached = self._cache.get((tenant_id, version))
        if cached is not None:
            return cached
        row = conn.execute(
            text(
                "select wrapped_key, wrapping_key_id from tenant_data_keys"
                " where tenant_id = :tenant_id and version = :version"
            ),
            {"tenant_id": tenant_id, "version": version},
        ).first()
        if row is None:
            raise SealError(f"data key version {version} is not visible for this tenant")
        wrapped = WrappedKey(key_id=row.wrapping_key_id, blob=bytes(row.wrapped_key))
        key = DataKey(tenant_id, version, self.keystore.unwrap(wrapped, _wrap_context(tenant_id)))
        with self._lock:
            self._cache[(tenant_id, version)] = key
        return key

    def _insert_if_missing(self, conn: Connection, tenant_id: uuid.UUID) -> None:
        wrapped = self.keystore.wrap(secrets.token_bytes(32), _wrap_context(tenant_id))
        # Two first writes may race; the loser's key is dropped and both use the winner's.
        conn.execute(
            text(
                "insert into tenant_data_keys (tenant_id, version, wrapped_key, wrapping_key_id)"
                " values (:tenant_id, :version, :wrapped, :key_id)"
                " on conflict (tenant_id, version) do nothing"
            ),
            {
                "tenant_id": tenant_id,
                "version": DATA_KEY_VERSION,
                "wrapped": wrapped.blob,
                "key_id": wrapped.key_id,
            },
        )


@dataclass(frozen=True)
class Rewrapped:
    count: int
    # Tenants whose data key did not unwrap (a damaged or moved row); left as they were.
    failed: tuple[uuid.UUID, ...]


def rewrap_data_keys(owner: Engine, keystore: KeyStore) -> Rewrapped:
    """Re-wrap every data key not under the current wrapping key.

    Runs on the owner role, which can read every tenant's wrapped key (never an unwrapped
    one: the database holds none). Each key is re-wrapped in its own short transaction,
    and a key that does not unwrap is reported and skipped, so one damaged row does not
    hold back the rest.
    """
    current = keystore.current_wrapping_key_id()
    with owner.begin() as conn:
        stale = conn.execute(
            text(
                "select tenant_id, version from tenant_data_keys"
                " where wrapping_key_id <> :current order by tenant_id, version"
            ),
            {"current": current},
        ).all()

    failed: list[uuid.UUID] = []
    for tenant_id, version in stale:
        try:
            _rewrap_one(owner, keystore, tenant_id, version)
        except KeyStoreError:
            failed.append(tenant_id)
    result = Rewrapped(count=len(stale) - len(failed), failed=tuple(failed))
    log.info("data_keys_rewrapped", count=result.count, failed=len(failed), wrapping_key_id=current)
    return result


def wrapping_keys_in_use(owner: Engine) -> set[str]:
    with owner.begin() as conn:
        rows = conn.execute(text("select distinct wrapping_key_id from tenant_data_keys")).all()
    return {row[0] for row in rows}


def _rewrap_one(owner: Engine, keystore: KeyStore, tenant_id: uuid.UUID, version: int) -> None:
    with owner.begin() as conn:
        row = conn.execute(
            text(
                "select wrapped_key, wrapping_key_id from tenant_data_keys"
                " where tenant_id = :tenant_id and version = :version for update"
            ),
            {"tenant_id": tenant_id, "version": version},
        ).one()
        context = _wrap_context(tenant_id)
        plain = keystore.unwrap(WrappedKey(row.wrapping_key_id, bytes(row.wrapped_key)), context)
        wrapped = keystore.wrap(plain, context)
        conn.execute(
            text(
                "update tenant_data_keys set wrapped_key = :wrapped, wrapping_key_id = :key_id,"
                " rewrapped_at = now() where tenant_id = :tenant_id and version = :version"
            ),
            {
                "wrapped": wrapped.blob,
                "key_id": wrapped.key_id,
                "tenant_id": tenant_id,
                "version": version,
            },
        )


def _wrap_context(tenant_id: uuid.UUID) -> bytes:
    return _WRAP_PREFIX + b"|" + tenant_id.bytes
