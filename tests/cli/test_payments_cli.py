"""``stockade secrets set``, ``webhooks pause|resume`` and ``billing reconcile``."""

from __future__ import annotations

import secrets
import subprocess

from sqlalchemy import text

from stockade.config import Settings
from stockade.runtime import Runtime
from tests.cli.test_cli import STOCKADE, assert_one_line_error, run


def _platform_actions(runtime: Runtime) -> list[str]:
    with runtime.db.owner.connect() as conn:
        rows = conn.execute(text("select action from platform_audit_events order by seq"))
        return [str(row[0]) for row in rows]


def test_secret_set_then_rotated(settings: Settings, runtime: Runtime) -> None:
    first, second = secrets.token_hex(32), secrets.token_hex(32)

    stored = run(settings, "secrets", "set", "adyen-hmac-key", "--stdin", stdin=first + "\n")
    rotated = run(settings, "secrets", "set", "adyen-hmac-key", "--stdin", stdin=second + "\n")

    assert stored.returncode == 0, stored.stderr
    assert rotated.returncode == 0, rotated.stderr
    assert "verifies for 24 more hours" in rotated.stdout
    assert first not in stored.stdout + stored.stderr + rotated.stdout + rotated.stderr
    active = [secret.reveal() for secret in runtime.keystore.active_secrets("adyen-hmac-key")]
    assert active[:2] == [second, first]
    assert "secret:rotated" in _platform_actions(runtime)


def test_rotation_without_overlap(settings: Settings, runtime: Runtime) -> None:
    value = f"whsec_{secrets.token_hex(16)}"

    result = run(
        settings,
        "secrets",
        "set",
        "stripe-webhook-secret",
        "--stdin",
        "--overlap-hours",
        "0",
        stdin=value + "\n",
    )

    assert result.returncode == 0, result.stderr
    active = runtime.keystore.active_secrets("stripe-webhook-secret")
    assert [secret.reveal() for secret in active] == [value]


def test_unknown_secret_name_is_one_line(settings: Settings, runtime: Runtime) -> None:
    result = run(settings, "secrets", "set", "database-password", "--stdin", stdin="x\n")

    assert_one_line_error(result, "unknown secret 'database-password'")


def test_malformed_api_key_is_one_line(settings: Settings, runtime: Runtime) -> None:
    result = run(settings, "secrets", "set", "stripe-api-key", "--stdin", stdin="pk_test_abc\n")

    assert_one_line_error(result, "is not a Stripe secret key")
    assert "pk_test_abc" not in result.stderr
    assert runtime.keystore.get_secret("stripe-api-key") is None


def test_secret_argument_is_refused(settings: Settings, runtime: Runtime) -> None:
    result = run(settings, "secrets", "set", "stripe-webhook-secret")

    assert_one_line_error(result, "--stdin")


def test_pause_and_resume_webhooks(settings: Settings, runtime: Runtime) -> None:
    paused = run(settings, "webhooks", "pause")
    again = run(settings, "webhooks", "pause")
    resumed = run(settings, "webhooks", "resume")

    assert paused.returncode == 0, paused.stderr
    assert "paused; deliveries are still verified and stored" in paused.stdout
    assert "already paused" in again.stdout
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout
    actions = _platform_actions(runtime)
    assert "webhooks:paused" in actions
    assert "webhooks:resumed" in actions


def test_reconcile_without_api_key_is_one_line(settings: Settings, runtime: Runtime) -> None:
    result = run(settings, "billing", "reconcile")

    assert_one_line_error(result, "no stripe-api-key is set")


def test_binary_receipt_is_one_line(settings: Settings, runtime: Runtime, tmp_path) -> None:  # type: ignore[no-untyped-def]
    receipt = tmp_path / "receipt.bin"
    receipt.write_bytes(b"\xff\xfe\x00binary")
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')

    result = subprocess.run(  # noqa: S603 - our own entry point with fixed arguments
        [STOCKADE, "receipt", "verify", str(receipt), "--jwks", str(jwks)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert_one_line_error(result, "is not UTF-8 text")
