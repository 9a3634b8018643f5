"""The background worker: one procrastinate worker for the billing and knowledge queues."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import procrastinate
import structlog

from stockade.billing import worker as billing
from stockade.billing.context import BillingContext
from stockade.knowledge import jobs as knowledge_jobs
from stockade.knowledge.service import Knowledge
from stockade.runtime import Runtime

log = structlog.get_logger(__name__)

QUEUES = [billing.QUEUE, knowledge_jobs.QUEUE]


def create_app(
    billing_context: BillingContext, *, pool_size: int = 4, periodic: bool = True
) -> procrastinate.App:
    app = billing.create_worker_app(billing_context, pool_size=pool_size, periodic=periodic)
    knowledge_jobs.register(app)
    return app


class Worker:
    """Run the jobs until ``stop`` is called or the process gets SIGINT or SIGTERM."""

    def __init__(
        self, runtime: Runtime, *, knowledge: Knowledge | None = None, concurrency: int = 1
    ) -> None:
        self.billing = BillingContext.from_runtime(runtime)
        self.knowledge = knowledge or Knowledge.from_runtime(runtime)
        self.concurrency = concurrency
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def run(self, *, install_signal_handlers: bool = True) -> None:
        """Requeue open payment events, then work until stopped. Blocks."""
        billing.requeue_open_events(self.billing.owner, pending_age=timedelta(0))
        log.info("worker_started", queues=QUEUES, concurrency=self.concurrency)
        try:
            asyncio.run(self._work(install_signal_handlers))
        finally:
            log.info("worker_stopped")

    def drain(self) -> None:
        """Run the jobs waiting now, then return (tests and one-off runs)."""
        asyncio.run(self._work(False, wait=False))

    def stop(self) -> None:
        """Ask the worker to finish its current jobs and return; callable from any thread."""
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            loop.call_soon_threadsafe(task.cancel)

    async def _work(self, install_signal_handlers: bool, *, wait: bool = True) -> None:
        app = create_app(self.billing, periodic=wait)
        async with app.open_async():
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.create_task(
                app.run_worker_async(
                    queues=QUEUES,
                    concurrency=self.concurrency,
                    wait=wait,
                    listen_notify=wait,
                    additional_context={"billing": self.billing, "knowledge": self.knowledge},
                    install_signal_handlers=install_signal_handlers,
                )
            )
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
