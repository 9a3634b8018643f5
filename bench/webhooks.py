"""Measure Stripe webhook ingestion in events per second, with deduplication, against a baseline.

One run starts the embedded PostgreSQL in a new temporary folder, stores a generated
endpoint secret, seeds ``TENANTS`` tenants, and serves the app with uvicorn on
127.0.0.1. A client in a separate process then posts, with ``--concurrency`` requests
in flight, three kinds of request in alternating rounds:

- **distinct**: a new signed ``customer.subscription.updated`` event each time. The
  server verifies the signature, parses the event, inserts it and defers its job in one
  transaction, and returns 200.
- **duplicate**: the same signed event again and again. The server verifies and parses
  it, finds the event id stored, and returns 200 without deferring anything.
- **baseline**: the same bodies to ``POST /bench/baseline``, a public route this script
  adds, which reads the body and returns 200 with no signature check and no database.

Every request gets its signature in the client just before it is sent. After the load
the script runs the billing worker in process until the queue is empty and reports how
fast the stored events were applied.

Usage: ``make bench`` or ``.venv/bin/python bench/webhooks.py --events 2000``.
When ``STOCKADE_DATABASE_URL`` is set, that server is used instead; point it at a
scratch database, because opening the runtime with a new keyring resets the password
of the application role.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import logging
import os
import platform
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from sqlalchemy import text
from tickets_auth import free_port, positive_int, start_server, stop_embedded_server

from stockade.access.guard import require
from stockade.access.policy import PUBLIC
from stockade.audit.logs import configure_logging
from stockade.billing.context import BillingContext
from stockade.billing.stripe_events import EXPECTED_API_VERSION
from stockade.billing.worker import QUEUE, create_worker_app
from stockade.config import load_settings
from stockade.identity import admin
from stockade.keys import Secret
from stockade.runtime import Runtime, open_runtime
from stockade.web.app import create_app

RESULTS_FILE = Path(__file__).resolve().parent / "results" / "webhooks.md"
WEBHOOK_PATH = "/webhooks/stripe"
BASELINE_PATH = "/bench/baseline"
TENANTS = 20
TARGET_EVENTS_PER_SECOND = 500
KINDS = ("distinct", "duplicate", "baseline")
# Signatures older than five minutes are refused, so one run must end well before.
MAX_RUN_SECONDS = 240


# Load generation (runs in a separate process)


@dataclass(frozen=True)
class LoadPlan:
    base_url: str
    secret: str
    tenant_ids: tuple[str, ...]
    events: int
    rounds: int
    concurrency: int
    warmup: int
    max_seconds: float


def subscription_event(tenant_id: str, number: int) -> dict[str, Any]:
    """Return a ``customer.subscription.updated`` event in the shape Stripe sends."""
    subscription = f"sub_bench{number:08d}"
    created = int(time.time())
    return {
        "id": f"evt_bench{uuid.uuid4().hex}",
        "object": "event",
        "api_version": EXPECTED_API_VERSION,
        "created": created,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": "customer.subscription.updated",
        "data": {
            "object": {
                "id": subscription,
                "object": "subscription",
                "cancel_at_period_end": False,
                "collection_method": "charge_automatically",
                "created": created,
                "currency": "usd",
                "customer": f"cus_bench{number:08d}",
                "items": {
                    "object": "list",
                    "data": [
                        {
                            "id": f"si_bench{number:08d}",
                            "object": "subscription_item",
                            "current_period_end": created + 30 * 86400,
                            "current_period_start": created,
                            "price": {
                                "id": "price_pro",
                                "object": "price",
                                "currency": "usd",
                                "recurring": {"interval": "month", "interval_count": 1},
                                "unit_amount": 4900,
                            },
                            "quantity": 1,
                            "subscription": subscription,
                        }
                    ],
                    "has_more": False,
                    "url": f"/v1/subscription_items?subscription={subscription}",
                },
                "livemode": False,
                "metadata": {"tenant_id": tenant_id},
                "start_date": created,
                "status": "active",
            },
            "previous_attributes": {"status": "incomplete"},
        },
    }


def sign(secret: str, body: bytes) -> str:
    stamp = str(int(time.time()))
    digest = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


class Connection:
    """One keep-alive HTTP/1.1 connection that sends POSTs and reads the responses.

    httpx costs the client process more CPU per request than the server's route does,
    and client and server share two cores, so the load uses this minimal client.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def send_round(
    connections: list[Connection], plan: LoadPlan, kind: str, bodies: list[bytes]
) -> float:
    """Send ``bodies`` over the connections, one request in flight on each; return seconds."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    path = BASELINE_PATH if kind == "baseline" else WEBHOOK_PATH

    async def sender(connection: Connection) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            headers = {
                "Content-Type": "application/json",
                "Stripe-Signature": sign(plan.secret, body),
            }
            status, answer = await connection.post(path, body, headers)
            if status != 200:
                raise RuntimeError(f"{kind}: HTTP {status}: {answer[:200]!r}")

    started = time.perf_counter()
    await asyncio.gather(*(sender(connection) for connection in connections))
    return time.perf_counter() - started


async def drive(plan: LoadPlan) -> dict[str, Any]:
    per_round = max(1, plan.events // plan.rounds)
    counter = iter(range(10**9))

    def distinct(count: int) -> list[bytes]:
        bodies = []
        for _ in range(count):
            number = next(counter)
            tenant = plan.tenant_ids[number % len(plan.tenant_ids)]
            bodies.append(json.dumps(subscription_event(tenant, number)).encode())
        return bodies

    elapsed: dict[str, float] = dict.fromkeys(KINDS, 0.0)
    sent: dict[str, int] = dict.fromkeys(KINDS, 0)
    deadline = time.monotonic() + plan.max_seconds
    stopped_early = False
    port = int(plan.base_url.rsplit(":", 1)[1])
    connections = [await Connection.open("127.0.0.1", port) for _ in range(plan.concurrency)]
    try:
        await send_round(connections, plan, "distinct", distinct(plan.warmup))
        await send_round(connections, plan, "baseline", distinct(plan.warmup))
        for index in range(plan.rounds):
            if time.monotonic() > deadline:
                stopped_early = True
                break
            repeated = json.dumps(subscription_event(plan.tenant_ids[0], next(counter))).encode()
            rounds = {
                "distinct": distinct(per_round),
                "duplicate": [repeated] * per_round,
                "baseline": distinct(per_round),
            }
            order = KINDS if index % 2 == 0 else tuple(reversed(KINDS))
            for kind in order:
                elapsed[kind] += await send_round(connections, plan, kind, rounds[kind])
                sent[kind] += per_round
    finally:
        for connection in connections:
            connection.close()
    return {"elapsed": elapsed, "sent": sent, "stopped_early": stopped_early}


def drive_load(plan: LoadPlan) -> dict[str, Any]:
    return asyncio.run(drive(plan))


# Server side


def add_baseline_route(app: FastAPI) -> None:
    """Add a public route that reads the body and returns 200, with no check and no database."""

    @app.post(BASELINE_PATH, dependencies=[require(PUBLIC)])
    async def baseline(request: Request) -> dict[str, bool]:
        await request.body()
        return {"received": True}


def count_events(runtime: Runtime, started: datetime) -> dict[str, int]:
    with runtime.db.owner.connect() as conn:
        rows = conn.execute(
            text(
                "select status, count(*) from payment_events where received_at >= :since"
                " group by status"
            ),
            {"since": started},
        ).all()
    return {str(status): int(count) for status, count in rows}


def apply_stored(runtime: Runtime) -> float:
    """Run the billing worker until the queue is empty; return the elapsed seconds."""
    context = BillingContext.from_runtime(runtime)
    app = create_worker_app(context, periodic=False)

    async def work() -> None:
        async with app.open_async():
            await app.run_worker_async(
                queues=[QUEUE],
                wait=False,
                listen_notify=False,
                install_signal_handlers=False,
                additional_context={"billing": context},
            )

    started = time.perf_counter()
    asyncio.run(work())
    return time.perf_counter() - started


# Report


def describe_environment(runtime: Runtime) -> list[str]:
    with runtime.db.owner.connect() as conn:
        server_version = conn.execute(text("show server_version")).scalar_one()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"- machine: {platform.system()} {platform.release()}, {cpus} CPUs available,"
        f" Python {platform.python_version()}, PostgreSQL {server_version}",
    ]


def render_report(
    args: argparse.Namespace,
    environment: list[str],
    load: dict[str, Any],
    statuses: dict[str, int],
    apply_seconds: float,
) -> str:
    rates = {
        kind: load["sent"][kind] / load["elapsed"][kind] if load["elapsed"][kind] else 0.0
        for kind in KINDS
    }
    applied = statuses.get("processed", 0) + statuses.get("ignored", 0)
    met = "met" if rates["distinct"] >= TARGET_EVENTS_PER_SECOND else "missed"
    lines = [
        "## `POST /webhooks/stripe`: ingestion with deduplication vs. a plain public route",
        "",
        *environment,
        f"- load: {args.rounds} rounds of {args.events // args.rounds} requests per kind after"
        f" {args.warmup} warm-up requests, {args.concurrency} in flight from a separate"
        " process (one keep-alive HTTP/1.1 connection per request in flight); kinds alternated"
        " each round; request log filtered to warnings",
        "",
        "| kind | requests | seconds | requests per second | ratio to baseline |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    labels = {
        "distinct": "new signed event: verify, parse, insert, defer job",
        "duplicate": "repeated signed event: verify, parse, insert finds it",
        "baseline": "public route, read body, no check, no database",
    }
    for kind in KINDS:
        ratio = rates[kind] / rates["baseline"] if rates["baseline"] else 0.0
        lines.append(
            f"| {labels[kind]} | {load['sent'][kind]} | {load['elapsed'][kind]:.2f} |"
            f" {rates[kind]:.0f} | {ratio:.2f} |"
        )
    if load["stopped_early"]:
        lines.append("")
        lines.append(f"NOTE: stopped at the {args.max_seconds} s limit before all rounds ran.")
    lines += [
        "",
        f"Stored by the run: {sum(statuses.values())} events"
        f" ({', '.join(f'{name} {count}' for name, count in sorted(statuses.items()))}).",
        f"The worker then applied {applied} in {apply_seconds:.2f} s"
        f" ({applied / apply_seconds if apply_seconds else 0:.0f} events per second, one job"
        " at a time).",
        "",
        f"Target (at least {TARGET_EVENTS_PER_SECOND} new events per second): **{met}**"
        f" ({rates['distinct']:.0f} per second).",
        "",
    ]
    return "\n".join(lines)


# Entry point


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--events", type=positive_int, default=3000, help="requests per kind (default 3000)"
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=6, help="rounds the requests are split into"
    )
    parser.add_argument(
        "--concurrency", type=positive_int, default=16, help="requests in flight (default 16)"
    )
    parser.add_argument(
        "--warmup", type=positive_int, default=200, help="warm-up requests (default 200)"
    )
    parser.add_argument(
        "--max-seconds",
        type=positive_int,
        default=180,
        help=f"time limit for the load in seconds (default 180, at most {MAX_RUN_SECONDS})",
    )
    args = parser.parse_args(argv)
    if args.max_seconds > MAX_RUN_SECONDS:
        parser.error(f"--max-seconds must be at most {MAX_RUN_SECONDS}")
    if args.rounds > args.events:
        parser.error("--rounds must not exceed --events")
    return args


def seed(runtime: Runtime) -> tuple[str, ...]:
    return tuple(
        str(admin.create_tenant(runtime.db.owner, f"bench-{uuid.uuid4().hex[:10]}"))
        for _ in range(TENANTS)
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(json=True, level=logging.WARNING)
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="stockade-bench-"))
    settings = load_settings(data_dir=data_dir, issuer=f"http://127.0.0.1:{port}")
    # Generated for this run only and dropped with the temporary folder.
    secret = f"whsec_{secrets.token_urlsafe(24)}"

    print(f"Opening the runtime in {data_dir} ...", file=sys.stderr)
    runtime = open_runtime(settings)
    server = thread = None
    try:
        runtime.keystore.set_secret("stripe-webhook-secret", Secret(secret), overlap=timedelta(0))
        tenant_ids = seed(runtime)
        app = create_app(runtime)
        add_baseline_route(app)
        server, thread = start_server(app, port)
        plan = LoadPlan(
            base_url=f"http://127.0.0.1:{port}",
            secret=secret,
            tenant_ids=tenant_ids,
            events=args.events,
            rounds=args.rounds,
            concurrency=args.concurrency,
            warmup=args.warmup,
            max_seconds=args.max_seconds,
        )
        started = datetime.now(UTC)
        print(f"Posting {args.events} requests per kind ...", file=sys.stderr)
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            load = pool.submit(drive_load, plan).result(timeout=args.max_seconds + 120)
        server.should_exit = True
        thread.join(timeout=10)
        server = thread = None
        print("Applying the stored events ...", file=sys.stderr)
        apply_seconds = apply_stored(runtime)
        statuses = count_events(runtime, started - timedelta(minutes=5))
        report = render_report(args, describe_environment(runtime), load, statuses, apply_seconds)
    finally:
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(timeout=10)
        runtime.close()
        stop_embedded_server(settings)
        shutil.rmtree(data_dir, ignore_errors=True)

    print(report)
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(report, encoding="utf-8")
    print(f"Wrote {RESULTS_FILE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
