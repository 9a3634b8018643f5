"""A circuit breaker per upstream, and retry delays with full jitter.

Breaker states::

    closed  --(breaker_failures failures in a row)-->  open
    open    --(breaker_reset_seconds later)-->         half-open: one trial call
    half-open --trial succeeds--> closed;  --trial fails--> open again

NOTE: each process keeps its own breakers, so replicas learn of an outage separately;
sharing the state through PostgreSQL would cost a round trip per call.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from enum import StrEnum

import structlog

log = structlog.get_logger(__name__)

# Retry delays grow from this base and never exceed the cap, in seconds.
RETRY_BASE_SECONDS = 0.1
RETRY_CAP_SECONDS = 2.0


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    """Counts consecutive failures of one upstream and stops calls to it for a while."""

    def __init__(
        self,
        name: str,
        failure_threshold: int,
        reset_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False
        # The same app can serve from two event loops (a test client and a server thread).
        self._lock = threading.Lock()

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state()

    def allow(self) -> bool:
        """Return True when a call may go out now; in half-open state only one trial may."""
        with self._lock:
            state = self._state()
            if state is BreakerState.CLOSED:
                return True
            if state is BreakerState.HALF_OPEN and not self._trial_running:
                self._trial_running = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            if self._opened_at is not None:
                log.info("upstream_circuit_closed", upstream=self.name)
            self._failures = 0
            self._opened_at = None
            self._trial_running = False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            trial_failed = self._trial_running
            self._trial_running = False
            if trial_failed or (
                self._opened_at is None and self._failures >= self.failure_threshold
            ):
                self._opened_at = self._clock()
                log.warning(
                    "upstream_circuit_opened",
                    upstream=self.name,
                    failures=self._failures,
                    reset_seconds=self.reset_seconds,
                )

    def _state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.reset_seconds:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN


def retry_delay(attempt: int, retry_after: float | None = None) -> float:
    """Return how long to wait before retry number ``attempt`` (0 for the first retry).

    Full jitter: a uniform draw below the exponential bound, so that clients that failed
    together do not retry together. A ``Retry-After`` from the upstream is honoured up
    to the cap.
    """
    if retry_after is not None and retry_after >= 0:
        return min(retry_after, RETRY_CAP_SECONDS)
    bound = min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2**attempt)
    # Not a secret: the jitter only spreads retries out.
    return random.uniform(0, bound)  # noqa: S311
