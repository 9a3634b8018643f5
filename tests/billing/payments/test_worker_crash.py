"""A worker killed between storing and applying an event loses nothing and applies it once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import text

from stockade.config import Settings
from stockade.runtime import Runtime
from tests.billing.payments.conftest import (
    UNREACHABLE_STRIPE,
    Subscriber,
    audit_actions,
    event_status,
    plan_of,
    post_stripe,
)
from tests.billing.payments.events import stripe_event

STOCKADE = str(Path(sys.executable).with_name("stockade"))
WAIT_SECONDS = 60

_BLOCKED_ON_EVENT = text(
    "select count(*) from pg_stat_activity where wait_event_type = 'Lock'"
    " and query like '%from payment_events%for update%'"
)


def _blocked_on_event(runtime: Runtime) -> bool:
    # A new transaction each time: pg_stat_activity is a snapshot per transaction.
    with runtime.db.owner.connect() as probe:
        return bool(probe.execute(_BLOCKED_ON_EVENT).scalar_one() > 0)


def _start_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as output:
        return subprocess.Popen(  # noqa: S603 - our own entry point with fixed arguments
            [STOCKADE, "serve", "--role", "worker", "--data-dir", str(settings.data_dir)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "STOCKADE_STRIPE_API_BASE": UNREACHABLE_STRIPE},
        )


def _wait_until(check: Callable[[], bool], what: str, log: Path) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {WAIT_SECONDS} s; worker log:\n{log.read_text()}")
        time.sleep(0.1)


def test_killed_worker_applies_once_after_restart(
    client: TestClient,
    runtime: Runtime,
    settings: Settings,
    webhook_secret: str,
    subscriber: Subscriber,
    drain: Callable[[], None],
    tmp_path: Path,
) -> None:
    drain()  # start from an empty queue, so the worker reaches this event at once
    event = stripe_event(
        "customer.subscription.created",
        tenant_id=subscriber.tenant_id,
        customer=subscriber.customer,
        subscription=subscriber.subscription,
    )
    assert post_stripe(client, event, webhook_secret).status_code == 200
    log = tmp_path / "worker.log"

    # Hold the event's row, so the worker's apply transaction waits in the middle.
    holder = runtime.db.owner.connect()
    transaction = holder.begin()
    holder.execute(
        text("select 1 from payment_events where event_id = :e for update"), {"e": event["id"]}
    )
    worker = _start_worker(settings, log)
    try:
        _wait_until(lambda: _blocked_on_event(runtime), "the worker did not reach the event", log)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=30)
        transaction.rollback()
        holder.close()

    assert event_status(runtime, str(event["id"]))[0] == "pending"
    assert plan_of(runtime, subscriber.tenant_id) == "free"

    restarted = _start_worker(settings, log)
    try:
        _wait_until(
            lambda: event_status(runtime, str(event["id"]))[0] == "processed",
            "the restarted worker did not apply the event",
            log,
        )
    finally:
        restarted.send_signal(signal.SIGTERM)
        try:
            restarted.wait(timeout=30)
        except subprocess.TimeoutExpired:
            restarted.kill()
            restarted.wait(timeout=30)

    assert plan_of(runtime, subscriber.tenant_id) == "pro"
    assert audit_actions(runtime, subscriber.tenant_id).count("plan:changed") == 1
