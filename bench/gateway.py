"""Measure what the model gateway adds to a chat completion, beside LiteLLM's proxy.

One run starts, all on 127.0.0.1:

- the mock OpenAI-compatible provider of the tests (``tests/gateway/upstream.py``) in a
  process of its own, answering at once, with an API key;
- Stockade (``create_app(..., gateway_only=True)``) served by uvicorn in this process,
  with every guard on: Bearer access token, the revocation check, the tenant's
  allow-list, the call and token reservations, redaction, the audit event, the ledger
  settlement and the cache write (the last three after the response is sent);
- LiteLLM's proxy (``litellm --config``) from a separate virtual environment, with a
  master key and a proxy-wide budget (``litellm_settings.max_budget``); see
  ``--litellm`` for how to install it.

A client in a separate process then sends the same chat completion (``max_tokens`` 16)
to the three targets: first sequentially (concurrency 1) over one keep-alive
connection each, alternating the targets in blocks so machine noise hits them alike,
for the p50 and p99 latency; then ``--concurrency`` requests in flight for
``--seconds`` per target, for throughput. "Added" is a target's figure minus the direct
call's.

Usage: ``make bench LITELLM=/tmp/litellm-venv/bin/litellm`` or
``.venv/bin/python bench/gateway.py --requests 2000 --litellm PATH``. LiteLLM is not a
dependency of Stockade, and its proxy pins versions of FastAPI, Starlette and
cryptography of its own, so install it in a virtual environment apart::

    python3 -m venv /tmp/litellm-venv
    /tmp/litellm-venv/bin/pip install 'litellm[proxy]==1.106.12'

1.106.12 is the newest release whose ``proxy`` extra installed here: from 1.108 on it
pins ``litellm-proxy-extras`` and ``litellm-proxy`` releases that the package index
did not serve. Without ``--litellm`` the LiteLLM row is left out. LiteLLM's virtual
keys with budgets need a database (``DATABASE_URL``) and the Prisma client of its
``extra_proxy`` extra, which this bench does not set up; it gives LiteLLM the master key
and a proxy-wide budget (``max_budget``, kept in the proxy's memory) instead.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import httpx
from tickets_auth import (
    describe_environment,
    free_port,
    percentile,
    positive_int,
    start_server,
    stop_embedded_server,
)

# The mock provider lives with the tests; the repository root makes `tests` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.gateway.upstream import MockUpstream

from stockade.audit.logs import configure_logging
from stockade.config import MAX_ACCESS_TOKEN_MINUTES, load_settings
from stockade.gateway import budget, cache, prompts
from stockade.gateway.config import parse_gateway_config
from stockade.gateway.providers import Answer, ChatCall, ChatResult, Usage
from stockade.gateway.service import Gateway
from stockade.identity import admin, sessions
from stockade.identity.sessions import assert_active
from stockade.keys import Secret
from stockade.runtime import Runtime, open_runtime
from stockade.web.app import create_app

RESULTS_FILE = Path(__file__).resolve().parent / "results" / "gateway.md"
MODEL = "bench-chat"
UPSTREAM_MODEL = "mock-model"
KEY_NAME = "gateway-bench"
QUESTION = "Summarise the refund policy in one sentence."
# LiteLLM's proxy-wide budget in USD; the mock model has no price, so it is never reached.
LITELLM_BUDGET_USD = 1000
MAX_RUN_SECONDS = 1800


# The mock provider (runs in a process of its own)


def serve_mock(port: int, api_key: str) -> None:
    import uvicorn

    configure_logging(json=True, level=logging.WARNING)
    mock = MockUpstream(api_key=api_key)
    uvicorn.run(mock.app, host="127.0.0.1", port=port, log_config=None, access_log=False)


# Load generation (runs in a separate process)


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    model: str
    headers: dict[str, str]


@dataclass(frozen=True)
class LoadPlan:
    targets: tuple[Target, ...]
    requests: int
    warmup: int
    block: int
    concurrency: int
    seconds: float


def _body(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 16}


def drive_load(plan: LoadPlan) -> dict[str, Any]:
    """Return sequential latencies (ns) and concurrent throughput for each target."""
    latencies: dict[str, list[int]] = {target.name: [] for target in plan.targets}
    clients = {target.name: httpx.Client(timeout=30.0, trust_env=False) for target in plan.targets}
    try:

        def send(target: Target) -> int:
            started = time.perf_counter_ns()
            response = clients[target.name].post(
                target.url, json=_body(target.model), headers=target.headers
            )
            elapsed = time.perf_counter_ns() - started
            if response.status_code != 200:
                raise RuntimeError(
                    f"{target.name} returned HTTP {response.status_code}: {response.text[:300]}"
                )
            return elapsed

        for _ in range(plan.warmup):
            for target in plan.targets:
                send(target)
        round_index = 0
        while len(latencies[plan.targets[0].name]) < plan.requests:
            order = plan.targets if round_index % 2 == 0 else tuple(reversed(plan.targets))
            for target in order:
                latencies[target.name] += [send(target) for _ in range(plan.block)]
            round_index += 1
    finally:
        for client in clients.values():
            client.close()

    throughput = {
        target.name: asyncio.run(_throughput(target, plan.concurrency, plan.seconds))
        for target in plan.targets
    }
    return {"latencies": latencies, "throughput": throughput}


async def _throughput(target: Target, concurrency: int, seconds: float) -> dict[str, float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    done = failed = 0
    async with httpx.AsyncClient(timeout=30.0, limits=limits, trust_env=False) as client:
        deadline = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal done, failed
            while time.monotonic() < deadline:
                response = await client.post(
                    target.url, json=_body(target.model), headers=target.headers
                )
                if response.status_code == 200:
                    done += 1
                else:
                    failed += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    return {"requests": done, "failed": failed, "per_second": done / elapsed}


# Set-up


@dataclass(frozen=True)
class Seeded:
    tenant_id: uuid.UUID
    user_id: uuid.UUID
    client_id: str


def seed(runtime: Runtime) -> Seeded:
    """Create one tenant on the enterprise plan (100,000 calls a day) with one viewer."""
    suffix = uuid.uuid4().hex[:8]
    owner = runtime.db.owner
    tenant = f"bench-gw-{suffix}"
    tenant_id = admin.create_tenant(owner, tenant, "enterprise")
    user_id, _ = admin.add_user(
        owner,
        runtime.policy,
        email=f"bench-gw-{suffix}@example.test",
        tenant=tenant,
        role="viewer",
        password=secrets.token_urlsafe(24),
    )
    client = admin.create_client(owner, "bench", ["http://127.0.0.1/callback"], public=True)
    return Seeded(tenant_id, user_id, client.client_id)


def mint_token(runtime: Runtime, app: Any, seeded: Seeded) -> str:
    family_id = uuid.uuid4()
    with runtime.db.owner.begin() as conn:
        sessions.open_family(
            conn,
            family_id=family_id,
            tenant_id=seeded.tenant_id,
            user_id=seeded.user_id,
            client_id=seeded.client_id,
            browser_session=None,
        )
    token, _ = app.state.tokens.issue_access_token(
        user_id=seeded.user_id,
        tenant_id=seeded.tenant_id,
        roles=["viewer"],
        client_id=seeded.client_id,
        scope="openid",
        amr=["pwd"],
        auth_time=int(time.time()),
        family_id=family_id,
    )
    return str(token)


def start_litellm(
    binary: str, folder: Path, mock_url: str, api_key: str, master_key: str
) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    config = folder / "litellm.yaml"
    # JSON is YAML, so the config needs no YAML library here.
    config.write_text(
        json.dumps(
            {
                "model_list": [
                    {
                        "model_name": MODEL,
                        "litellm_params": {
                            "model": f"openai/{UPSTREAM_MODEL}",
                            "api_base": f"{mock_url}/v1",
                            "api_key": "os.environ/BENCH_UPSTREAM_KEY",
                        },
                    }
                ],
                "general_settings": {"master_key": "os.environ/BENCH_LITELLM_MASTER_KEY"},
                "litellm_settings": {
                    "max_budget": LITELLM_BUDGET_USD,
                    "budget_duration": "30d",
                    "telemetry": False,
                },
            },
            indent=2,
        )
    )
    log = folder / "litellm.log"
    env = {
        **os.environ,
        "BENCH_UPSTREAM_KEY": api_key,
        "BENCH_LITELLM_MASTER_KEY": master_key,
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "NO_PROXY": "*",
    }
    with open(log, "wb") as output:
        process = subprocess.Popen(  # noqa: S603 - the binary the operator named, fixed arguments
            [binary, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return process, f"http://127.0.0.1:{port}", log


def wait_ready(target: Target, log: Path | None) -> None:
    """Wait until ``target`` answers a chat completion; LiteLLM takes a while to start."""
    deadline = time.monotonic() + 180
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.post(
                target.url,
                json=_body(target.model),
                headers=target.headers,
                timeout=10,
                trust_env=False,
            )
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.TransportError as exc:
            last = type(exc).__name__
        time.sleep(0.5)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise RuntimeError(f"{target.url} did not respond with 200 within 180 s ({last})\n{tail}")


# In-process breakdown


def measure_steps(
    runtime: Runtime, app: Any, gateway: Gateway, token: str, repeats: int
) -> dict[str, float]:
    """Time the steps of one call in process, no HTTP: the median of ``repeats``, in ms."""
    verified = app.state.tokens.verify_access_token(token)
    # The revocation check that the route guard adds to every request's transactions.
    principal = dataclasses.replace(verified, check=lambda conn: assert_active(conn, verified))
    ctx = gateway.context(principal, {}, None)
    messages = [{"role": "user", "content": QUESTION}]
    answer = Answer(ChatResult("An answer.", "stop", Usage(12, 3)), "mock", None)
    call = ChatCall(model=UPSTREAM_MODEL, messages=messages, params={}, max_tokens=16)

    def admit() -> budget.Admission:
        return budget.admit(gateway.engine, gateway.plans, ctx.admission_scope(), 28, _allow)

    def settle() -> None:
        admission = admit()
        key = cache.cache_key(principal.tenant_id, MODEL, False, messages)
        outcome = gateway.outcome(MODEL, answer, messages, key, "An answer.", admission)
        started = time.perf_counter()
        budget.settle_call(gateway.engine, gateway.keys, ctx.record_scope(), admission, outcome)
        settle_times.append((time.perf_counter() - started) * 1000)

    async def upstream() -> list[float]:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            await gateway.upstreams["mock"].complete(call)
            times.append((time.perf_counter() - started) * 1000)
        return times

    settle_times: list[float] = []
    for _ in range(repeats):
        settle()
    return {
        "verify the access token": _median_ms(
            lambda: app.state.tokens.verify_access_token(token), repeats
        ),
        "redact the messages": _median_ms(
            lambda: prompts.redact_messages(gateway.redactor, [("user", QUESTION)]), repeats
        ),
        "admit: token check, settings, reserve call and tokens (durable commit)": _median_ms(
            admit, repeats
        ),
        "settle: two settlements, cache write, audit event (asynchronous commit)": (
            statistics.median(settle_times)
        ),
        "provider call through httpx (the mock)": statistics.median(asyncio.run(upstream())),
    }


def _allow(_: budget.TenantState) -> None:
    return None


def _median_ms(step: Any, repeats: int) -> float:
    step()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


# Report


def summarize(values_ns: list[int]) -> dict[str, float]:
    values = [value / 1e6 for value in values_ns]
    return {
        "count": len(values),
        "p50": percentile(values, 0.50),
        "p99": percentile(values, 0.99),
        "mean": statistics.fmean(values),
    }


def render_report(
    args: argparse.Namespace,
    environment: list[str],
    load: dict[str, Any],
    litellm_version: str | None,
    steps: dict[str, float],
) -> str:
    stats = {name: summarize(values) for name, values in load["latencies"].items()}
    direct = stats["direct"]
    lines = [
        "## Model gateway: added latency and throughput against the same mock provider",
        "",
        *environment,
        f"- LiteLLM proxy: {litellm_version or 'not run'}",
        f"- latency: {args.requests} sequential requests per target after {args.warmup}"
        f" warm-up requests, one keep-alive connection each, targets alternated in blocks"
        f" of {args.block}; throughput: {args.concurrency} requests in flight for"
        f" {args.seconds:g} s per target",
        "- every process (PostgreSQL, mock provider, Stockade, LiteLLM, client) shares the"
        " same machine",
        "",
        "| target | p50 ms | p99 ms | added p50 ms | added p99 ms | requests/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, figures in stats.items():
        rate = load["throughput"][name]["per_second"]
        added = "— | —"
        if name != "direct":
            added = f"{figures['p50'] - direct['p50']:+.3f} | {figures['p99'] - direct['p99']:+.3f}"
        lines.append(
            f"| {name} | {figures['p50']:.3f} | {figures['p99']:.3f} | {added} | {rate:.0f} |"
        )
    failed = {name: result["failed"] for name, result in load["throughput"].items()}
    if any(failed.values()):
        lines += ["", f"Failed requests during the throughput runs: {failed}."]
    if "litellm" in stats:
        ours = stats["stockade"]["p50"] - direct["p50"]
        theirs = stats["litellm"]["p50"] - direct["p50"]
        verdict = "met" if ours < theirs else "missed"
        lines += [
            "",
            f"Target (Stockade adds less p50 latency than LiteLLM): **{verdict}**"
            f" ({ours:.3f} ms against {theirs:.3f} ms).",
        ]
    lines += [
        "",
        f"Steps of one Stockade call in process, no HTTP (median of {args.repeats}):",
        "",
        "| step | median ms |",
        "| --- | ---: |",
        *(f"| {label} | {value:.3f} |" for label, value in steps.items()),
    ]
    return "\n".join(lines) + "\n"


# Entry point


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=positive_int, default=1000, help="per target")
    parser.add_argument("--warmup", type=positive_int, default=100, help="per target")
    parser.add_argument("--block", type=positive_int, default=50, help="requests per block")
    parser.add_argument("--concurrency", type=positive_int, default=16, help="in flight")
    parser.add_argument("--seconds", type=float, default=10.0, help="throughput run per target")
    parser.add_argument(
        "--repeats", type=positive_int, default=300, help="of each step timed in process"
    )
    parser.add_argument(
        "--litellm", help="path of the `litellm` command of a separate virtual environment"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= 120:
        parser.error("--seconds must be from 1 to 120")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(json=True, level=logging.WARNING)
    folder = Path(tempfile.mkdtemp(prefix="stockade-bench-gw-"))
    upstream_key = f"sk-bench-{secrets.token_hex(16)}"
    master_key = f"sk-{secrets.token_hex(16)}"
    mock_port = free_port()
    mock_url = f"http://127.0.0.1:{mock_port}"
    context = get_context("spawn")
    mock = context.Process(target=serve_mock, args=(mock_port, upstream_key), daemon=True)
    mock.start()

    port = free_port()
    settings = load_settings(data_dir=folder / "data", issuer=f"http://127.0.0.1:{port}")
    settings = dataclasses.replace(settings, access_token_minutes=MAX_ACCESS_TOKEN_MINUTES)
    print(f"Opening the runtime in {folder} ...", file=sys.stderr)
    runtime = open_runtime(settings)
    server = thread = litellm = gateway = None
    try:
        runtime.keystore.set_secret(KEY_NAME, Secret(upstream_key))
        app = create_app(runtime, gateway_only=True)
        document = {
            "upstreams": {"mock": {"base_url": f"{mock_url}/v1", "api_key_secret": KEY_NAME}},
            "models": {MODEL: {"route": [f"mock:{UPSTREAM_MODEL}"]}},
        }
        gateway = Gateway(
            parse_gateway_config(document, "bench"),
            runtime.keystore,
            runtime.db.app,
            runtime.plans,
            runtime.policy,
            app.state.knowledge.keys,
        )
        app.state.gateway = gateway
        seeded = seed(runtime)
        token = mint_token(runtime, app, seeded)
        server, thread = start_server(app, port)
        targets = [
            Target(
                "direct",
                f"{mock_url}/v1/chat/completions",
                UPSTREAM_MODEL,
                {"Authorization": f"Bearer {upstream_key}"},
            ),
            Target(
                "stockade",
                f"http://127.0.0.1:{port}/v1/chat/completions",
                MODEL,
                {"Authorization": f"Bearer {token}"},
            ),
        ]
        litellm_version = None
        log = None
        if args.litellm:
            litellm, litellm_url, log = start_litellm(
                args.litellm, folder, mock_url, upstream_key, master_key
            )
            targets.append(
                Target(
                    "litellm",
                    f"{litellm_url}/v1/chat/completions",
                    MODEL,
                    {"Authorization": f"Bearer {master_key}"},
                )
            )
            litellm_version = _litellm_version(args.litellm)
        for target in targets:
            wait_ready(target, log if target.name == "litellm" else None)

        plan = LoadPlan(
            tuple(targets), args.requests, args.warmup, args.block, args.concurrency, args.seconds
        )
        print(f"Sending load to {[target.name for target in targets]} ...", file=sys.stderr)
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            load = pool.submit(drive_load, plan).result(timeout=MAX_RUN_SECONDS)
        print("Timing the steps in process ...", file=sys.stderr)
        steps = measure_steps(runtime, app, gateway, token, args.repeats)
        report = render_report(args, describe_environment(runtime), load, litellm_version, steps)
    finally:
        if litellm is not None:
            litellm.terminate()
            try:
                litellm.wait(timeout=30)
            except subprocess.TimeoutExpired:
                litellm.kill()
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(timeout=10)
        if gateway is not None:
            gateway.close()
        mock.terminate()
        mock.join(timeout=10)
        runtime.close()
        stop_embedded_server(settings)
        shutil.rmtree(folder, ignore_errors=True)

    print(report)
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(report, encoding="utf-8")
    print(f"Wrote {RESULTS_FILE}", file=sys.stderr)
    return 0


def _litellm_version(binary: str) -> str:
    python = Path(binary).with_name("python")
    try:
        result = subprocess.run(  # noqa: S603 - the operator's interpreter, fixed arguments
            [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown version"
    return f"litellm {result.stdout.strip()}"


if __name__ == "__main__":
    sys.exit(main())
