"""Sign-in throttling through the real ``/login`` form: growing delays, the lock, its
expiry, the per-address budget, and responses that do not reveal whether an account exists.

The throttle's clock is a fake that the tests move forward, so waits of seconds and
minutes cost nothing. Each test signs in from its own documentation address
(198.51.100.0/24, RFC 5737), so the per-address counters of one test never reach another.
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text

from stockade.audit.trail import client_address_digest
from stockade.config import Settings
from stockade.identity.throttle import ACCOUNT_LIMITS, SignInThrottle
from stockade.runtime import Runtime
from tests.conftest import TEST_PASSWORD, Factory

WRONG_PASSWORD = "wrong-password-7d1c"
_HOSTS = itertools.count(1)


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass(frozen=True)
class Answer:
    status: int
    retry_after: int | None
    error: str | None
    body: str


class Browser:
    """One person's browser at one client address, posting the sign-in form."""

    def __init__(self, app: FastAPI, settings: Settings, address: str) -> None:
        self.address = address
        self.client = TestClient(
            app,
            base_url=settings.issuer,
            follow_redirects=False,
            raise_server_exceptions=True,
            client=(address, 50000),
        )
        page = self.client.get("/login")
        match = re.search(r'name="csrf_token" value="([^"]*)"', page.text)
        assert match, "the sign-in page has no CSRF token"
        self.csrf_token = match.group(1)

    def sign_in(self, email: str, password: str) -> Answer:
        response = self.client.post(
            "/login",
            data={
                "email": email,
                "password": password,
                "csrf_token": self.csrf_token,
                "request": "",
            },
        )
        retry_after = response.headers.get("retry-after")
        alert = re.search(r'role="alert">([^<]*)<', response.text)
        return Answer(
            response.status_code,
            int(retry_after) if retry_after else None,
            alert.group(1) if alert else None,
            response.text.replace(email, "EMAIL").replace(self.csrf_token, "CSRF"),
        )

    def patient_attempts(self, clock: FakeClock, email: str, count: int) -> list[Answer]:
        """Post wrong passwords, waiting out each delay that Retry-After gives, but not a lock."""
        answers = []
        for _ in range(count):
            answer = self.sign_in(email, WRONG_PASSWORD)
            answers.append(answer)
            if answer.retry_after is None:
                continue
            if answer.retry_after <= ACCOUNT_LIMITS.max_delay.total_seconds():
                clock.advance(answer.retry_after)
            else:
                clock.advance(1)
        return answers

    def lock_out(self, clock: FakeClock, email: str) -> None:
        """Post wrong passwords, waiting out each delay, until the account is locked."""
        for _ in range(30):
            answer = self.sign_in(email, WRONG_PASSWORD)
            if answer.retry_after and answer.retry_after > ACCOUNT_LIMITS.max_delay.total_seconds():
                return
            clock.advance(answer.retry_after or 0)
        raise AssertionError("the account did not lock within 30 attempts")


