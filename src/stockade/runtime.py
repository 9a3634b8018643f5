"""Open what every Stockade process needs: settings, key store, database, policy, plans."""

from __future__ import annotations

from dataclasses import dataclass

from stockade.access.policy import Policy, load_policy, publish_policy
from stockade.billing.plans import PlanCatalog, load_plans
from stockade.config import Settings
from stockade.db import Database, open_database
from stockade.keys import LocalKeyStore


@dataclass
class Runtime:
    settings: Settings
    keystore: LocalKeyStore
    db: Database
    policy: Policy
    plans: PlanCatalog

    def close(self) -> None:
        self.db.dispose()


def open_runtime(settings: Settings, *, pool_size: int = 10) -> Runtime:
    policy = load_policy(settings.policy_file)
    plans = load_plans(settings.policy_file)
    keystore = LocalKeyStore(settings.keys_dir)
    db = open_database(settings, keystore, pool_size=pool_size)
    publish_policy(db.owner, policy)
    return Runtime(settings=settings, keystore=keystore, db=db, policy=policy, plans=plans)
