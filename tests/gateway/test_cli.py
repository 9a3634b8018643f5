"""``stockade gateway``: the outage switch, a tenant's models and sampling, upstream keys."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from sqlalchemy import text

from stockade.config import Settings
from stockade.gateway import control
from stockade.runtime import Runtime
from tests.cli.test_cli import assert_one_line_error, run
from tests.gateway.conftest import Caller


def test_cli_outage_switch(settings: Settings, runtime: Runtime) -> None:
    try:
        switched_on = run(settings, "gateway", "outage", "on")
        status_on = run(settings, "gateway", "status")
        switched_off = run(settings, "gateway", "outage", "off")
        status_off = run(settings, "gateway", "status")
    finally:
        control.set_outage(runtime.db.owner, forced=False)

    assert switched_on.returncode == 0, switched_on.stderr
    assert "outage fallback: forced on" in status_on.stdout
    assert "model stockade-extractive (chat): extractive:extractive" in status_on.stdout
    assert switched_off.returncode == 0, switched_off.stderr
    assert "outage fallback: off" in status_off.stdout
    assert_one_line_error(run(settings, "gateway", "outage", "maybe"), "maybe")


def test_cli_sets_tenant_models(
    settings: Settings, runtime: Runtime, make_caller: Callable[..., Caller]
) -> None:
    caller = make_caller()
    tenant = caller.member.tenant

    changed = run(
        settings,
        "gateway",
        "tenant",
        tenant,
        "--allow-model",
        "stockade-rag",
        "--sampling",
        "--sample-percent",
        "5",
    )
    unknown = run(settings, "gateway", "tenant", tenant, "--allow-model", "gpt-nothing")

    assert changed.returncode == 0, changed.stderr
    assert "models stockade-rag" in changed.stdout
    assert "sampling consented, 5% of calls" in changed.stdout
    assert_one_line_error(unknown, "unknown models ['gpt-nothing']")
    settings_now = control.read_settings(runtime.db.owner, caller.tenant_id)
    assert settings_now.allowed_models == ("stockade-rag",)


def test_cli_stores_upstream_key(settings: Settings, runtime: Runtime) -> None:
    value = f"sk-test-{secrets.token_hex(16)}"

    stored = run(settings, "gateway", "key", "gateway-cli-test", "--stdin", stdin=value + "\n")
    as_argument = run(settings, "gateway", "key", "gateway-cli-test")
    bad_name = run(settings, "gateway", "key", "stripe-api-key", "--stdin", stdin="x\n")

    assert stored.returncode == 0, stored.stderr
    assert value not in stored.stdout + stored.stderr
    secret = runtime.keystore.get_secret("gateway-cli-test")
    assert secret is not None
    assert secret.reveal() == value
    assert_one_line_error(as_argument, "standard input")
    assert_one_line_error(bad_name, "not a gateway key name")
    with runtime.db.owner.connect() as conn:
        subjects = conn.execute(
            text("select subject from platform_audit_events where action = 'secret:set'")
        ).scalars()
        assert "gateway-cli-test" in list(subjects)
