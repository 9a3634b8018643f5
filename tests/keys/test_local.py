"""The local key store: encrypted at rest, private file modes, secrets that never print."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from stockade.keys import LocalKeyStore, Secret
from stockade.keys.local import KeyStoreError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keyring_files_are_private(tmp_path: Path) -> None:
    store = LocalKeyStore(tmp_path / "keys")
    store.current_signing_key()
    assert _mode(tmp_path / "keys") == 0o700
    assert _mode(tmp_path / "keys" / "master.key") == 0o600
    assert _mode(tmp_path / "keys" / "keyring.bin") == 0o600


def test_keyring_holds_no_plaintext(tmp_path: Path) -> None:
    store = LocalKeyStore(tmp_path / "keys")
    store.current_signing_key()
    store.set_secret("stripe-api-key", Secret("sk_test_plaintext_marker"))
    blob = (tmp_path / "keys" / "keyring.bin").read_bytes()
    assert b"PRIVATE KEY" not in blob
    assert b"sk_test_plaintext_marker" not in blob


def test_tampered_keyring_is_refused(tmp_path: Path) -> None:
    LocalKeyStore(tmp_path / "keys").current_signing_key()
    path = tmp_path / "keys" / "keyring.bin"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(KeyStoreError, match="does not decrypt"):
        LocalKeyStore(tmp_path / "keys").signing_keys()


def test_loose_master_key_mode_is_refused(tmp_path: Path) -> None:
    LocalKeyStore(tmp_path / "keys")
    os.chmod(tmp_path / "keys" / "master.key", 0o644)
    with pytest.raises(KeyStoreError, match="chmod 600"):
        LocalKeyStore(tmp_path / "keys")


def test_rotation_keeps_previous_key_verifying(tmp_path: Path) -> None:
    store = LocalKeyStore(tmp_path / "keys")
    first = store.current_signing_key()
    second = store.rotate_signing_key()
    kids = [key.kid for key in store.signing_keys()]
    assert kids == [second.kid, first.kid]
    assert store.current_signing_key().kid == second.kid


def test_other_process_sees_rotation(tmp_path: Path) -> None:
    reader = LocalKeyStore(tmp_path / "keys")
    writer = LocalKeyStore(tmp_path / "keys")
    reader.current_signing_key()
    rotated = writer.rotate_signing_key()
    assert reader.current_signing_key().kid == rotated.kid


def test_secret_never_prints() -> None:
    secret = Secret("hunter2-but-longer")
    assert "hunter2" not in repr(secret)
    assert "hunter2" not in str(secret)
    assert "hunter2" not in f"{secret}"
    assert secret.matches("hunter2-but-longer")
    assert not secret.matches("hunter2-but-longes")


def test_signing_key_repr_hides_material(tmp_path: Path) -> None:
    key = LocalKeyStore(tmp_path / "keys").current_signing_key()
    assert "PRIVATE" not in repr(key)
    assert "d" not in key.public_jwk()
