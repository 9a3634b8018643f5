"""Measure usage reservations per second on one tenant, against plain ledger inserts.

One run opens the runtime (embedded PostgreSQL in a new temporary folder), seeds one
tenant on the ``enterprise`` plan and times four workloads, in process, with no HTTP:

- **baseline**: one ``scoped_transaction`` on the application role that inserts one
  ``usage_ledger`` row, the cheapest way to write usage for a tenant.
- **reserve + settle**: ``ledger.reserve`` with a fixed limit, then ``ledger.settle``,
  each in its own transaction, as two committed round trips per pair.
- **plan reserve + settle**: ``entitlements.reserve_within_plan``, which also reads the
  tenant's plan, then ``ledger.settle``: what the gateway does for each metered kind.
- **plan reserve alone**: ``reserve_within_plan`` only, the figure that the target of
  2,000 reservations a second names. Its reservations are settled after each timed run,
  outside the timing.

Each workload runs at each concurrency (threads, each with its own pooled connection,
all on the same tenant, so they contend for one counter row). Rounds alternate the
order of the workloads, so noise on the machine hits them alike; a cell's figure is the
median over its rounds. After each round the script checks that the counters match the
ledger and that nothing stays reserved.

The reservations use the token meter (``llm_tokens``, a month window) and reserve 100
tokens and settle 80, so the enterprise limit of 500,000,000 tokens a month is never
reached. The calls meter runs the same statements with a day window.

Usage: ``make bench`` or ``.venv/bin/python bench/reservations.py --seconds 3``.
When ``STOCKADE_DATABASE_URL`` is set, that server is used instead of the embedded
one. Point it at a scratch database, because opening the runtime with a new keyring
resets the password of the application role. The bench deletes the tenant it seeded.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text
from tickets_auth import git_commit, positive_int, stop_embedded_server

from stockade.audit.logs import configure_logging
from stockade.billing.entitlements import LLM_TOKENS, reserve_within_plan
from stockade.billing.ledger import Reservation, Window, reserve, settle
from stockade.billing.plans import set_plan
from stockade.config import Settings, load_settings
from stockade.db import Scope, scoped_transaction
from stockade.identity import admin
from stockade.runtime import Runtime, open_runtime

RESULTS_FILE = Path(__file__).resolve().parent / "results" / "reservations.md"
RESERVED = 100
ACTUAL = 80
# The throughput target, in reservations (reserve_within_plan calls) per second on one
# tenant. The report also gives reserve + settle pairs per second against it.
TARGET_RESERVATIONS_PER_SECOND = 2000
_INSERT_LEDGER = text(
    "insert into usage_ledger (tenant_id, kind, quantity, data)"
    " values (:tenant, 'llm_tokens', :quantity, cast(:data as jsonb))"
)

Operation = Callable[[], None]


@dataclass(frozen=True)
class Workload:
    name: str
    label: str
    operation: Operation
    # Transactions that one operation commits.
    transactions: int
    # Runs after each timed sample and before the counters are checked, untimed.
    cleanup: Callable[[], None] | None = None


@dataclass(frozen=True)
class Sample:
    """One run of one workload: operations done, wall time, and CPU seconds used."""

    operations: int
    seconds: float
    client_cpu: float
    # None when the server's processes cannot be read (not Linux, or not embedded).
    server_cpu: float | None

    @property
    def rate(self) -> float:
        return self.operations / self.seconds


@dataclass(frozen=True)
class Cell:
    workload: str
    threads: int
    samples: tuple[Sample, ...]

    @property
    def rates(self) -> list[float]:
        return [sample.rate for sample in self.samples]

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    def client_cpu_us(self) -> float:
        """Return the bench process's CPU time per operation in µs, over all samples."""
        operations = sum(sample.operations for sample in self.samples)
        return sum(sample.client_cpu for sample in self.samples) / operations * 1e6

    def server_cpu_us(self) -> float | None:
        """Return PostgreSQL's CPU time per operation in µs, or None when unknown."""
        if any(sample.server_cpu is None for sample in self.samples):
            return None
        operations = sum(sample.operations for sample in self.samples)
        return sum(sample.server_cpu or 0.0 for sample in self.samples) / operations * 1e6


