"""The engines, key store, settings and plans that the billing jobs and routes share."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from stockade.billing.plans import PlanCatalog
from stockade.config import Settings
from stockade.keys import KeyStore
from stockade.runtime import Runtime


@dataclass(frozen=True)
class BillingContext:
    """The worker applies events on ``owner``; the routes use ``app``."""

    owner: Engine
    app: Engine
    keystore: KeyStore
    settings: Settings
    catalog: PlanCatalog

    @classmethod
    def from_runtime(cls, runtime: Runtime) -> BillingContext:
        return cls(
            owner=runtime.db.owner,
            app=runtime.db.app,
            keystore=runtime.keystore,
            settings=runtime.settings,
            catalog=runtime.plans,
        )
