"""The ``stockade`` command line. Bad input gets one line on stderr and exit code 2."""

from __future__ import annotations

import enum
import functools
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

try:  # Typer 0.2x vendors Click; older releases use the click package.
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover - depends on the installed Typer
    from click.exceptions import ClickException, NoArgsIsHelpError  # type: ignore[no-redef,assignment]

from stockade.access.policy import PolicyError
from stockade.config import ConfigError, load_settings
from stockade.identity import admin
from stockade.identity.passwords import PasswordRejected
from stockade.keys.local import KeyStoreError
from stockade.runtime import Runtime, open_runtime

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
tenant_app = typer.Typer(no_args_is_help=True, help="Create tenants and set their policies.")
user_app = typer.Typer(no_args_is_help=True, help="Create users and grant them roles.")
client_app = typer.Typer(no_args_is_help=True, help="Register OAuth clients.")
audit_app = typer.Typer(no_args_is_help=True, help="Check the audit trail.")
app.add_typer(tenant_app, name="tenant")
app.add_typer(user_app, name="user")
app.add_typer(client_app, name="client")
app.add_typer(audit_app, name="audit")

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Folder for the database and keys [env STOCKADE_DATA_DIR; default ./.stockade]",
    ),
]
F = TypeVar("F", bound=Callable[..., Any])


class Role(enum.StrEnum):
    """The processes ``serve`` runs: API and gateway, the gateway alone, the worker, or all."""

    ALL = "all"
    API = "api"
    GATEWAY = "gateway"
    WORKER = "worker"


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
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            raise fail(f"{exc.strerror or exc}{where}") from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def _opened(data_dir: Path | None, **options: Any) -> Iterator[Runtime]:
    """Open the runtime for one command and close it afterwards."""
    runtime = _runtime(data_dir, **options)
    try:
        yield runtime
    finally:
        runtime.close()


def _runtime(data_dir: Path | None, *, create: bool = False, **options: Any) -> Runtime:
    """Open the runtime; only ``serve`` and ``demo`` may start a new data folder."""
    from stockade.audit.logs import configure_logging

    configure_logging()
    settings = load_settings(data_dir=data_dir, **options)
    if not create and not settings.keys_dir.is_dir():
        raise fail(
            f"no Stockade data folder at {settings.data_dir.resolve()}; run this command "
            "where 'make run' ran, or give --data-dir or STOCKADE_DATA_DIR"
        )
    return open_runtime(settings, pool_size=2)


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
    role: Annotated[
        Role,
        typer.Option(
            help="all: API, gateway and worker in one process; api: API and gateway;"
            " gateway: only the /v1 model gateway; worker: only the worker"
        ),
    ] = Role.ALL,
    data_dir: DataDir = None,
) -> None:
    """Serve the API, the OpenID Connect provider and the sign-in pages, and run the worker."""
    import os
    import threading

    import uvicorn

    from stockade.knowledge.service import Knowledge
    from stockade.web.app import create_app
    from stockade.worker import Worker

    if role is Role.WORKER:
        runtime = _runtime(data_dir)
        try:
            Worker(runtime).run()
        finally:
            runtime.close()
        return

    shown_host = f"[{host}]" if ":" in host else host
    issuer = None if os.environ.get("STOCKADE_ISSUER") else f"http://{shown_host}:{port}"
    if issuer and host not in ("127.0.0.1", "localhost", "::1"):
        raise fail("set STOCKADE_ISSUER to this server's https URL when serving beyond loopback")
    _check_port_free(host, port)
    runtime = _runtime(data_dir, create=True, issuer=issuer)
    typer.echo(f"Stockade serves on {runtime.settings.issuer}  (data: {runtime.settings.data_dir})")
    knowledge = Knowledge.from_runtime(runtime)
    worker = Worker(runtime, knowledge=knowledge) if role is Role.ALL else None
    if worker is not None:
        threading.Thread(
            target=worker.run, kwargs={"install_signal_handlers": False}, daemon=True
        ).start()
    try:
        uvicorn.run(
            create_app(runtime, knowledge=knowledge, gateway_only=role is Role.GATEWAY),
            host=host,
            port=port,
            log_config=None,
            access_log=False,
        )
    finally:
        if worker is not None:
            worker.stop()
        runtime.close()


@tenant_app.command("create")
@clear_errors
def tenant_create(
    name: str,
    plan: Annotated[str, typer.Option(help="Plan name from the policy file")] = "free",
    data_dir: DataDir = None,
) -> None:
    """Create a tenant on one of the policy file's plans."""
    from stockade.billing.plans import UnknownPlan

    runtime = _runtime(data_dir)
    try:
        runtime.plans.by_name(plan)
        tenant_id = admin.create_tenant(runtime.db.owner, name, plan)
    except UnknownPlan as exc:
        raise fail(str(exc)) from None
    finally:
        runtime.close()
    typer.echo(f"tenant {name} created: {tenant_id}")


