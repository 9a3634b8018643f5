"""The ``stockade`` command line. Bad input gets one line on stderr and exit code 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from stockade.access.policy import PolicyError
from stockade.config import ConfigError, load_settings
from stockade.identity import admin
from stockade.identity.passwords import PasswordRejected
from stockade.keys.local import KeyStoreError
from stockade.runtime import Runtime, open_runtime

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
tenant_app = typer.Typer(no_args_is_help=True, help="Create tenants.")
user_app = typer.Typer(no_args_is_help=True, help="Create users and grant them roles.")
client_app = typer.Typer(no_args_is_help=True, help="Register OAuth clients.")
app.add_typer(tenant_app, name="tenant")
app.add_typer(user_app, name="user")
app.add_typer(client_app, name="client")

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Folder for the database and keys [env STOCKADE_DATA_DIR; default ./.stockade]",
    ),
]
F = TypeVar("F", bound=Callable[..., Any])
_EXPECTED = (admin.AdminError, ConfigError, PolicyError, PasswordRejected, KeyStoreError)


def fail(message: str) -> typer.Exit:
    typer.echo(f"stockade: error: {message}", err=True)
    return typer.Exit(code=2)


def clear_errors(command: F) -> F:
    """Turn the errors an operator can fix into one line and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except _EXPECTED as exc:
            raise fail(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def _runtime(data_dir: Path | None, **options: Any) -> Runtime:
    from stockade.audit.logs import configure_logging

    configure_logging()
    return open_runtime(load_settings(data_dir=data_dir, **options), pool_size=2)


def _read_password() -> str:
    if sys.stdin.isatty():
        raise fail("--password-stdin reads the password from standard input; pipe it in")
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise fail("no password on standard input")
    return password


@app.command()
@clear_errors
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port to listen on", min=1, max=65535)] = 8000,
    data_dir: DataDir = None,
) -> None:
    """Serve the API, the OpenID Connect provider and the sign-in pages."""
    import os

    import uvicorn

    from stockade.web.app import create_app

    shown_host = f"[{host}]" if ":" in host else host
    issuer = None if os.environ.get("STOCKADE_ISSUER") else f"http://{shown_host}:{port}"
    if issuer and host not in ("127.0.0.1", "localhost", "::1"):
        raise fail("set STOCKADE_ISSUER to this server's https URL when serving beyond loopback")
    runtime = _runtime(data_dir, issuer=issuer)
    typer.echo(f"Stockade serves on {runtime.settings.issuer}  (data: {runtime.settings.data_dir})")
    try:
        uvicorn.run(create_app(runtime), host=host, port=port, log_config=None, access_log=False)
    finally:
        runtime.close()


@tenant_app.command("create")
@clear_errors
def tenant_create(
    name: str,
    plan: Annotated[str, typer.Option(help="Plan name")] = "free",
    data_dir: DataDir = None,
) -> None:
    """Create a tenant."""
    runtime = _runtime(data_dir)
    try:
        tenant_id = admin.create_tenant(runtime.db.owner, name, plan)
    finally:
        runtime.close()
    typer.echo(f"tenant {name} created: {tenant_id}")


@user_app.command("create")
@clear_errors
def user_create(
    email: str,
    tenant: Annotated[str, typer.Option(help="Tenant name")],
    role: Annotated[str, typer.Option(help="Role to grant in that tenant")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Create a user with a role in a tenant; run again to add tenants or roles."""
    password = _read_password() if password_stdin else None
    runtime = _runtime(data_dir)
    try:
        user_id, created = admin.add_user(
            runtime.db.owner,
            runtime.policy,
            email=email,
            tenant=tenant,
            role=role,
            password=password,
        )
    finally:
        runtime.close()
    verb = "created" if created else "updated"
    typer.echo(f"user {email.lower()} {verb} ({user_id}); role {role} in tenant {tenant}")


@user_app.command("set-password")
@clear_errors
def user_set_password(
    email: str,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Change a user's password; the last five passwords cannot be reused."""
    if not password_stdin:
        raise fail("give the new password on standard input with --password-stdin")
    password = _read_password()
    runtime = _runtime(data_dir)
    try:
        admin.set_password(runtime.db.owner, email, password)
    finally:
        runtime.close()
    typer.echo(f"password of {email.lower()} changed")


@client_app.command("create")
@clear_errors
def client_create(
    name: str,
    redirect_uri: Annotated[
        list[str], typer.Option("--redirect-uri", help="Exact redirect URI; repeat for more")
    ],
    public: Annotated[
        bool, typer.Option("--public", help="A public client (SPA, native app) with no secret")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Register an OAuth client; a confidential client's secret is printed once."""
    runtime = _runtime(data_dir)
    try:
        client = admin.create_client(runtime.db.owner, name, redirect_uri, public=public)
    finally:
        runtime.close()
    typer.echo(f"client_id: {client.client_id}")
    if client.client_secret:
        typer.echo(f"client_secret: {client.client_secret}")
        typer.echo("The secret is shown only now; Stockade keeps only its hash.")


@app.command()
@clear_errors
def demo(data_dir: DataDir = None) -> None:
    """Seed the demo tenants, users, client and tickets, once."""
    from stockade.cli.seed import seed_demo

    runtime = _runtime(data_dir)
    try:
        seed_demo(runtime, typer.echo)
    finally:
        runtime.close()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