@pytest.fixture
def clock(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(app.state.throttle, "clock", fake)
    return fake


@pytest.fixture
def browser(app: FastAPI, settings: Settings) -> Iterator[Browser]:
    opened = Browser(app, settings, f"198.51.100.{next(_HOSTS)}")
    yield opened
    opened.client.close()


def tenant_events(runtime: Runtime, tenant_id: uuid.UUID) -> list[tuple[str, dict[str, object]]]:
    with runtime.db.owner.connect() as conn:
        rows = conn.execute(
            text("select action, data from audit_events where tenant_id = :t order by seq"),
            {"t": tenant_id},
        ).all()
    return [(row[0], row[1]) for row in rows]


def platform_actions(runtime: Runtime, address: str) -> list[str]:
    digest = client_address_digest(runtime.keystore, address)
    with runtime.db.owner.connect() as conn:
        rows = conn.execute(
            text("select action from platform_audit_events where client_address = :a order by seq"),
            {"a": digest},
        ).all()
    return [row[0] for row in rows]


def test_password_storm_locks_one_account(
    browser: Browser, clock: FakeClock, runtime: Runtime, factory: Factory
) -> None:
    victim = factory.member()
    bystander = factory.member()

    answers = browser.patient_attempts(clock, victim.email, 200)

    statuses = [answer.status for answer in answers]
    waits = [answer.retry_after for answer in answers if answer.retry_after]
    assert len(answers) == 200
    assert statuses.count(401) == 10
    assert statuses.count(429) == 190
    assert statuses[:5] == [401] * 5
    assert waits[:6] == [1, 2, 4, 8, 16, 900]
    assert waits[6:] == list(range(899, 899 - 184, -1))
    assert statuses[-185:] == [429] * 185

    events = tenant_events(runtime, victim.tenant_id)
    assert [action for action, _ in events] == ["signin:failed"] * 10 + ["signin:locked"]
    assert [data["failures"] for _, data in events] == [*range(1, 11), 10]
    assert events[-1][1]["scope"] == "account"

    assert browser.sign_in(bystander.email, TEST_PASSWORD).status == 303
    assert browser.sign_in(victim.email, TEST_PASSWORD).status == 429


def test_locked_account_refuses_right_password(
    browser: Browser, clock: FakeClock, factory: Factory
) -> None:
    member = factory.member()
    browser.lock_out(clock, member.email)

    right = browser.sign_in(member.email, TEST_PASSWORD)
    wrong = browser.sign_in(member.email, WRONG_PASSWORD)

    assert right.status == 429
    assert right.retry_after == wrong.retry_after
    assert right.error == wrong.error
    assert right.body == wrong.body
    assert right.error == "Too many sign-in attempts. Try again in 15 minutes."


def test_unknown_email_answered_like_known(
    app: FastAPI, settings: Settings, clock: FakeClock, runtime: Runtime, factory: Factory
) -> None:
    member = factory.member()
    unknown = f"nobody-{uuid.uuid4().hex[:12]}@example.test"
    known_browser = Browser(app, settings, f"198.51.100.{next(_HOSTS)}")
    unknown_browser = Browser(app, settings, f"198.51.100.{next(_HOSTS)}")

    known = known_browser.patient_attempts(clock, member.email, 20)
    unknown_answers = unknown_browser.patient_attempts(clock, unknown, 20)

    assert [a.status for a in unknown_answers] == [a.status for a in known]
    assert [a.retry_after for a in unknown_answers] == [a.retry_after for a in known]
    assert [a.error for a in unknown_answers] == [a.error for a in known]
    assert [a.body for a in unknown_answers] == [a.body for a in known]
    actions = platform_actions(runtime, unknown_browser.address)
    assert actions == ["signin:failed"] * 10 + ["signin:locked"]


def test_lock_expiry_records_unlock_event(
    browser: Browser, clock: FakeClock, runtime: Runtime, factory: Factory
) -> None:
    member = factory.member()
    browser.lock_out(clock, member.email)

    clock.advance(ACCOUNT_LIMITS.lock_duration.total_seconds())
    answer = browser.sign_in(member.email, TEST_PASSWORD)

    assert answer.status == 303
    actions = [action for action, _ in tenant_events(runtime, member.tenant_id)]
    assert actions[-2:] == ["signin:locked", "signin:unlocked"]


def test_success_resets_account_counter(
    browser: Browser, clock: FakeClock, factory: Factory
) -> None:
    member = factory.member()
    before = browser.patient_attempts(clock, member.email, 4)

    signed_in = browser.sign_in(member.email, TEST_PASSWORD)
    after = browser.patient_attempts(clock, member.email, 5)

    assert [answer.status for answer in before] == [401] * 4
    assert signed_in.status == 303
    assert [answer.status for answer in after] == [401] * 5


def test_address_budget_slows_spraying(browser: Browser, clock: FakeClock) -> None:
    emails = [f"spray-{index}-{uuid.uuid4().hex[:8]}@example.test" for index in range(31)]

    answers = [browser.sign_in(email, WRONG_PASSWORD) for email in emails]

    assert [answer.status for answer in answers[:30]] == [401] * 30
    assert answers[30].status == 429
    assert answers[30].retry_after == 1


def test_failure_audited_in_every_tenant(
    browser: Browser, clock: FakeClock, runtime: Runtime, factory: Factory
) -> None:
    first = factory.member()
    second = factory.member(factory.tenant(), email=first.email)

    browser.sign_in(first.email, WRONG_PASSWORD)

    assert [action for action, _ in tenant_events(runtime, first.tenant_id)] == ["signin:failed"]
    assert [action for action, _ in tenant_events(runtime, second.tenant_id)] == ["signin:failed"]
    assert platform_actions(runtime, browser.address) == []


def test_client_address_stored_only_hashed(
    browser: Browser, clock: FakeClock, runtime: Runtime, factory: Factory
) -> None:
    member = factory.member()

    browser.sign_in(member.email, WRONG_PASSWORD)

    with runtime.db.owner.connect() as conn:
        stored = conn.execute(
            text(
                "select (select string_agg(key_digest, ' ') from signin_throttle)"
                " || (select string_agg(client_address || data::text, ' ') from audit_events"
                "     where tenant_id = :t)"
            ),
            {"t": member.tenant_id},
        ).scalar_one()
    assert client_address_digest(runtime.keystore, browser.address) in stored
    assert browser.address not in stored
    assert member.email not in stored


def test_ipv6_prefix_shares_one_budget(runtime: Runtime) -> None:
    throttle = SignInThrottle(runtime.db.app, runtime.keystore, clock=FakeClock())
    prefix = f"2001:db8:{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}"

    accepted = [
        throttle.begin(f"v6-{index}@example.test", f"{prefix}::{index + 1:x}").retry_after
        for index in range(30)
    ]
    neighbour = throttle.begin("v6-next@example.test", f"{prefix}:ffff::1")

    assert accepted == [0] * 30
    assert neighbour.retry_after == 1


def test_parallel_attempts_cannot_skip_delays(runtime: Runtime) -> None:
    throttle = SignInThrottle(runtime.db.app, runtime.keystore, clock=FakeClock())
    email = f"burst-{uuid.uuid4().hex[:8]}@example.test"

    def attempt(index: int) -> int:
        return throttle.begin(email, f"192.0.2.{index + 1}").retry_after

    with ThreadPoolExecutor(max_workers=8) as pool:
        waits = list(pool.map(attempt, range(24)))

    assert waits.count(0) == ACCOUNT_LIMITS.free_failures