@tenant_app.command("require-dpop")
@clear_errors
def tenant_require_dpop(
    name: str,
    off: Annotated[
        bool, typer.Option("--off", help="Accept unbound (Bearer) tokens again")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Require DPoP-bound tokens for every client of a tenant, or stop requiring them."""
    with _opened(data_dir) as runtime:
        admin.set_require_dpop(runtime.db.owner, name, required=not off)
    if off:
        typer.echo(f"tenant {name} accepts Bearer tokens again")
    else:
        typer.echo(f"tenant {name} requires DPoP: unbound tokens stop on their next use")


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
    with _opened(data_dir) as runtime:
        user_id, created = admin.add_user(
            runtime.db.owner,
            runtime.policy,
            email=email,
            tenant=tenant,
            role=role,
            password=password,
        )
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
    with _opened(data_dir) as runtime:
        admin.set_password(runtime.db.owner, email, password)
    typer.echo(f"password of {email.lower()} changed")


@user_app.command("reset-mfa")
@clear_errors
def user_reset_mfa(email: str, data_dir: DataDir = None) -> None:
    """Remove a user's authenticator and recovery codes; they enrol again at sign-in."""
    with _opened(data_dir) as runtime:
        admin.reset_mfa(runtime.db.owner, email)
    typer.echo(f"multi-factor sign-in of {email.lower()} removed; they are signed out everywhere")


@user_app.command("disable")
@clear_errors
def user_disable(email: str, data_dir: DataDir = None) -> None:
    """Disable a user: sign-in, refresh and every issued token stop at once."""
    with _opened(data_dir) as runtime:
        admin.set_disabled(runtime.db.owner, email, disabled=True)
    typer.echo(f"user {email.lower()} disabled; their tokens stop on their next request")


@user_app.command("enable")
@clear_errors
def user_enable(email: str, data_dir: DataDir = None) -> None:
    """Enable a disabled user again; tokens revoked while disabled stay revoked."""
    with _opened(data_dir) as runtime:
        admin.set_disabled(runtime.db.owner, email, disabled=False)
    typer.echo(f"user {email.lower()} enabled")


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
    with _opened(data_dir) as runtime:
        client = admin.create_client(runtime.db.owner, name, redirect_uri, public=public)
    typer.echo(f"client_id: {client.client_id}")
    if client.client_secret:
        typer.echo(f"client_secret: {client.client_secret}")
        typer.echo("The secret is shown only now; Stockade keeps only its hash.")


@audit_app.command("verify")
@clear_errors
def audit_verify(
    tenant: Annotated[
        str | None, typer.Option(help="Tenant name; without it, the platform chain is checked")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Recompute an audit hash chain; list each break and exit 1 if there is one."""
    from stockade.audit.trail import verify_chain, verify_platform_chain

    with _opened(data_dir) as runtime:
        if tenant is None:
            breaks = verify_platform_chain(runtime.db.owner)
        else:
            breaks = verify_chain(
                runtime.db.owner, admin.tenant_id_by_name(runtime.db.owner, tenant)
            )
    chain = f"the audit chain of tenant {tenant}" if tenant else "the platform audit chain"
    if not breaks:
        typer.echo(f"{chain} is intact")
        return
    for found in breaks:
        typer.echo(f"event {found.seq}: {found.reason}")
    typer.echo(f"{chain} is broken in {len(breaks)} place(s)", err=True)
    raise typer.Exit(code=1)


@audit_app.command("platform")
@clear_errors
def audit_platform(
    limit: Annotated[int, typer.Option(help="How many of the newest events", min=1, max=1000)] = 50,
    data_dir: DataDir = None,
) -> None:
    """Print the newest platform events: webhook rejections, pauses, secret rotations."""
    import json

    from stockade.audit.trail import list_platform_events

    with _opened(data_dir) as runtime:
        events = list_platform_events(runtime.db.owner, limit=limit)
    for event in events:
        details = json.dumps(event.data, sort_keys=True)
        typer.echo(f"{event.seq}\t{event.occurred_at.isoformat()}\t{event.action}\t{details}")


@app.command()
@clear_errors
def demo(data_dir: DataDir = None) -> None:
    """Seed the demo tenants, users, client and tickets, once."""
    from stockade.cli.seed import seed_demo

    with _opened(data_dir, create=True) as runtime:
        seed_demo(runtime, typer.echo)


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise fail(
                f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port"
            ) from None


# The payment commands use the helpers above, so they are added last.
from stockade.cli import payments  # noqa: E402

app.add_typer(payments.secrets_app, name="secrets")
app.add_typer(payments.webhooks_app, name="webhooks")
app.add_typer(payments.billing_app, name="billing")
app.add_typer(payments.receipt_app, name="receipt")

from stockade.cli import keys  # noqa: E402

app.add_typer(keys.keys_app, name="keys")

from stockade.cli import gateway  # noqa: E402

app.add_typer(gateway.gateway_app, name="gateway")


def main() -> None:
    """Run the command; usage errors become one line and exit code 2, like every error."""
    try:
        code = app(standalone_mode=False)
    except NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx else "Run 'stockade --help' for usage.")
        sys.exit(2)
    except ClickException as exc:
        typer.echo(f"stockade: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("stockade: aborted", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
