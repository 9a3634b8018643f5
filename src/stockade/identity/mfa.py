"""TOTP second factor (RFC 6238) and one-time recovery codes.

The TOTP secret is stored encrypted (AES-256-GCM under a key store key, with the user id
as associated data), because verifying a code needs the secret itself. A code is
accepted once: its time step must be newer than the last step used, checked and
recorded by one conditional UPDATE, so two requests cannot both spend it. Recovery
codes are stored as HMAC-SHA256 digests under a key store key, so a copy of the
database alone does not allow guessing them offline.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
import uuid

import pyotp
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, Engine, text

from stockade.db import Scope, scoped_transaction
from stockade.keys import KeyStore

ISSUER_NAME = "Stockade"
RECOVERY_CODE_COUNT = 10
# The authentication methods (RFC 8176) recorded after a second factor.
MFA_AMR = ["pwd", "otp", "mfa"]
_STEP_SECONDS = 30
# One step either side tolerates a phone clock that is up to 30 s off (RFC 6238 section 5.2).
_WINDOW_STEPS = 1
_KEY_NAME = "mfa-key"


class EnrolmentError(ValueError):
    """The enrolment cannot go on; the message names why."""


def _key(keystore: KeyStore) -> bytes:
    value = keystore.get_or_create_secret(_KEY_NAME).reveal()
    return hashlib.sha256(value.encode()).digest()


def _encrypt(keystore: KeyStore, user_id: uuid.UUID, secret: str) -> bytes:
    nonce = secrets.token_bytes(12)
    return nonce + AESGCM(_key(keystore)).encrypt(nonce, secret.encode(), user_id.bytes)


def _decrypt(keystore: KeyStore, user_id: uuid.UUID, blob: bytes) -> str:
    return AESGCM(_key(keystore)).decrypt(blob[:12], blob[12:], user_id.bytes).decode()


def _recovery_digest(keystore: KeyStore, code: str) -> bytes:
    normalised = code.replace("-", "").replace(" ", "").lower()
    return hmac.new(_key(keystore), normalised.encode(), hashlib.sha256).digest()


def is_enrolled(engine: Engine, user_id: uuid.UUID) -> bool:
    with scoped_transaction(engine, Scope(user_id=user_id)) as conn:
        row = conn.execute(
            text("select confirmed_at is not null from mfa_totp where user_id = :user"),
            {"user": user_id},
        ).first()
    return bool(row and row[0])


def start_enrolment(engine: Engine, keystore: KeyStore, user_id: uuid.UUID) -> str:
    """Store a new, unconfirmed TOTP secret for the user and return it."""
    secret = pyotp.random_base32()
    with scoped_transaction(engine, Scope(user_id=user_id)) as conn:
        stored = conn.execute(
            text(
                "insert into mfa_totp (user_id, secret_ciphertext) values (:user, :secret)"
                " on conflict (user_id) do update"
                " set secret_ciphertext = excluded.secret_ciphertext,"
                " last_used_step = 0, created_at = now()"
                " where mfa_totp.confirmed_at is null returning 1"
            ),
            {"user": user_id, "secret": _encrypt(keystore, user_id, secret)},
        ).first()
    if stored is None:
        raise EnrolmentError("multi-factor sign-in is already set up for this account")
    return secret


def pending_secret(engine: Engine, keystore: KeyStore, user_id: uuid.UUID) -> str | None:
    """Return the secret of an enrolment not yet confirmed, so a typo keeps the QR code."""
    with scoped_transaction(engine, Scope(user_id=user_id)) as conn:
        row = conn.execute(
            text(
                "select secret_ciphertext from mfa_totp"
                " where user_id = :user and confirmed_at is null"
            ),
            {"user": user_id},
        ).first()
    return _decrypt(keystore, user_id, row[0]) if row else None


def provisioning_uri(secret: str, email: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=ISSUER_NAME)


def confirm_enrolment(
    engine: Engine, keystore: KeyStore, user_id: uuid.UUID, otp: str
) -> list[str] | None:
    """Confirm the pending secret with a first code; return new recovery codes, or None."""
    with scoped_transaction(engine, Scope(user_id=user_id)) as conn:
        row = conn.execute(
            text(
                "select secret_ciphertext from mfa_totp"
                " where user_id = :user and confirmed_at is null"
            ),
            {"user": user_id},
        ).first()
        if row is None:
            return None
        step = _matching_step(_decrypt(keystore, user_id, row[0]), otp)
        if step is None:
            return None
        conn.execute(
            text(
                "update mfa_totp set confirmed_at = now(), last_used_step = :step"
                " where user_id = :user"
            ),
            {"user": user_id, "step": step},
        )
        return _replace_recovery_codes(conn, keystore, user_id)


def verify_second_factor(engine: Engine, keystore: KeyStore, user_id: uuid.UUID, code: str) -> bool:
    """Accept a current TOTP code not used before, or an unused recovery code, once."""
    code = code.strip()
    with scoped_transaction(engine, Scope(user_id=user_id)) as conn:
        if code.isdigit() and len(code) == 6:
            return _spend_totp(conn, keystore, user_id, code)
        spent = conn.execute(
            text(
                "update mfa_recovery_codes set used_at = now()"
                " where user_id = :user and code_hash = :hash and used_at is null"
            ),
            {"user": user_id, "hash": _recovery_digest(keystore, code)},
        )
        return spent.rowcount == 1


def _spend_totp(conn: Connection, keystore: KeyStore, user_id: uuid.UUID, otp: str) -> bool:
    row = conn.execute(
        text(
            "select secret_ciphertext from mfa_totp"
            " where user_id = :user and confirmed_at is not null"
        ),
        {"user": user_id},
    ).first()
    if row is None:
        return False
    step = _matching_step(_decrypt(keystore, user_id, row[0]), otp)
    if step is None:
        return False
    # Replay protection: the step must be newer than the last one spent.
    spent = conn.execute(
        text(
            "update mfa_totp set last_used_step = :step"
            " where user_id = :user and last_used_step < :step"
        ),
        {"user": user_id, "step": step},
    )
    return spent.rowcount == 1


def _matching_step(secret: str, otp: str) -> int | None:
    """Return the time step whose code equals ``otp``, within the tolerated window."""
    totp = pyotp.TOTP(secret, interval=_STEP_SECONDS)
    current = int(time.time()) // _STEP_SECONDS
    for step in range(current - _WINDOW_STEPS, current + _WINDOW_STEPS + 1):
        if hmac.compare_digest(totp.at(step * _STEP_SECONDS), otp):
            return step
    return None


def _replace_recovery_codes(conn: Connection, keystore: KeyStore, user_id: uuid.UUID) -> list[str]:
    codes = [_new_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
    conn.execute(text("delete from mfa_recovery_codes where user_id = :user"), {"user": user_id})
    conn.execute(
        text("insert into mfa_recovery_codes (user_id, code_hash) values (:user, :hash)"),
        [{"user": user_id, "hash": _recovery_digest(keystore, code)} for code in codes],
    )
    return codes


def _new_recovery_code() -> str:
    # 10 base32 characters carry 50 bits; the HMAC key keeps them from offline guessing.
    raw = base64.b32encode(secrets.token_bytes(10)).decode().lower()[:10]
    return f"{raw[:5]}-{raw[5:]}"
