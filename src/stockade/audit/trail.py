"""The audit trail: append-only, hash-chained events for each tenant and for the platform.

Every tenant has one chain, and events that belong to no tenant form one platform
chain. In a chain, ``seq`` counts from 1 without gaps and each event stores

    hash = SHA-256(prev_hash || canonical JSON of the event's other fields)

where ``prev_hash`` is the hash of the event before it (32 zero bytes for the first).
Writers of one chain take turns on a transaction-scoped advisory lock, so two requests
never append to the same end. The application role may insert events but not update or
delete them (the grants of migration 0002). ``verify_chain`` recomputes a chain as the
owner role and lists every place where it breaks.

NOTE: the chain shows a changed or missing event in the middle, but the owner role can
still rewrite an event together with every hash after it, or drop the newest events.
Copying the newest hash to a store the owner cannot write would close that gap.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, text

from stockade.db import Scope, scoped_transaction
from stockade.keys import KeyStore

GENESIS_HASH = bytes(32)
ACTION_PATTERN = re.compile(r"^[a-z][a-z0-9-]*:[a-z][a-z0-9-]*$")
# The key store secret that client addresses are hashed with before they are stored.
CLIENT_ADDRESS_KEY = "client-address-key"
# Advisory locks with two int4 keys: this namespace, then a number for the chain. The
# platform chain uses 0, and a tenant uses the first 4 bytes of its id. Two tenants that
# share a number only take turns, because the (tenant_id, seq) key keeps chains apart.
_LOCK_NAMESPACE = 0x61756474
_PLATFORM_LOCK_KEY = 0
_READ_BATCH = 1000

_LOCK = text("select pg_advisory_xact_lock(:namespace, :key)")
_TENANT_HEAD = text(
    "select h.seq, h.hash, clock_timestamp(), stockade_tenant() from audit_chain_head() h"
)
_PLATFORM_HEAD = text("select h.seq, h.hash, clock_timestamp() from platform_audit_chain_head() h")
_INSERT_TENANT = text(
    "insert into audit_events (tenant_id, seq, occurred_at, action, actor_user_id, subject,"
    " client_address, request_id, trace_id, data, prev_hash, hash)"
    " values (:tenant_id, :seq, :occurred_at, :action, :actor_user_id, :subject,"
    " :client_address, :request_id, :trace_id, cast(:data as jsonb), :prev_hash, :hash)"
)
_INSERT_PLATFORM = text(
    "insert into platform_audit_events (seq, occurred_at, action, actor_user_id, subject,"
    " client_address, request_id, trace_id, data, prev_hash, hash)"
    " values (:seq, :occurred_at, :action, :actor_user_id, :subject,"
    " :client_address, :request_id, :trace_id, cast(:data as jsonb), :prev_hash, :hash)"
)
# The readers below return the columns in the order that ``_event_from`` expects.
_PAGE_TENANT = text(
    "select tenant_id, seq, occurred_at, action, actor_user_id, subject, client_address,"
    " request_id, trace_id, data, prev_hash, hash from audit_events"
    " where tenant_id = :tenant_id and seq < :before order by seq desc limit :limit"
)
_CHAIN_TENANT = text(
    "select tenant_id, seq, occurred_at, action, actor_user_id, subject, client_address,"
    " request_id, trace_id, data, prev_hash, hash from audit_events"
    " where tenant_id = :tenant_id order by seq"
)
_PAGE_PLATFORM = text(
    "select null::uuid, seq, occurred_at, action, actor_user_id, subject, client_address,"
    " request_id, trace_id, data, prev_hash, hash from platform_audit_events"
    " order by seq desc limit :limit"
)
_CHAIN_PLATFORM = text(
    "select null::uuid, seq, occurred_at, action, actor_user_id, subject, client_address,"
    " request_id, trace_id, data, prev_hash, hash from platform_audit_events order by seq"
)


class AuditAction(StrEnum):
    """Audit event names: ``subject:action``, lowercase, as ``ACTION_PATTERN`` states."""

    SIGNIN_FAILED = "signin:failed"
    SIGNIN_LOCKED = "signin:locked"
    SIGNIN_UNLOCKED = "signin:unlocked"


class AuditError(ValueError):
    """An event that cannot be recorded as given. The message names the field."""


@dataclass(frozen=True)
class AuditEvent:
    """One recorded event. ``tenant_id`` is None on the platform chain."""

    tenant_id: uuid.UUID | None
    seq: int
    occurred_at: datetime
    action: str
    actor_user_id: uuid.UUID | None
    subject: str | None
    client_address: str | None
    request_id: str | None
    trace_id: str | None
    data: Mapping[str, Any] = field(default_factory=dict)
    prev_hash: bytes = GENESIS_HASH
    hash: bytes = b""

    def canonical_content(self) -> bytes:
        """Encode every field except the two hashes as sorted, compact, ASCII JSON."""
        document = {
            "tenant_id": str(self.tenant_id) if self.tenant_id else None,
            "seq": self.seq,
            "occurred_at": self.occurred_at.astimezone(UTC).isoformat(timespec="microseconds"),
            "action": self.action,
            "actor_user_id": str(self.actor_user_id) if self.actor_user_id else None,
            "subject": self.subject,
            "client_address": self.client_address,
            "request_id": self.request_id,
            "trace_id": self.trace_id,
            "data": self.data,
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()

    def expected_hash(self) -> bytes:
        return hashlib.sha256(self.prev_hash + self.canonical_content()).digest()


@dataclass(frozen=True)
class ChainBreak:
    """A place where a chain does not verify: the event's seq and what is wrong."""

    seq: int
    reason: str


