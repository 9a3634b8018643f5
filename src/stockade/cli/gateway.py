"""``stockade gateway``: the outage drill switch, tenant model settings, upstream keys.

``stockade.cli.main`` imports this module at its end and adds the command group.
"""

from __future__ import annotations

import enum
import sys
from datetime import timedelta
from typing import Annotated

import typer

from stockade.cli.main import DataDir, _opened, clear_errors, fail

gateway_app: typer.Typer = typer.Typer(
    no_args_is_help=True,
    help="Force the outage fallback, set tenants' models and sampling, store upstream keys.",
)


class Switch(enum.StrEnum):
    ON = "on"
    OFF = "off"


@gateway_app.command("outage")
@clear_errors
def gateway_outage(
    state: Annotated[
        Switch, typer.Argument(help="on: serve only cached answers; off: call the providers again")
    ],
    data_dir: DataDir = None,
) -> None:
    """Force every gateway process to answer from its cache, as in a provider outage."""
    from stockade.gateway.control import set_outage

    with _opened(data_dir) as runtime:
        set_outage(runtime.db.owner, forced=state is Switch.ON)
    if state is Switch.ON:
        typer.echo(
            "outage fallback forced: calls are answered from each tenant's cache, or get 503"
        )
    else:
        typer.echo("outage fallback cleared: calls go to the providers again")


@gateway_app.command("status")
@clear_errors
def gateway_status(data_dir: DataDir = None) -> None:
    """Print whether the outage fallback is forced, and the models the gateway offers."""
    from stockade.gateway.config import load_gateway_config
    from stockade.gateway.control import outage_status

    with _opened(data_dir) as runtime:
        switch = outage_status(runtime.db.owner)
        config = load_gateway_config(runtime.settings.gateway_file)
    state = "forced on" if switch.forced else "off"
    typer.echo(f"outage fallback: {state} (since {switch.changed_at.isoformat()})")
    for name in config.public_names():
        alias = config.aliases.get(name)
        if alias is not None:
            retrieval = ", with retrieval" if alias.retrieve else ""
            typer.echo(f"model {name}: alias of {alias.model}{retrieval}")
            continue
        model = config.models[name]
        route = " -> ".join(f"{hop.upstream}:{hop.model}" for hop in model.route)
        typer.echo(f"model {name} ({model.kind}): {route}")


@gateway_app.command("tenant")
@clear_errors
def gateway_tenant(
    name: Annotated[str, typer.Argument(help="Tenant name")],
    allow_model: Annotated[
        list[str] | None,
        typer.Option("--allow-model", help="A model or alias the tenant may call; repeat for more"),
    ] = None,
    all_models: Annotated[
        bool, typer.Option("--all-models", help="Use the gateway file's default model list")
    ] = False,
    sampling: Annotated[
        bool | None,
        typer.Option(
            "--sampling/--no-sampling",
            help="Record that the tenant consented to sampling of prompts and outputs, or not",
        ),
    ] = None,
    sample_percent: Annotated[
        int | None,
        typer.Option("--sample-percent", min=0, max=100, help="Share of calls sampled, in %"),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Show a tenant's gateway settings, or change the options given."""
    from stockade.gateway.config import load_gateway_config
    from stockade.gateway.control import SettingsError, read_settings, set_settings
    from stockade.identity import admin

    if allow_model and all_models:
        raise fail("give --allow-model or --all-models, not both")
    with _opened(data_dir) as runtime:
        tenant_id = admin.tenant_id_by_name(runtime.db.owner, name)
        current = read_settings(runtime.db.owner, tenant_id)
        changing = allow_model or all_models or sampling is not None or sample_percent is not None
        if changing:
            models = current.allowed_models
            if allow_model:
                models = tuple(allow_model)
            elif all_models:
                models = None
            try:
                current = set_settings(
                    runtime.db.owner,
                    load_gateway_config(runtime.settings.gateway_file),
                    tenant_id,
                    allowed_models=models,
                    sample_consent=current.sample_consent if sampling is None else sampling,
                    sample_percent=(
                        current.sample_percent if sample_percent is None else sample_percent
                    ),
                )
            except SettingsError as exc:
                raise fail(str(exc)) from None
    models_text = ", ".join(current.allowed_models) if current.allowed_models else None
    typer.echo(f"tenant {name}: models {models_text or 'the gateway default'}")
    consent = "consented" if current.sample_consent else "not consented"
    typer.echo(f"tenant {name}: sampling {consent}, {current.sample_percent}% of calls")


@gateway_app.command("key")
@clear_errors
def gateway_key(
    secret_name: Annotated[
        str, typer.Argument(help="Key store name that a gateway upstream's api_key_secret names")
    ],
    stdin: Annotated[
        bool, typer.Option("--stdin", help="Read the key from standard input")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Store an upstream provider's API key in the key store; again to replace it."""
    import re

    from stockade.audit.trail import record_platform_event
    from stockade.keys import Secret

    if not re.fullmatch(r"gateway-[a-z0-9-]{1,56}", secret_name):
        raise fail(f"{secret_name!r} is not a gateway key name such as 'gateway-openai'")
    if not stdin:
        raise fail("give the key on standard input with --stdin, never as an argument")
    if sys.stdin.isatty():
        raise fail("--stdin reads the key from standard input; pipe it in")
    value = sys.stdin.readline().strip()
    if not value:
        raise fail("no key on standard input")
    with _opened(data_dir) as runtime:
        replaced = runtime.keystore.get_secret(secret_name) is not None
        runtime.keystore.set_secret(secret_name, Secret(value), overlap=timedelta(0))
        record_platform_event(
            runtime.db.owner,
            action="secret:rotated" if replaced else "secret:set",
            subject=secret_name,
        )
    typer.echo(f"key {secret_name} {'replaced' if replaced else 'stored'}")
