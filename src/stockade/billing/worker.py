"""Background jobs on procrastinate: apply stored events, reconcile, requeue, retry.

Jobs:

- ``apply_payment_event``: deferred by the webhook route in the transaction that stores
  the event, so a stored event always has a job. It applies the event exactly once.
- ``reconcile`` (every ``RECONCILE_CRON``): repairs drift against Stripe's API.
- ``requeue_open_events`` (every minute): defers a job again for events still open, for
  instance after a worker was killed in the middle of one, or while processing was paused.
- ``retry_stalled_jobs`` (every five minutes): puts jobs of a vanished worker back in the
  queue, so that procrastinate's tables do not keep them as running.

The worker also requeues every open event when it starts.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import procrastinate
import structlog
from procrastinate.exceptions import AlreadyEnqueued
from sqlalchemy import Connection, Engine

from stockade.billing import events, processing, reconcile
from stockade.billing.context import BillingContext
from stockade.billing.events import EventKey

log = structlog.get_logger(__name__)

QUEUE = "billing"
APPLY_TASK = "billing.apply_payment_event"
RECONCILE_TASK = "billing.reconcile"
REQUEUE_TASK = "billing.requeue_open_events"
STALLED_TASK = "billing.retry_stalled_jobs"
# Every two minutes, so a change whose webhook is lost reaches the plan within five.
RECONCILE_CRON = "*/2 * * * *"
REQUEUE_CRON = "* * * * *"
STALLED_CRON = "*/5 * * * *"
# An event pending this long has lost its job or waits out a pause.
REQUEUE_AFTER = timedelta(seconds=60)
# Unresolved events (no tenant known yet) are tried again for this long.
UNRESOLVED_WINDOW = timedelta(days=3)
REQUEUE_BATCH = 500

# Defers jobs on a connection the caller passes, inside the caller's transaction; it
# never opens a pool of its own.
_DEFERRER = procrastinate.App(connector=procrastinate.SyncPsycopgConnector())


def defer_apply(conn: Connection, key: EventKey) -> None:
    """Defer the job that applies ``key``, inside ``conn``'s transaction.

    Raises ``AlreadyEnqueued`` if a job for this event is already waiting.
    """
    driver = conn.connection.driver_connection
    deferrer = _DEFERRER.configure_task(
        APPLY_TASK, queue=QUEUE, queueing_lock=_queueing_lock(key), connection=driver
    )
    deferrer.defer(provider=key.provider, event_id=key.event_id)


def requeue(owner: Engine, keys: list[EventKey]) -> int:
    """Defer a job for each event that has none waiting; return how many were deferred."""
    deferred = 0
    with owner.begin() as conn:
        for key in keys:
            savepoint = conn.begin_nested()
            try:
                defer_apply(conn, key)
            except AlreadyEnqueued:
                savepoint.rollback()
                continue
            events.count_requeue(conn, key)
            savepoint.commit()
            deferred += 1
    return deferred


def requeue_open_events(owner: Engine, *, pending_age: timedelta = REQUEUE_AFTER) -> int:
    """Defer jobs for events still open after ``pending_age``; return how many."""
    with owner.connect() as conn:
        keys = events.open_events(
            conn,
            pending_age=pending_age,
            unresolved_window=UNRESOLVED_WINDOW,
            limit=REQUEUE_BATCH,
        )
    deferred = requeue(owner, keys) if keys else 0
    if deferred:
        log.info("payment_events_requeued", count=deferred)
    return deferred


def create_worker_app(
    context: BillingContext, *, pool_size: int = 4, periodic: bool = True
) -> procrastinate.App:
    """Build a procrastinate app that runs the billing jobs on the application role.

    Without ``periodic``, only deferred jobs run (the tests drain the queue this way).
    """
    connector = procrastinate.PsycopgConnector(
        conninfo="",
        kwargs=connection_parameters(context.app, application_name="stockade-worker"),
        min_size=1,
        max_size=pool_size,
    )
    app = procrastinate.App(connector=connector)
    retry = procrastinate.RetryStrategy(max_attempts=5, exponential_wait=2)
    app.task(name=APPLY_TASK, queue=QUEUE, pass_context=True, retry=retry)(_apply_job)
    reconcile_task = app.task(
        name=RECONCILE_TASK, queue=QUEUE, pass_context=True, queueing_lock=RECONCILE_TASK
    )(_reconcile_job)
    requeue_task = app.task(
        name=REQUEUE_TASK, queue=QUEUE, pass_context=True, queueing_lock=REQUEUE_TASK
    )(_requeue_job)
    stalled_task = app.task(
        name=STALLED_TASK, queue=QUEUE, pass_context=True, queueing_lock=STALLED_TASK
    )(_retry_stalled_job)
    if periodic:
        app.periodic(cron=RECONCILE_CRON, periodic_id="reconcile")(reconcile_task)
        app.periodic(cron=REQUEUE_CRON, periodic_id="requeue")(requeue_task)
        app.periodic(cron=STALLED_CRON, periodic_id="stalled")(stalled_task)
    return app


def connection_parameters(engine: Engine, **extra: str) -> dict[str, Any]:
    """Return psycopg connection parameters for the role and database of ``engine``."""
    url = engine.url
    parameters: dict[str, Any] = {
        "host": url.query.get("host") or url.host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "dbname": url.database,
        **extra,
    }
    return {key: value for key, value in parameters.items() if value is not None}


# The jobs. procrastinate runs the synchronous ones in a thread.


def _billing(job_context: procrastinate.JobContext) -> BillingContext:
    context: BillingContext = job_context.additional_context["billing"]
    return context


def _apply_job(job_context: procrastinate.JobContext, provider: str, event_id: str) -> None:
    processing.apply_event(_billing(job_context), EventKey(provider, event_id))


def _reconcile_job(job_context: procrastinate.JobContext, timestamp: int) -> None:
    reconcile.reconcile(_billing(job_context))


def _requeue_job(job_context: procrastinate.JobContext, timestamp: int) -> None:
    requeue_open_events(_billing(job_context).owner)


async def _retry_stalled_job(job_context: procrastinate.JobContext, timestamp: int) -> None:
    manager = job_context.app.job_manager
    for job in await manager.get_stalled_jobs():
        log.warning("billing_job_stalled", job_id=job.id, task=job.task_name)
        await manager.retry_job(job)


def _queueing_lock(key: EventKey) -> str:
    return f"payment-event:{key.provider}:{key.event_id}"
