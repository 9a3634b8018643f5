"""Measure what DPoP adds to ``GET /api/v1/tickets`` compared with a plain Bearer token.

One run starts one uvicorn server on 127.0.0.1 and sends the same request two ways:

- **bearer**: ``Authorization: Bearer <token>`` with an unbound access token.
- **dpop**: ``Authorization: DPoP <token>`` with a token bound to an EC P-256 key and a
  new ``DPoP`` proof for every request. The server checks the proof (ES256 signature,
  ``htm``, ``htu``, ``iat``, ``ath``, key thumbprint) and records its ``jti`` in
  PostgreSQL, in the thread pool.

A client in a separate process sends sequential requests (concurrency 1) over one
keep-alive connection and alternates the two kinds in blocks, so machine noise hits
both alike. It signs each proof before starting that request's clock, so the client's
signing time is not counted. In-process timings of the token check, the proof check and
the replay cache write then show where the difference goes.

Usage: ``make bench`` or ``.venv/bin/python bench/dpop.py --requests 3000``. The data
folder is a new temporary folder and the embedded PostgreSQL starts in it. When
``STOCKADE_DATABASE_URL`` is set, that server is used instead; point it at a scratch
database, as for ``bench/tickets_auth.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import httpx
from joserfc import jwt
from joserfc.jwk import ECKey
from tickets_auth import (
    MAX_RUN_SECONDS,
    PAGE_SIZE,
    Seeded,
    Timing,
    delete_seeded,
    describe_environment,
    free_port,
    open_token_family,
    percentile,
    positive_int,
    seed,
    start_server,
    stop_embedded_server,
    summarize,
    time_interleaved,
)

from stockade.audit.logs import configure_logging
from stockade.config import MAX_ACCESS_TOKEN_MINUTES, load_settings
from stockade.identity.dpop import Proof, ProofVerifier, access_token_hash
from stockade.identity.tokens import TokenService
from stockade.runtime import Runtime, open_runtime
from stockade.web.app import create_app

RESULTS_FILE = Path(__file__).resolve().parent / "results" / "dpop.md"
PATH = "/api/v1/tickets"
# The in-process proof check reuses one proof, re-signed after this many seconds. That is
# well inside the 60 s for which the server accepts a proof.
PROOF_REFRESH_SECONDS = 20.0


# Load generation (runs in a separate process)


@dataclass(frozen=True)
class LoadPlan:
    base_url: str
    path: str
    bearer_token: str
    dpop_token: str
    # The client's private key as a JWK, so that the load process can sign proofs.
    dpop_key: dict[str, Any]
    requests: int
    warmup: int
    block: int
    max_seconds: float


def make_proof(key: ECKey, method: str, url: str, access_token: str) -> str:
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.as_dict(private=False)}
    claims = {
        "jti": secrets.token_urlsafe(16),
        "htm": method,
        "htu": url,
        "iat": int(time.time()),
        "ath": access_token_hash(access_token),
    }
    return jwt.encode(header, claims, key, algorithms=["ES256"])


def drive_load(plan: LoadPlan) -> dict[str, Any]:
    """Send the warm-up, then the measured requests, and return latencies in ns.

    Rounds alternate the order of the two blocks, so neither kind always runs right
    after the other. The loop stops at ``plan.requests`` requests of each kind, or once
    ``plan.max_seconds`` have passed since the warm-up began.
    """
    key = ECKey.import_key(plan.dpop_key)
    url = plan.base_url + plan.path
    latencies: dict[str, list[int]] = {"bearer": [], "dpop": []}
    rounds: list[tuple[float, float]] = []
    deadline = time.monotonic() + plan.max_seconds
    stopped_early = False

    def headers_for(kind: str) -> dict[str, str]:
        if kind == "bearer":
            return {"Authorization": f"Bearer {plan.bearer_token}"}
        return {
            "Authorization": f"DPoP {plan.dpop_token}",
            "DPoP": make_proof(key, "GET", url, plan.dpop_token),
        }

    # trust_env=False: no proxy from the environment, so traffic stays on loopback.
    with httpx.Client(base_url=plan.base_url, timeout=10.0, trust_env=False) as client:

        def send(kind: str) -> int:
            headers = headers_for(kind)
            started = time.perf_counter_ns()
            response = client.get(plan.path, headers=headers)
            elapsed = time.perf_counter_ns() - started
            if response.status_code != 200:
                raise RuntimeError(
                    f"{kind} request failed with HTTP {response.status_code}: {response.text[:200]}"
                )
            return elapsed

        for _ in range(plan.warmup):
            send("bearer")
            send("dpop")

        started = time.monotonic()
        round_index = 0
        while len(latencies["bearer"]) < plan.requests:
            if time.monotonic() > deadline:
                stopped_early = True
                break
            size = min(plan.block, plan.requests - len(latencies["bearer"]))
            order = ("bearer", "dpop") if round_index % 2 == 0 else ("dpop", "bearer")
            block_medians = {}
            for kind in order:
                block = [send(kind) for _ in range(size)]
                latencies[kind].extend(block)
                block_medians[kind] = statistics.median(block) / 1e6
            rounds.append((block_medians["dpop"], block_medians["bearer"]))
            round_index += 1
        elapsed_seconds = time.monotonic() - started

    return {
        "latencies": latencies,
        "rounds": rounds,
        "stopped_early": stopped_early,
        "elapsed_seconds": elapsed_seconds,
    }


# Set-up


@dataclass(frozen=True)
class Tokens:
    bearer: str
    dpop: str
    key: ECKey


def issue_tokens(runtime: Runtime, tokens: TokenService, seeded: Seeded) -> Tokens:
    """Mint an unbound and a DPoP-bound access token, each in its own token family."""
    key = ECKey.generate_key("P-256")
    issued = []
    for dpop_jkt in (None, key.thumbprint()):
        token, _ = tokens.issue_access_token(
            user_id=seeded.user_id,
            tenant_id=seeded.tenant_id,
            roles=["viewer"],
            client_id=seeded.client_id,
            scope="openid",
            amr=["pwd"],
            auth_time=int(time.time()),
            family_id=open_token_family(runtime, seeded),
            dpop_jkt=dpop_jkt,
        )
        issued.append(token)
    return Tokens(bearer=issued[0], dpop=issued[1], key=key)


def check_endpoints(base_url: str, tokens: Tokens) -> None:
    """Raise unless both kinds return the same page and the bound token fails as Bearer."""
    with httpx.Client(base_url=base_url, timeout=10.0, trust_env=False) as client:
        misused = client.get(PATH, headers={"Authorization": f"Bearer {tokens.dpop}"})
        if misused.status_code != 401:
            raise RuntimeError(f"the bound token sent as Bearer got {misused.status_code}, not 401")
        bearer = client.get(PATH, headers={"Authorization": f"Bearer {tokens.bearer}"})
        bound = client.get(
            PATH,
            headers={
                "Authorization": f"DPoP {tokens.dpop}",
                "DPoP": make_proof(tokens.key, "GET", base_url + PATH, tokens.dpop),
            },
        )
    for name, response in (("bearer", bearer), ("dpop", bound)):
        if response.status_code != 200:
            raise RuntimeError(f"{name} request got HTTP {response.status_code}: {response.text}")
    items = bearer.json()["items"]
    if items != bound.json()["items"] or len(items) != PAGE_SIZE:
        raise RuntimeError("the two kinds returned different pages; the comparison is invalid")


# In-process breakdown


def measure_in_process(
    app_tokens: TokenService,
    proofs: ProofVerifier,
    tokens: Tokens,
    issuer: str,
    iterations: int,
    repeats: int,
) -> dict[str, Timing]:
    url = issuer + PATH
    current = {"proof": make_proof(tokens.key, "GET", url, tokens.dpop), "at": time.monotonic()}
    jkt = tokens.key.thumbprint()

    def proof() -> str:
        if time.monotonic() - current["at"] > PROOF_REFRESH_SECONDS:
            current["proof"] = make_proof(tokens.key, "GET", url, tokens.dpop)
            current["at"] = time.monotonic()
        return str(current["proof"])

    def verify_token() -> object:
        return app_tokens.verify_access_token(tokens.bearer)

    def check_proof() -> object:
        return proofs.check(proof(), method="GET", path=PATH, access_token=tokens.dpop)

    def record_jti() -> object:
        # A new jti each call, as every real proof has one.
        return proofs.replay_cache.record(Proof(jkt, secrets.token_urlsafe(16), int(time.time())))

    def sign_proof() -> object:
        return make_proof(tokens.key, "GET", url, tokens.dpop)

    return time_interleaved(
        {
            "verify": ("`TokenService.verify_access_token` (both kinds)", verify_token),
            "check": ("`ProofVerifier.check` (ES256 proof, no database)", check_proof),
            "record": ("`ReplayCache.record` (insert the jti, commit)", record_jti),
            "sign": ("client side: sign one ES256 proof (not in the HTTP figures)", sign_proof),
        },
        iterations,
        repeats,
    )


# Report


def render_report(
    args: argparse.Namespace,
    environment: list[str],
    load: dict[str, Any],
    timings: dict[str, Timing],
) -> str:
    bearer = summarize(load["latencies"]["bearer"])
    dpop = summarize(load["latencies"]["dpop"])
    round_differences = [d - b for d, b in load["rounds"]]
    lines = [
        "## `GET /api/v1/tickets`: DPoP-bound token and proof vs. Bearer token",
        "",
        *environment,
        f"- load: {bearer.count} measured requests per kind after {args.warmup} warm-up"
        " requests each, sequential (concurrency 1), one keep-alive httpx connection from a"
        f" separate process, kinds alternated in blocks of {args.block}"
        f" ({len(load['rounds'])} rounds, {load['elapsed_seconds']:.1f} s)",
        f"- server: uvicorn in the bench process, one worker; {PAGE_SIZE} tickets per"
        " response; request log filtered to warnings",
    ]
    if load["stopped_early"]:
        lines.append(
            f"- NOTE: stopped at the {args.max_seconds} s limit before {args.requests} requests"
        )
    lines += [
        "",
        "| request | requests | p50 ms | p99 ms | mean ms |",
        "| --- | ---: | ---: | ---: | ---: |",
        _row("Bearer, unbound token", bearer),
        _row("DPoP, bound token + proof", dpop),
        f"| added by DPoP | | {dpop.p50_ms - bearer.p50_ms:+.3f} |"
        f" {dpop.p99_ms - bearer.p99_ms:+.3f} | {dpop.mean_ms - bearer.mean_ms:+.3f} |",
        f"| ratio DPoP / Bearer | | {dpop.p50_ms / bearer.p50_ms:.2f} |"
        f" {dpop.p99_ms / bearer.p99_ms:.2f} | {dpop.mean_ms / bearer.mean_ms:.2f} |",
        "",
        "Per-round difference of block medians (DPoP minus Bearer):"
        f" median {statistics.median(round_differences):+.3f} ms, 10th to 90th percentile"
        f" {percentile(round_differences, 0.10):+.3f} to"
        f" {percentile(round_differences, 0.90):+.3f} ms.",
        "",
        "In-process breakdown, no HTTP"
        f" ({args.repeats} repeats of {args.iterations} calls; µs per call):",
        "",
        "| step | calls | median µs | best µs |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {t.label} | {t.iterations} | {t.median_us:.1f} | {t.best_us:.1f} |"
        for t in timings.values()
    ]
    server_us = timings["check"].median_us + timings["record"].median_us
    lines += [
        "",
        f"Proof check plus replay cache write come to about {server_us / 1000:.3f} ms, against"
        f" {dpop.p50_ms - bearer.p50_ms:.3f} ms added at p50 over HTTP.",
        "",
    ]
    return "\n".join(lines)


def _row(label: str, summary: Any) -> str:
    return (
        f"| {label} | {summary.count} | {summary.p50_ms:.3f} | {summary.p99_ms:.3f} |"
        f" {summary.mean_ms:.3f} |"
    )


# Entry point


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests",
        type=positive_int,
        default=3000,
        help="measured requests per kind (default 3000)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=300,
        help="warm-up requests per kind, not measured (default 300)",
    )
    parser.add_argument(
        "--block",
        type=positive_int,
        default=50,
        help="requests per kind before switching (default 50)",
    )
    parser.add_argument(
        "--max-seconds",
        type=positive_int,
        default=600,
        help="time limit in seconds for the warm-up and the load"
        f" (default 600, at most {MAX_RUN_SECONDS})",
    )
    parser.add_argument(
        "--iterations",
        type=positive_int,
        default=1000,
        help="calls per in-process repeat (default 1000)",
    )
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=5,
        help="repeats of the in-process timings (default 5)",
    )
    args = parser.parse_args(argv)
    if args.warmup < 0:
        parser.error("--warmup must be 0 or more")
    if args.max_seconds > MAX_RUN_SECONDS:
        parser.error(f"--max-seconds must be at most {MAX_RUN_SECONDS}, the access token lifetime")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Keep only warnings, so that one log line per request does not weigh on both kinds.
    configure_logging(json=True, level=logging.WARNING)

    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="stockade-bench-dpop-"))
    settings = load_settings(data_dir=data_dir, issuer=f"http://127.0.0.1:{port}")
    # The longest allowed lifetime, so that the tokens outlive the longest allowed run.
    settings = dataclasses.replace(settings, access_token_minutes=MAX_ACCESS_TOKEN_MINUTES)

    print(f"Opening the runtime in {data_dir} ...", file=sys.stderr)
    runtime = open_runtime(settings)
    seeded: Seeded | None = None
    server = thread = None
    try:
        seeded = seed(runtime)
        app = create_app(runtime)
        tokens = issue_tokens(runtime, app.state.tokens, seeded)
        server, thread = start_server(app, port)
        check_endpoints(settings.issuer, tokens)

        plan = LoadPlan(
            base_url=settings.issuer,
            path=PATH,
            bearer_token=tokens.bearer,
            dpop_token=tokens.dpop,
            dpop_key=tokens.key.as_dict(private=True),
            requests=args.requests,
            warmup=args.warmup,
            block=args.block,
            max_seconds=args.max_seconds,
        )
        print(f"Sending {args.requests} requests of each kind ...", file=sys.stderr)
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            load = pool.submit(drive_load, plan).result(timeout=args.max_seconds + 300)

        print("Timing the steps in process ...", file=sys.stderr)
        timings = measure_in_process(
            app.state.tokens,
            app.state.provider.proofs,
            tokens,
            settings.issuer,
            args.iterations,
            args.repeats,
        )
        report = render_report(args, describe_environment(runtime), load, timings)
    finally:
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(timeout=10)
        if seeded is not None:
            delete_seeded(runtime, seeded)
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
