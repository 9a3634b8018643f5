"""One typed reader for Stockade's configuration.

Values come from command-line options first, then ``STOCKADE_*`` environment
variables, then defaults. Secrets never come from here: they live in the key store.
Unsafe values stop start-up with a message that names the variable.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_DATA_DIR = Path(".stockade")
DEFAULT_ACCESS_TOKEN_MINUTES = 15
MAX_ACCESS_TOKEN_MINUTES = 60
EMBEDDERS = ("hashing", "openai", "sentence-transformers")
_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class ConfigError(ValueError):
    """A configuration value is missing or unsafe; start-up stops."""


@dataclass(frozen=True)
class Settings:
    data_dir: Path = DEFAULT_DATA_DIR
    database_url: str | None = None
    app_db_role: str = "stockade_app"
    issuer: str = "http://127.0.0.1:8000"
    access_token_minutes: int = DEFAULT_ACCESS_TOKEN_MINUTES
    refresh_token_days: int = 30
    authorization_code_seconds: int = 60
    browser_session_hours: int = 12
    policy_file: Path | None = None
    # Where the Stripe API is reached; tests point it at a server of their own.
    stripe_api_base: str = "https://api.stripe.com"
    # How document chunks and search queries become vectors: "hashing" (offline, the
    # default), "openai" (an OpenAI-compatible /embeddings endpoint at embeddings_url,
    # its key in the key store as "embeddings-api-key") or "sentence-transformers"
    # (the local-models extra).
    embedder: str = "hashing"
    embeddings_url: str | None = None
    embeddings_model: str = ""
    # The model gateway's upstreams, models and aliases (TOML); without one the gateway
    # offers only its offline extractive model. See stockade.gateway.config.
    gateway_file: Path | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.access_token_minutes <= MAX_ACCESS_TOKEN_MINUTES:
            raise ConfigError(
                f"STOCKADE_ACCESS_TOKEN_MINUTES={self.access_token_minutes} is not allowed: "
                f"access tokens live from 1 to {MAX_ACCESS_TOKEN_MINUTES} minutes"
            )
        if not 1 <= self.refresh_token_days <= 90:
            raise ConfigError(
                f"STOCKADE_REFRESH_TOKEN_DAYS={self.refresh_token_days} is not allowed: "
                "use 1 to 90 days"
            )
        if not _ROLE_NAME.match(self.app_db_role):
            raise ConfigError(
                f"STOCKADE_APP_DB_ROLE={self.app_db_role!r} is not a plain lowercase role name"
            )
        if not is_safe_url(self.issuer):
            raise ConfigError(
                f"STOCKADE_ISSUER={self.issuer!r} must use https outside loopback addresses"
            )
        if not is_safe_url(self.stripe_api_base):
            raise ConfigError(
                f"STOCKADE_STRIPE_API_BASE={self.stripe_api_base!r} must use https"
                " outside loopback addresses"
            )

        if self.embedder not in EMBEDDERS:
            raise ConfigError(
                f"STOCKADE_EMBEDDER={self.embedder!r} is not one of {', '.join(EMBEDDERS)}"
            )
        if self.embedder == "openai" and not is_safe_url(self.embeddings_url or ""):
            raise ConfigError(
                "STOCKADE_EMBEDDINGS_URL must be set, and use https outside loopback"
                " addresses, when STOCKADE_EMBEDDER=openai"
            )

    @property
    def audience(self) -> str:
        """The resource identifier that access tokens are issued for (RFC 9068 ``aud``)."""
        return self.issuer

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def postgres_dir(self) -> Path:
        return self.data_dir / "postgres"


def is_safe_url(url: str) -> bool:
    """Tell whether ``url`` is https, or plain http to a loopback address of this machine.

    The host is parsed, not matched as a prefix, so ``http://127.0.0.1.example.com``
    is not taken for loopback.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return False
    if not host:
        return False
    if parts.scheme == "https":
        return True
    if parts.scheme != "http":
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None


def load_settings(
    *,
    data_dir: Path | None = None,
    issuer: str | None = None,
) -> Settings:
    """Read settings from options and the environment, refusing unsafe values."""
    env = os.environ
    policy = env.get("STOCKADE_POLICY_FILE")
    return Settings(
        data_dir=data_dir or Path(env.get("STOCKADE_DATA_DIR") or DEFAULT_DATA_DIR),
        database_url=env.get("STOCKADE_DATABASE_URL") or None,
        app_db_role=env.get("STOCKADE_APP_DB_ROLE") or "stockade_app",
        issuer=(issuer or env.get("STOCKADE_ISSUER") or Settings.issuer).rstrip("/"),
        access_token_minutes=_int_env(
            "STOCKADE_ACCESS_TOKEN_MINUTES", DEFAULT_ACCESS_TOKEN_MINUTES
        ),
        refresh_token_days=_int_env("STOCKADE_REFRESH_TOKEN_DAYS", 30),
        policy_file=Path(policy) if policy else None,
        embedder=env.get("STOCKADE_EMBEDDER") or Settings.embedder,
        embeddings_url=(env.get("STOCKADE_EMBEDDINGS_URL") or "").rstrip("/") or None,
        embeddings_model=env.get("STOCKADE_EMBEDDINGS_MODEL") or "",
        gateway_file=Path(gateway) if (gateway := env.get("STOCKADE_GATEWAY_FILE")) else None,
        stripe_api_base=(env.get("STOCKADE_STRIPE_API_BASE") or Settings.stripe_api_base).rstrip(
            "/"
        ),
    )