def client_address_digest(keystore: KeyStore, address: str) -> str:
    """Hash a client address with HMAC-SHA256 under a key store key, as hex.

    Events and sign-in counters store only this digest. The key keeps it from being
    reversed by hashing all 2^32 IPv4 addresses.
    """
    key = keystore.get_or_create_secret(CLIENT_ADDRESS_KEY).reveal().encode()
    return hmac.new(key, address.encode(), hashlib.sha256).hexdigest()


def record_event(
    conn: Connection,
    *,
    tenant_id: uuid.UUID,
    action: str,
    actor_user_id: uuid.UUID | None = None,
    subject: str | None = None,
    client_address: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """Append an event to a tenant's chain inside ``conn``'s scoped transaction.

    ``conn`` must be scoped to ``tenant_id``. The request id and trace id come from the
    structlog context when they are bound there. The chain's lock is held until the
    transaction ends, so record events last in a transaction that does other work.
    ``client_address`` is a ``client_address_digest``, never the address itself.
    """
    payload = _checked(action, data)
    conn.execute(_LOCK, {"namespace": _LOCK_NAMESPACE, "key": _tenant_lock_key(tenant_id)})
    last_seq, last_hash, now, scoped_tenant = conn.execute(_TENANT_HEAD).one()
    if scoped_tenant != tenant_id:
        raise AuditError(f"the transaction is scoped to tenant {scoped_tenant}, not {tenant_id}")
    event = _next_event(
        tenant_id, last_seq, last_hash, now, action, actor_user_id, subject, client_address, payload
    )
    conn.execute(_INSERT_TENANT, _parameters(event))
    return event


def record_platform_event(
    engine: Engine,
    *,
    action: str,
    actor_user_id: uuid.UUID | None = None,
    subject: str | None = None,
    client_address: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """Append an event that belongs to no tenant to the platform chain, in its own transaction.

    The application role can add to this chain but not read it.
    """
    payload = _checked(action, data)
    with scoped_transaction(engine, Scope()) as conn:
        conn.execute(_LOCK, {"namespace": _LOCK_NAMESPACE, "key": _PLATFORM_LOCK_KEY})
        last_seq, last_hash, now = conn.execute(_PLATFORM_HEAD).one()
        event = _next_event(
            None, last_seq, last_hash, now, action, actor_user_id, subject, client_address, payload
        )
        conn.execute(_INSERT_PLATFORM, _parameters(event))
    return event


def list_events(
    conn: Connection, tenant_id: uuid.UUID, *, limit: int, before: int | None = None
) -> list[AuditEvent]:
    """List a tenant's events, newest first, with a seq below ``before`` when given.

    ``conn`` is a scoped transaction, and RLS shows rows only to a role with ``audit:read``.
    """
    rows = conn.execute(
        _PAGE_TENANT,
        {"tenant_id": tenant_id, "before": before or 2**63 - 1, "limit": limit},
    ).all()
    return [_event_from(row) for row in rows]


def list_platform_events(owner: Engine, *, limit: int) -> list[AuditEvent]:
    """List the newest platform events (no tenant), newest first, as the owner role.

    The application role may only append to this chain, so operators read it here.
    """
    with owner.connect() as conn:
        rows = conn.execute(_PAGE_PLATFORM, {"limit": limit}).all()
    return [_event_from(row) for row in rows]


def verify_chain(owner: Engine, tenant_id: uuid.UUID) -> list[ChainBreak]:
    """Recompute a tenant's chain as the owner role and return its breaks, if any."""
    return _verify_rows(owner, _CHAIN_TENANT, {"tenant_id": tenant_id})


def verify_platform_chain(owner: Engine) -> list[ChainBreak]:
    """Recompute the platform chain as the owner role and return its breaks, if any."""
    return _verify_rows(owner, _CHAIN_PLATFORM, {})


def find_breaks(events: Iterable[AuditEvent]) -> list[ChainBreak]:
    """Check that seqs count up from 1, each event links to the one before, and each hash fits."""
    breaks: list[ChainBreak] = []
    expected_seq, expected_prev = 1, GENESIS_HASH
    for event in events:
        if event.seq != expected_seq:
            missing = f"events {expected_seq} to {event.seq - 1} are missing"
            breaks.append(ChainBreak(event.seq, missing))
        if event.prev_hash != expected_prev:
            breaks.append(ChainBreak(event.seq, "prev_hash differs from the previous hash"))
        if event.hash != event.expected_hash():
            breaks.append(ChainBreak(event.seq, "hash does not match the event's content"))
        expected_seq, expected_prev = event.seq + 1, event.hash
    return breaks


def _verify_rows(owner: Engine, statement: Any, params: dict[str, Any]) -> list[ChainBreak]:
    with owner.connect() as conn:
        result = conn.execution_options(yield_per=_READ_BATCH).execute(statement, params)
        return find_breaks(_event_from(row) for row in result)


def _next_event(
    tenant_id: uuid.UUID | None,
    last_seq: int | None,
    last_hash: bytes | None,
    now: datetime,
    action: str,
    actor_user_id: uuid.UUID | None,
    subject: str | None,
    client_address: str | None,
    data: dict[str, Any],
) -> AuditEvent:
    bound = structlog.contextvars.get_contextvars()
    unhashed = AuditEvent(
        tenant_id=tenant_id,
        seq=(last_seq or 0) + 1,
        occurred_at=now,
        action=action,
        actor_user_id=actor_user_id,
        subject=subject,
        client_address=client_address,
        request_id=_text_or_none(bound.get("request_id")),
        trace_id=_text_or_none(bound.get("trace_id")),
        data=data,
        prev_hash=bytes(last_hash) if last_hash is not None else GENESIS_HASH,
    )
    return replace(unhashed, hash=unhashed.expected_hash())


def _parameters(event: AuditEvent) -> dict[str, Any]:
    return {
        "tenant_id": event.tenant_id,
        "seq": event.seq,
        "occurred_at": event.occurred_at,
        "action": event.action,
        "actor_user_id": event.actor_user_id,
        "subject": event.subject,
        "client_address": event.client_address,
        "request_id": event.request_id,
        "trace_id": event.trace_id,
        "data": json.dumps(event.data),
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def _event_from(row: Sequence[Any]) -> AuditEvent:
    return AuditEvent(
        tenant_id=row[0],
        seq=row[1],
        occurred_at=row[2],
        action=row[3],
        actor_user_id=row[4],
        subject=row[5],
        client_address=row[6],
        request_id=row[7],
        trace_id=row[8],
        data=row[9],
        prev_hash=bytes(row[10]),
        hash=bytes(row[11]),
    )


def _tenant_lock_key(tenant_id: uuid.UUID) -> int:
    return int.from_bytes(tenant_id.bytes[:4], "big", signed=True)


def _text_or_none(value: object) -> str | None:
    return None if value is None else str(value)


def _checked(action: str, data: Mapping[str, Any] | None) -> dict[str, Any]:
    if not ACTION_PATTERN.match(action):
        raise AuditError(f"audit action {action!r} is not 'subject:action' in lowercase")
    payload = dict(data or {})
    _check_json(payload, "data")
    return payload


def _check_json(value: object, path: str) -> None:
    """Raise ``AuditError`` unless ``value`` survives a jsonb round trip unchanged.

    PostgreSQL's jsonb rewrites the text of some numbers (``1e+16`` comes back as
    ``10000000000000000``), which would change the hash, so floats are rejected.
    """
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        raise AuditError(f"{path} is a float; store it as a string or an integer")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise AuditError(f"{path} has the key {key!r}; keys must be strings")
            _check_json(item, f"{path}.{key}")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json(item, f"{path}[{index}]")
        return
    raise AuditError(f"{path} is a {type(value).__name__}, which JSON cannot hold")
