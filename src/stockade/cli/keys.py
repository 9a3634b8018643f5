"""``stockade keys``: rotate the wrapping key of envelope encryption.

``stockade.cli.main`` imports this module at its end and adds the command group.
"""

from __future__ import annotations

import typer

from stockade.cli.main import DataDir, _runtime, clear_errors, fail

keys_app: typer.Typer = typer.Typer(
    no_args_is_help=True, help="Rotate the keys that protect tenants' data keys."
)


@keys_app.command("rotate")
@clear_errors
def keys_rotate(data_dir: DataDir = None) -> None:
    """Make a new wrapping key and re-wrap every tenant's data key under it.

    Sealed documents and chunks are not re-encrypted: only the data keys change wrapping.
    The key this rotation replaces stays in the key store until the next rotation,
    because another process may still wrap a new tenant's key with it from its cached
    keyring. Older keys that no data key names are deleted.
    """
    from stockade.audit.trail import record_platform_event
    from stockade.keys.envelope import rewrap_data_keys, wrapping_keys_in_use

    runtime = _runtime(data_dir)
    try:
        keystore = runtime.keystore
        previous = keystore.current_wrapping_key_id()
        new_key = keystore.rotate_wrapping_key()
        rewrapped = rewrap_data_keys(runtime.db.owner, keystore)
        keep = wrapping_keys_in_use(runtime.db.owner) | {previous}
        retired = keystore.retire_wrapping_keys(keep=keep)
        record_platform_event(
            runtime.db.owner,
            action="keys:wrapping-rotated",
            subject=new_key,
            data={
                "rewrapped": rewrapped.count,
                "failed": len(rewrapped.failed),
                "retired": retired,
            },
        )
    finally:
        runtime.close()
    typer.echo(
        f"wrapping key {new_key} is current; {rewrapped.count} data keys re-wrapped,"
        f" {retired} old wrapping keys retired"
    )
    if rewrapped.failed:
        tenants = ", ".join(str(tenant) for tenant in rewrapped.failed)
        raise fail(
            f"{len(rewrapped.failed)} data keys did not unwrap and keep their old wrapping"
            f" (tenants {tenants}); restore their rows from a backup"
        )
