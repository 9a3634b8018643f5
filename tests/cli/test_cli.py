"""The ``stockade`` command: operator actions, and one clear line for bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from stockade.config import Settings
from stockade.runtime import Runtime

STOCKADE = str(Path(sys.executable).with_name("stockade"))


def run(
    settings: Settings, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own entry point with fixed arguments
        [STOCKADE, *args, "--data-dir", str(settings.data_dir)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("stockade: error:")]
    assert len(errors) == 1, result.stderr
    assert fragment in errors[0]
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def tenant_name(settings: Settings, runtime: Runtime) -> str:
    name = f"cli-{uuid.uuid4().hex[:10]}"
    result = run(settings, "tenant", "create", name)
    assert result.returncode == 0, result.stderr
    return name


def test_tenant_create_prints_id(settings: Settings, tenant_name: str) -> None:
    name = f"cli-{uuid.uuid4().hex[:10]}"
    result = run(settings, "tenant", "create", name, "--plan", "pro")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"tenant {name} created: ")


def test_duplicate_tenant_is_one_line(settings: Settings, tenant_name: str) -> None:
    assert_one_line_error(run(settings, "tenant", "create", tenant_name), "already exists")


def test_invalid_tenant_name_is_one_line(settings: Settings, runtime: Runtime) -> None:
    assert_one_line_error(run(settings, "tenant", "create", "Bad Name!"), "invalid tenant name")


def test_user_create_then_second_tenant(settings: Settings, tenant_name: str) -> None:
    email = f"cli-{uuid.uuid4().hex[:8]}@example.test"
    other = f"cli-{uuid.uuid4().hex[:10]}"
    assert run(settings, "tenant", "create", other).returncode == 0

    first = run(
        settings,
        "user",
        "create",
        email,
        "--tenant",
        tenant_name,
        "--role",
        "viewer",
        "--password-stdin",
        stdin="marble orchard falcon 42\n",
    )
    second = run(settings, "user", "create", email, "--tenant", other, "--role", "admin")

    assert first.returncode == 0, first.stderr
    assert "created" in first.stdout
    assert second.returncode == 0, second.stderr
    assert f"role admin in tenant {other}" in second.stdout


def test_user_create_bad_input_is_one_line(settings: Settings, tenant_name: str) -> None:
    email = f"cli-{uuid.uuid4().hex[:8]}@example.test"
    cases = [
        (["--tenant", tenant_name, "--role", "wizard", "--password-stdin"], "unknown role"),
        (["--tenant", "no-such-tenant", "--role", "viewer", "--password-stdin"], "not found"),
        (["--tenant", tenant_name, "--role", "viewer"], "give a password"),
    ]
    for options, fragment in cases:
        result = run(
            settings, "user", "create", email, *options, stdin="marble orchard falcon 42\n"
        )
        assert_one_line_error(result, fragment)


def test_weak_password_is_refused_unechoed(settings: Settings, tenant_name: str) -> None:
    email = f"cli-{uuid.uuid4().hex[:8]}@example.test"
    result = run(
        settings,
        "user",
        "create",
        email,
        "--tenant",
        tenant_name,
        "--role",
        "viewer",
        "--password-stdin",
        stdin="password1234\n",
    )
    assert_one_line_error(result, "too common")
    assert "password1234" not in result.stderr + result.stdout


def test_invalid_email_is_one_line(settings: Settings, tenant_name: str) -> None:
    result = run(
        settings,
        "user",
        "create",
        "not-an-email",
        "--tenant",
        tenant_name,
        "--role",
        "viewer",
        "--password-stdin",
        stdin="marble orchard falcon 42\n",
    )
    assert_one_line_error(result, "invalid e-mail")


def test_confidential_client_secret_printed_once(settings: Settings, runtime: Runtime) -> None:
    result = run(
        settings,
        "client",
        "create",
        "Back office",
        "--redirect-uri",
        "https://app.example.test/callback",
    )
    assert result.returncode == 0, result.stderr
    assert "client_id: " in result.stdout
    assert "client_secret: " in result.stdout


def test_public_client_has_no_secret(settings: Settings, runtime: Runtime) -> None:
    result = run(
        settings,
        "client",
        "create",
        "SPA",
        "--public",
        "--redirect-uri",
        "http://127.0.0.1:5173/callback",
    )
    assert result.returncode == 0, result.stderr
    assert "client_secret" not in result.stdout


@pytest.mark.parametrize(
    "uri", ["http://app.example.test/cb", "https://app.example.test/cb#frag", "ftp://x/cb"]
)
def test_unsafe_redirect_uri_is_one_line(settings: Settings, runtime: Runtime, uri: str) -> None:
    result = run(settings, "client", "create", "Bad", "--redirect-uri", uri)
    assert_one_line_error(result, "redirect URI")


def test_long_token_lifetime_stops_serve(settings: Settings, runtime: Runtime) -> None:
    result = run(settings, "serve", "--port", "1", env={"STOCKADE_ACCESS_TOKEN_MINUTES": "61"})
    assert_one_line_error(result, "STOCKADE_ACCESS_TOKEN_MINUTES=61")


def test_demo_seeds_once(settings: Settings, runtime: Runtime) -> None:
    first = run(settings, "demo")
    second = run(settings, "demo")
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert "exists already" in second.stdout
    if os.environ.get("STOCKADE_DATABASE_URL"):
        return  # an external database may hold the demo from an earlier run
    assert "admin@acme.example" in first.stdout

    printed = [
        line.split()[1]
        for line in first.stdout.splitlines()
        if line.startswith("  ") and "@" in line
    ]
    assert len(printed) == 11
    # The demo passwords exist only in that output: not in the data folder, not on disk here.
    for path in [*settings.data_dir.rglob("*"), *Path.cwd().rglob("*.txt")]:
        if path.is_file() and path.stat().st_size < 64 * 1024 * 1024:
            content = path.read_bytes()
            assert not any(password.encode() in content for password in printed), path


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["bogus"], "No such command"),
        (["serve", "--port", "99999"], "--port"),
        (["user", "create", "a@example.test"], "Missing option '--tenant'"),
    ],
)
def test_usage_errors_are_one_line(
    settings: Settings, runtime: Runtime, args: list[str], fragment: str
) -> None:
    assert_one_line_error(run(settings, *args), fragment)


def test_missing_data_folder_is_one_line(tmp_path: Path, runtime: Runtime) -> None:
    absent = Settings(data_dir=tmp_path / "absent")
    result = run(absent, "tenant", "create", "somewhere")
    assert_one_line_error(result, "no Stockade data folder")
    assert not (tmp_path / "absent").exists()


def test_data_folder_file_is_one_line(tmp_path: Path, runtime: Runtime) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    assert_one_line_error(run(Settings(data_dir=a_file), "demo"), "Not a directory")


def test_busy_port_is_one_line(settings: Settings, runtime: Runtime) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run(settings, "serve", "--port", str(port))
    assert_one_line_error(result, "cannot listen on 127.0.0.1")


def test_reset_mfa_signs_user_out(settings: Settings, runtime: Runtime) -> None:
    email = f"mfa-{uuid.uuid4().hex[:8]}@example.test"
    tenant = f"cli-{uuid.uuid4().hex[:10]}"
    assert run(settings, "tenant", "create", tenant).returncode == 0
    created = run(
        settings,
        "user",
        "create",
        email,
        "--tenant",
        tenant,
        "--role",
        "admin",
        "--password-stdin",
        stdin="marble orchard falcon 42\n",
    )
    assert created.returncode == 0, created.stderr

    reset = run(settings, "user", "reset-mfa", email)
    unknown = run(settings, "user", "reset-mfa", "nobody@example.test")

    assert reset.returncode == 0, reset.stderr
    assert_one_line_error(unknown, "not found")


def test_audit_platform_lists_events(settings: Settings, runtime: Runtime) -> None:
    from stockade.audit.trail import record_platform_event

    marker = f"probe-{uuid.uuid4().hex[:8]}"
    record_platform_event(runtime.db.app, action="test:probe", subject=marker)

    result = run(settings, "audit", "platform", "--limit", "20")

    assert result.returncode == 0, result.stderr
    assert "test:probe" in result.stdout
