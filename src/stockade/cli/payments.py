"""``stockade secrets``, ``webhooks``, ``billing`` and ``receipt``: the payment commands.

``stockade.cli.main`` imports this module at its end and adds these command groups.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import httpx
import typer

from stockade.cli.main import DataDir, _runtime, clear_errors, fail

secrets_app: typer.Typer = typer.Typer(
    no_args_is_help=True, help="Store payment secrets in the key store."
)
webhooks_app: typer.Typer = typer.Typer(
    no_args_is_help=True, help="Hold or restart the processing of stored webhook events."
)
billing_app: typer.Typer = typer.Typer(no_args_is_help=True, help="Run billing jobs by hand.")
receipt_app: typer.Typer = typer.Typer(no_args_is_help=True, help="Check signed receipts.")

_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@secrets_app.command("set")
@clear_errors
def secrets_set(
    name: str,
    stdin: Annotated[
        bool, typer.Option("--stdin", help="Read the value from standard input")
    ] = False,
    overlap_hours: Annotated[
        float,
        typer.Option(
            "--overlap-hours",
            min=0,
            max=168,
            help="Hours in which the previous value still verifies webhooks; 0 retires it at once",
        ),
    ] = 24,
    data_dir: DataDir = None,
) -> None:
    """Store stripe-webhook-secret, stripe-api-key or adyen-hmac-key; again to rotate it."""
    from stockade.audit.trail import record_platform_event
    from stockade.billing.credentials import CredentialError, check_secret, set_payment_secret

    if not stdin:
        raise fail("give the value on standard input with --stdin, never as an argument")
    if sys.stdin.isatty():
        raise fail("--stdin reads the value from standard input; pipe it in")
    value = sys.stdin.readline().strip()
    try:
        check_secret(name, value)
    except CredentialError as exc:
        raise fail(str(exc)) from None
    overlap = timedelta(hours=overlap_hours)
    runtime = _runtime(data_dir)
    try:
        replaced = set_payment_secret(runtime.keystore, name, value, overlap=overlap)
        record_platform_event(
            runtime.db.owner,
            action="secret:rotated" if replaced else "secret:set",
            subject=name,
            data={"overlap_seconds": int(overlap.total_seconds())},
        )
    finally:
        runtime.close()
    if not replaced:
        typer.echo(f"secret {name} stored")
    elif overlap:
        typer.echo(
            f"secret {name} rotated; the previous value verifies for {overlap_hours:g} more hours"
        )
    else:
        typer.echo(f"secret {name} rotated; the previous value no longer verifies")


@webhooks_app.command("pause")
@clear_errors
def webhooks_pause(data_dir: DataDir = None) -> None:
    """Hold the processing of webhook events; deliveries are still verified and stored."""
    _set_paused(data_dir, paused=True)


@webhooks_app.command("resume")
@clear_errors
def webhooks_resume(data_dir: DataDir = None) -> None:
    """Process webhook events again, starting with those stored while paused."""
    _set_paused(data_dir, paused=False)


@billing_app.command("reconcile")
@clear_errors
def billing_reconcile(data_dir: DataDir = None) -> None:
    """Compare every Stripe subscription with the local state once and repair the drift."""
    from stockade.billing.context import BillingContext
    from stockade.billing.reconcile import ReconcileFailed, reconcile
    from stockade.billing.stripe_api import StripeNotConfigured, stripe_client

    runtime = _runtime(data_dir)
    try:
        context = BillingContext.from_runtime(runtime)
        try:
            stripe_client(context.settings, context.keystore)
        except StripeNotConfigured as exc:
            raise fail(str(exc)) from None
        try:
            report = reconcile(context)
        except ReconcileFailed as exc:
            typer.echo(f"stockade: {exc}", err=True)
            raise typer.Exit(code=1) from None
    finally:
        runtime.close()
    for repair in report.repairs:
        typer.echo(f"repaired {repair}")
    typer.echo(report.summary())


@receipt_app.command("verify")
@clear_errors
def receipt_verify(
    file: Annotated[
        Path, typer.Argument(help="The receipt: its JWS, or the JSON the API returned")
    ],
    jwks: Annotated[
        Path | None, typer.Option("--jwks", help="A JWKS file saved from /oauth/jwks")
    ] = None,
    issuer: Annotated[
        str | None,
        typer.Option(help="The issuer's URL; its /oauth/jwks is read and its iss claim required"),
    ] = None,
) -> None:
    """Check a receipt's signature and claims offline; exit 1 if it does not verify."""
    from stockade.billing.receipts import ReceiptInvalid, verify_receipt

    if (jwks is None) == (issuer is None):
        raise fail("give either --jwks FILE or --issuer URL")
    token = _read_receipt(file)
    keys = _read_jwks(jwks) if jwks is not None else _fetch_jwks(issuer or "")
    try:
        claims = verify_receipt(token, keys, issuer=issuer.rstrip("/") if issuer else None)
    except ReceiptInvalid as exc:
        typer.echo(f"stockade: receipt does not verify: {exc}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(
        f"receipt {claims['receipt_id']} is valid: tenant {claims['tenant_id']},"
        f" {claims['amount_paid']} {str(claims['currency']).upper()} (minor units)"
        f" for plan {claims.get('plan') or 'unknown'}, invoice {claims.get('invoice')},"
        f" issued by {claims['iss']}"
    )


def _set_paused(data_dir: Path | None, *, paused: bool) -> None:
    from stockade.audit.trail import record_platform_event
    from stockade.billing import events
    from stockade.billing.worker import requeue_open_events

    runtime = _runtime(data_dir)
    try:
        with runtime.db.owner.begin() as conn:
            changed = events.set_paused(conn, paused)
        if changed:
            record_platform_event(
                runtime.db.owner, action="webhooks:paused" if paused else "webhooks:resumed"
            )
        queued = 0 if paused else requeue_open_events(runtime.db.owner, pending_age=timedelta(0))
    finally:
        runtime.close()
    if paused:
        verb = "paused" if changed else "was already paused"
        typer.echo(f"webhook processing {verb}; deliveries are still verified and stored")
    else:
        verb = "resumed" if changed else "was not paused"
        typer.echo(f"webhook processing {verb}; {queued} stored events queued")


def _read_receipt(path: Path) -> str:
    try:
        content = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise fail(
            f"{path} is not UTF-8 text; give the JWS, or the JSON response that contains it"
        ) from None
    if not content.startswith("{"):
        return content
    try:
        document = json.loads(content)
    except ValueError:
        raise fail(f"{path} is neither a JWS nor JSON") from None
    token = document.get("jws") if isinstance(document, dict) else None
    if not isinstance(token, str):
        raise fail(f"{path} is JSON without a 'jws' string")
    return token


def _read_jwks(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise fail(f"{path} is not a JSON document") from None
    if not isinstance(document, dict):
        raise fail(f"{path} is not a JWKS object")
    return document


def _fetch_jwks(issuer: str) -> dict[str, Any]:
    parts = urlsplit(issuer)
    if parts.scheme != "https" and not (
        parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS
    ):
        raise fail(f"--issuer {issuer!r} must use https, or http on a loopback address")
    url = f"{issuer.rstrip('/')}/oauth/jwks"
    try:
        response = httpx.get(url, timeout=10, follow_redirects=False, trust_env=False)
        response.raise_for_status()
        document = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise fail(f"cannot read {url}: {type(exc).__name__}") from None
    if not isinstance(document, dict):
        raise fail(f"{url} did not return a JWKS object")
    return document