def build_workloads(runtime: Runtime, tenant_id: uuid.UUID) -> list[Workload]:
    engine = runtime.db.app
    scope = Scope(tenant_id=tenant_id)

    def insert_ledger() -> None:
        with scoped_transaction(engine, scope) as conn:
            conn.execute(_INSERT_LEDGER, {"tenant": tenant_id, "quantity": ACTUAL, "data": "{}"})

    def reserve_settle() -> None:
        reservation = reserve(
            engine, tenant_id, "llm_tokens", RESERVED, limit=10**12, window=Window.MONTH
        )
        settle(engine, reservation, ACTUAL)

    def plan_reserve_settle() -> None:
        reservation = reserve_within_plan(engine, runtime.plans, tenant_id, LLM_TOKENS, RESERVED)
        settle(engine, reservation, ACTUAL)

    # Reservations of the reserve-only workload, settled after each timed sample so the
    # counters still match the ledger. list.append is atomic under the GIL.
    open_reservations: list[Reservation] = []

    def plan_reserve() -> None:
        reservation = reserve_within_plan(engine, runtime.plans, tenant_id, LLM_TOKENS, RESERVED)
        open_reservations.append(reservation)

    def settle_open_reservations() -> None:
        # Bounded: one settle per reservation of the sample that just ended.
        for reservation in open_reservations:
            settle(engine, reservation, ACTUAL)
        open_reservations.clear()

    return [
        Workload("baseline", "baseline: one ledger insert per transaction", insert_ledger, 1),
        Workload("reserve", "`reserve` + `settle` (fixed limit)", reserve_settle, 2),
        Workload(
            "plan", "`reserve_within_plan` + `settle` (reads the plan)", plan_reserve_settle, 2
        ),
        Workload(
            "plan-reserve",
            "`reserve_within_plan` alone (settled after the timed run)",
            plan_reserve,
            1,
            cleanup=settle_open_reservations,
        ),
    ]


def run_for(
    operation: Operation, threads: int, seconds: float, server_cpu: Callable[[], float | None]
) -> Sample:
    """Run ``operation`` in a loop on ``threads`` threads for ``seconds``."""
    start = threading.Barrier(threads + 1, timeout=60)
    deadline: list[float] = []

    def worker() -> int:
        start.wait()
        done = 0
        while time.monotonic() < deadline[0]:
            operation()
            done += 1
        return done

    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(worker) for _ in range(threads)]
        deadline.append(time.monotonic() + seconds)
        server_before = server_cpu()
        client_before = time.process_time()
        began = time.perf_counter()
        start.wait()
        counts = [future.result(timeout=seconds + 120) for future in futures]
        elapsed = time.perf_counter() - began
        client = time.process_time() - client_before
        server_after = server_cpu()
    server = None
    if server_before is not None and server_after is not None:
        server = server_after - server_before
    return Sample(sum(counts), elapsed, client, server)


def postgres_cpu_reader(settings: Settings) -> Callable[[], float | None]:
    """Return a function that sums the CPU seconds of the embedded PostgreSQL's processes.

    It reads /proc, so it returns None on other systems and for STOCKADE_DATABASE_URL.
    """
    clock_ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    pid_file = settings.postgres_dir / "postmaster.pid"

    def read() -> float | None:
        if settings.database_url or not Path("/proc/self/stat").exists():
            return None
        try:
            postmaster = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        ticks = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # the process ended meanwhile
            # Fields after the command name: state, ppid, ..., utime (12th), stime (13th).
            fields = stat.rsplit(")", 1)[1].split()
            if int(entry.name) == postmaster or int(fields[1]) == postmaster:
                ticks += int(fields[11]) + int(fields[12])
        return ticks / clock_ticks

    return read


def check_counters(runtime: Runtime, tenant_id: uuid.UUID) -> None:
    """Raise unless the token counter equals the settled ledger total, with nothing reserved."""
    scope = Scope(tenant_id=tenant_id, roles=("auditor",))
    with scoped_transaction(runtime.db.app, scope) as conn:
        used, reserved = conn.execute(
            text(
                "select coalesce(sum(used), 0), coalesce(sum(reserved), 0) from usage_counters"
                " where tenant_id = :t and kind = 'llm_tokens'"
            ),
            {"t": tenant_id},
        ).one()
        settled = conn.execute(
            text(
                "select coalesce(sum(quantity), 0) from usage_ledger"
                " where tenant_id = :t and reservation_id is not null"
            ),
            {"t": tenant_id},
        ).scalar_one()
    if reserved != 0 or used != settled:
        raise RuntimeError(
            f"counters disagree with the ledger: used {used}, reserved {reserved},"
            f" settled in the ledger {settled}"
        )


def measure(
    runtime: Runtime,
    tenant_id: uuid.UUID,
    workloads: list[Workload],
    args: argparse.Namespace,
) -> list[Cell]:
    server_cpu = postgres_cpu_reader(runtime.settings)
    cells = []
    for threads in args.threads:
        samples: dict[str, list[Sample]] = {workload.name: [] for workload in workloads}
        for round_index in range(args.rounds):
            order = workloads if round_index % 2 == 0 else list(reversed(workloads))
            for workload in order:
                samples[workload.name].append(
                    run_for(workload.operation, threads, args.seconds, server_cpu)
                )
                if workload.cleanup is not None:
                    workload.cleanup()
            check_counters(runtime, tenant_id)
            print(
                f"  {threads} threads, round {round_index + 1}/{args.rounds}: "
                + ", ".join(f"{name} {runs[-1].rate:.0f}/s" for name, runs in samples.items()),
                file=sys.stderr,
            )
        cells += [
            Cell(workload.name, threads, tuple(samples[workload.name])) for workload in workloads
        ]
    return cells


