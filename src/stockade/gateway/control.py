"""Operator switches: the forced outage fallback and each tenant's gateway settings.

Both are written as the owner role by the command line. Every gateway process reads
them in the transaction that admits a call, so a change applies to the next call of
every process at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, text

from stockade.audit.trail import record_event, record_platform_event
from stockade.db import Scope, scoped_transaction
from stockade.gateway.config import GatewayConfig


class SettingsError(ValueError):
    """A tenant setting names an unknown model or an impossible sampling rate."""


@dataclass(frozen=True)
class OutageSwitch:
    forced: bool
    changed_at: datetime


@dataclass(frozen=True)
class TenantSettings:
    allowed_models: tuple[str, ...] | None
    sample_consent: bool
    sample_percent: int


def outage_status(owner: Engine) -> OutageSwitch:
    with owner.connect() as conn:
        forced, changed_at = conn.execute(
            text("select outage_forced, changed_at from gateway_control")
        ).one()
    return OutageSwitch(bool(forced), changed_at)


def set_outage(owner: Engine, *, forced: bool) -> OutageSwitch:
    """Force the outage fallback on or off for every gateway process, and audit it."""
    with owner.begin() as conn:
        forced_now, changed_at = conn.execute(
            text(
                "update gateway_control set outage_forced = :forced, changed_at = now()"
                " returning outage_forced, changed_at"
            ),
            {"forced": forced},
        ).one()
    record_platform_event(
        owner, action="gateway:outage-forced" if forced else "gateway:outage-cleared"
    )
    return OutageSwitch(bool(forced_now), changed_at)


def read_settings(owner: Engine, tenant_id: uuid.UUID) -> TenantSettings:
    with scoped_transaction(owner, Scope(tenant_id=tenant_id)) as conn:
        row = conn.execute(
            text(
                "select allowed_models, sample_consent, sample_percent"
                " from gateway_tenant_settings where tenant_id = :tenant"
            ),
            {"tenant": tenant_id},
        ).first()
    if row is None:
        return TenantSettings(None, False, 0)
    allowed = tuple(row[0]) if row[0] is not None else None
    return TenantSettings(allowed, bool(row[1]), int(row[2]))


def set_settings(
    owner: Engine,
    config: GatewayConfig,
    tenant_id: uuid.UUID,
    *,
    allowed_models: Sequence[str] | None,
    sample_consent: bool,
    sample_percent: int,
) -> TenantSettings:
    """Store a tenant's model allow-list (None: the gateway file's default) and sampling.

    Sampling needs the tenant's consent; a rate without it samples nothing. The change
    is a ``gateway:settings-changed`` audit event in the tenant's trail.
    """
    if allowed_models is not None:
        unknown = sorted(set(allowed_models) - set(config.public_names()))
        if unknown:
            raise SettingsError(
                f"unknown models {unknown}; the gateway offers {config.public_names()}"
            )
    if not 0 <= sample_percent <= 100:
        raise SettingsError(
            f"the sampling rate is a percentage from 0 to 100, not {sample_percent}"
        )
    models = sorted(set(allowed_models)) if allowed_models is not None else None
    with scoped_transaction(owner, Scope(tenant_id=tenant_id)) as conn:
        conn.execute(
            text(
                "insert into gateway_tenant_settings"
                " (tenant_id, allowed_models, sample_consent, sample_percent)"
                " values (:tenant, :models, :consent, :percent)"
                " on conflict (tenant_id) do update set allowed_models = excluded.allowed_models,"
                " sample_consent = excluded.sample_consent,"
                " sample_percent = excluded.sample_percent, updated_at = now()"
            ),
            {
                "tenant": tenant_id,
                "models": models,
                "consent": sample_consent,
                "percent": sample_percent,
            },
        )
        record_event(
            conn,
            tenant_id=tenant_id,
            action="gateway:settings-changed",
            data={
                "allowed_models": models,
                "sample_consent": sample_consent,
                "sample_percent": sample_percent,
            },
        )
    return TenantSettings(
        tuple(models) if models is not None else None, sample_consent, sample_percent
    )
