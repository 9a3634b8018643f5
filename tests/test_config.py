"""Configuration fails fast on unsafe values."""

from __future__ import annotations

import pytest

from stockade.access.policy import PolicyError, load_policy
from stockade.config import ConfigError, is_safe_url, load_settings


@pytest.mark.parametrize("minutes", ["61", "90", "0", "-5"])
def test_access_token_lifetime_over_limit_refused(
    monkeypatch: pytest.MonkeyPatch, minutes: str
) -> None:
    monkeypatch.setenv("STOCKADE_ACCESS_TOKEN_MINUTES", minutes)
    with pytest.raises(ConfigError, match="STOCKADE_ACCESS_TOKEN_MINUTES"):
        load_settings()


def test_access_token_lifetime_sixty_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKADE_ACCESS_TOKEN_MINUTES", "60")
    assert load_settings().access_token_minutes == 60


def test_default_lifetime_is_fifteen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STOCKADE_ACCESS_TOKEN_MINUTES", raising=False)
    assert load_settings().access_token_minutes == 15


def test_non_number_lifetime_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKADE_ACCESS_TOKEN_MINUTES", "fifteen")
    with pytest.raises(ConfigError, match="not a whole number"):
        load_settings()


def test_plain_http_issuer_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKADE_ISSUER", "http://stockade.example.com")
    with pytest.raises(ConfigError, match="https"):
        load_settings()


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("permissions = 'x'\n[roles]\na = []", "list of strings"),
        ("permissions = ['a:b']\n[roles]\nviewer = ['c:d']", "unknown"),
        ("permissions = ['nocolon']\n[roles]\nviewer = []", "resource:action"),
        (
            "permissions = ['a:b']\nprivileged_roles = ['ghost']\n[roles]\nv = ['a:b']",
            "privileged_roles",
        ),
        ("not toml at all [", "not valid TOML"),
    ],
)
def test_malformed_policy_file_refused(tmp_path, document: str, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "policy.toml"
    path.write_text(document)
    with pytest.raises(PolicyError, match=message):
        load_policy(path)


def test_packaged_policy_matches_role_table() -> None:
    policy = load_policy()
    assert policy.decide(["viewer"], "llm:invoke").allowed
    assert not policy.decide(["viewer"], "tickets:write").allowed
    assert not policy.decide(["auditor"], "llm:invoke").allowed
    assert policy.decide(["billing-admin"], "billing:manage").allowed
    assert not policy.decide(["admin"], "billing:manage").allowed
    assert not policy.decide(["admin"], "no:such").allowed
    assert not policy.decide([], "tickets:read").allowed
    assert policy.privileged_roles == {"admin", "billing-admin"}


@pytest.mark.parametrize(
    ("url", "safe"),
    [
        ("https://api.example.com/v1", True),
        ("http://127.0.0.1:8000", True),
        ("http://127.0.0.2:9/v1", True),
        ("http://localhost/v1", True),
        ("http://[::1]:8080/v1", True),
        ("http://127.0.0.1.example.com/v1", False),
        ("http://localhost.example.com/v1", False),
        ("http://10.0.0.5/v1", False),
        ("ftp://127.0.0.1/", False),
        ("https://", False),
        ("http://[::1/", False),
        ("", False),
    ],
)
def test_safe_url_parses_the_host(url: str, safe: bool) -> None:
    assert is_safe_url(url) is safe