def render_report(
    args: argparse.Namespace, environment: list[str], workloads: list[Workload], cells: list[Cell]
) -> str:
    by_key = {(cell.workload, cell.threads): cell for cell in cells}
    columns = [f"{threads} thread{'s' if threads > 1 else ''}" for threads in args.threads]
    header = f"| workload | {' | '.join(columns)} |"
    rule = "| --- |" + " ---: |" * len(args.threads)
    lines = [
        "## Usage reservations on one tenant",
        "",
        *environment,
        f"- load: in process, no HTTP; {args.rounds} rounds of {args.seconds:g} s per workload"
        f" and concurrency, workload order alternated; all threads on one tenant; app engine"
        f" pool of {args.pool} connections",
        "",
        "Operations per second, median over rounds (lowest to highest round in brackets):",
        "",
        header,
        rule,
    ]
    for workload in workloads:
        row = []
        for threads in args.threads:
            cell = by_key[(workload.name, threads)]
            row.append(f"{cell.median:.0f} ({min(cell.rates):.0f} to {max(cell.rates):.0f})")
        lines.append(f"| {workload.label} | " + " | ".join(row) + " |")

    lines += ["", "CPU time per operation in µs, bench process + PostgreSQL processes:", ""]
    lines += [header, rule]
    for workload in workloads:
        row = []
        for threads in args.threads:
            cell = by_key[(workload.name, threads)]
            server = cell.server_cpu_us()
            server_text = "?" if server is None else f"{server:.0f}"
            row.append(f"{cell.client_cpu_us():.0f} + {server_text}")
        lines.append(f"| {workload.label} | " + " | ".join(row) + " |")

    best_reservations = max(by_key[("plan-reserve", threads)].median for threads in args.threads)
    best_pairs = max(by_key[("plan", threads)].median for threads in args.threads)
    target = TARGET_RESERVATIONS_PER_SECOND
    met = "met" if best_reservations >= target else "missed"
    pairs_met = "met" if best_pairs >= target else "missed"
    lines += [
        "",
        f"Target ({target} `reserve_within_plan` reservations a second): **{met}** by"
        f" reservations alone, best {best_reservations:.0f} reservations/s; **{pairs_met}**"
        f" by reserve + settle pairs, best {best_pairs:.0f} pairs/s.",
        "",
    ]
    return "\n".join(lines)


def describe_environment(runtime: Runtime) -> list[str]:
    with runtime.db.owner.connect() as conn:
        server_version = conn.execute(text("show server_version")).scalar_one()
    commit = git_commit()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    database = "STOCKADE_DATABASE_URL" if runtime.settings.database_url else "embedded (pgserver)"
    return [
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}, commit {commit}"
        " (with uncommitted changes, if any)",
        f"- machine: {platform.machine()}, {cpus} CPUs, {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()} (threads share the GIL),"
        f" PostgreSQL {server_version} ({database}), client and server on the same machine",
    ]


def seed_tenant(runtime: Runtime) -> uuid.UUID:
    tenant_id = admin.create_tenant(runtime.db.owner, f"bench-usage-{uuid.uuid4().hex[:8]}")
    set_plan(runtime.db.owner, tenant_id, runtime.plans.by_name("enterprise"), "benchmark")
    return tenant_id


def delete_tenant(runtime: Runtime, tenant_id: uuid.UUID) -> None:
    # set_plan wrote an audit event, which keeps the tenant row until it is deleted.
    with runtime.db.owner.begin() as conn:
        conn.execute(text("delete from audit_events where tenant_id = :t"), {"t": tenant_id})
        conn.execute(text("delete from tenants where id = :t"), {"t": tenant_id})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds",
        type=float,
        default=3.0,
        help="seconds per workload, concurrency and round (default 3, at most 60)",
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=5, help="rounds per concurrency (default 5)"
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        nargs="+",
        default=[1, 2, 4, 8],
        help="concurrency levels to measure, in threads (default 1 2 4 8)",
    )
    parser.add_argument(
        "--pool",
        type=positive_int,
        default=16,
        help="connections in the application engine's pool (default 16)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 60:
        parser.error("--seconds must be more than 0 and at most 60")
    if max(args.threads) > args.pool:
        parser.error("--pool must be at least the largest --threads value")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(json=True, level=logging.WARNING)

    data_dir = Path(tempfile.mkdtemp(prefix="stockade-bench-"))
    settings = load_settings(data_dir=data_dir)
    print(f"Opening the runtime in {data_dir} ...", file=sys.stderr)
    # pool_size is also the overflow, so --pool connections are more than enough.
    runtime = open_runtime(settings, pool_size=args.pool)
    tenant_id: uuid.UUID | None = None
    try:
        tenant_id = seed_tenant(runtime)
        workloads = build_workloads(runtime, tenant_id)
        for workload in workloads:
            # Warm-up: open connections, let psycopg prepare the statements.
            run_for(workload.operation, 1, 0.5, lambda: None)
        load_before = os.getloadavg()
        cells = measure(runtime, tenant_id, workloads, args)
        load_after = os.getloadavg()
        environment = describe_environment(runtime)
        environment.append(
            f"- 1-minute load average {load_before[0]:.2f} before the measured rounds,"
            f" {load_after[0]:.2f} after"
        )
        report = render_report(args, environment, workloads, cells)
    finally:
        if tenant_id is not None:
            delete_tenant(runtime, tenant_id)
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
