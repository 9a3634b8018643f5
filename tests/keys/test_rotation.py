"""Named secrets rotate with an overlap in which the old and new values both verify."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stockade.keys import LocalKeyStore, Secret


def _values(secrets: list[Secret]) -> list[str]:
    return [secret.reveal() for secret in secrets]


def test_both_values_verify_within_overlap(tmp_path: Path) -> None:
    store = LocalKeyStore(tmp_path / "keys")
    store.set_secret("stripe-webhook-secret", Secret("whsec_old"))
    store.set_secret("stripe-webhook-secret", Secret("whsec_new"), overlap=timedelta(hours=24))
    now = datetime.now(UTC)

    assert _values(store.active_secrets("stripe-webhook-secret", now=now)) == [
        "whsec_new",
        "whsec_old",
    ]
    later = now + timedelta(hours=23, minutes=59)
    assert len(store.active_secrets("stripe-webhook-secret", now=later)) == 2
    expired = now + timedelta(hours=24, minutes=1)
    assert _values(store.active_secrets("stripe-webhook-secret", now=expired)) == ["whsec_new"]


def test_zero_overlap_retires_all_old(tmp_path: Path) -> None:
    store = LocalKeyStore(tmp_path / "keys")
    store.set_secret("adyen-hmac-key", Secret("aa" * 32))
    store.set_secret("adyen-hmac-key", Secret("bb" * 32), overlap=timedelta(hours=24))
    store.set_secret("adyen-hmac-key", Secret("cc" * 32), overlap=timedelta(0))

    assert _values(store.active_secrets("adyen-hmac-key")) == ["cc" * 32]


def test_newest_is_current_secret(tmp_path: Path) -> None:
    store = LocalKeyStore(tmp_path / "keys")
    store.set_secret("stripe-api-key", Secret("sk_test_one"))
    store.set_secret("stripe-api-key", Secret("sk_test_two"), overlap=timedelta(hours=1))

    current = store.get_secret("stripe-api-key")

    assert current is not None
    assert current.reveal() == "sk_test_two"
    assert "sk_test" not in repr(store.active_secrets("stripe-api-key"))


def test_unknown_name_has_no_active_secret(tmp_path: Path) -> None:
    assert LocalKeyStore(tmp_path / "keys").active_secrets("nothing-here") == []


def test_negative_overlap_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="negative"):
        LocalKeyStore(tmp_path / "keys").set_secret(
            "stripe-api-key", Secret("sk_test_x"), overlap=timedelta(seconds=-1)
        )


def test_other_process_sees_rotation(tmp_path: Path) -> None:
    reader = LocalKeyStore(tmp_path / "keys")
    writer = LocalKeyStore(tmp_path / "keys")
    reader.active_secrets("stripe-webhook-secret")

    writer.set_secret("stripe-webhook-secret", Secret("whsec_fresh"))

    assert _values(reader.active_secrets("stripe-webhook-secret")) == ["whsec_fresh"]
