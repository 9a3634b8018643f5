"""The gateway file: upstream providers, the models offered, their fallback chains, aliases.

``STOCKADE_GATEWAY_FILE`` names a TOML file such as::

    default_max_tokens = 1024            # reserved and sent when a request names none
    default_allowed_models = ["gpt-4o-mini", "stockade-extractive"]   # optional

    [upstreams.openai]
    base_url = "https://api.openai.com/v1"
    api_key_secret = "gateway-openai"    # a key store name, set with `stockade gateway key`
    timeout_seconds = 60
    max_retries = 2

    [models."gpt-4o-mini"]
    route = ["openai:gpt-4o-mini", "extractive"]    # tried in order

    [aliases."stockade-rag"]
    model = "gpt-4o-mini"
    retrieve = true

Without a file the gateway offers only the built-in offline model
``stockade-extractive`` and the alias ``stockade-rag`` for it with retrieval. An API key
is never written in the file: a key named ``api_key`` stops start-up.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from stockade.config import ConfigError, is_safe_url

EXTRACTIVE = "extractive"
EXTRACTIVE_MODEL = "stockade-extractive"
RAG_ALIAS = "stockade-rag"
ModelKind = Literal["chat", "embedding"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
_UPSTREAM_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_SECRET_NAME = re.compile(r"^gateway-[a-z0-9-]{1,56}$")
_UPSTREAM_KEYS = frozenset(
    {
        "base_url",
        "api_key_secret",
        "timeout_seconds",
        "connect_timeout_seconds",
        "max_retries",
        "breaker_failures",
        "breaker_reset_seconds",
    }
)
_TOP_KEYS = frozenset(
    {
        "default_max_tokens",
        "default_allowed_models",
        "cache_ttl_hours",
        "retrieve_passages",
        "upstreams",
        "models",
        "aliases",
    }
)


class GatewayConfigError(ConfigError):
    """The gateway file is malformed or unsafe; start-up stops."""


@dataclass(frozen=True)
class UpstreamConfig:
    """One OpenAI-compatible endpoint and how hard to try it."""

    name: str
    base_url: str
    api_key_secret: str | None = None
    timeout_seconds: float = 60.0
    connect_timeout_seconds: float = 5.0
    max_retries: int = 2
    breaker_failures: int = 5
    breaker_reset_seconds: float = 30.0


@dataclass(frozen=True)
class Hop:
    """One step of a fallback chain: an upstream (or the extractive provider) and its model."""

    upstream: str
    model: str


@dataclass(frozen=True)
class ModelConfig:
    name: str
    kind: ModelKind
    route: tuple[Hop, ...]


@dataclass(frozen=True)
class Alias:
    """A model name that stands for another model, optionally with retrieval switched on."""

    name: str
    model: str
    retrieve: bool


@dataclass(frozen=True)
class GatewayConfig:
    upstreams: Mapping[str, UpstreamConfig] = field(default_factory=dict)
    models: Mapping[str, ModelConfig] = field(default_factory=dict)
    aliases: Mapping[str, Alias] = field(default_factory=dict)
    default_allowed_models: frozenset[str] | None = None
    default_max_tokens: int = 1024
    cache_ttl_hours: float = 24.0
    retrieve_passages: int = 4

    def resolve(self, name: str) -> tuple[ModelConfig, bool] | None:
        """Return the model that ``name`` (a model or an alias) stands for, and its retrieval."""
        alias = self.aliases.get(name)
        if alias is not None:
            return self.models[alias.model], alias.retrieve
        model = self.models.get(name)
        return (model, False) if model is not None else None

    def public_names(self) -> list[str]:
        return sorted([*self.models, *self.aliases])

    def allowed_by_default(self, name: str) -> bool:
        if self.default_allowed_models is None:
            return True
        return name in self.default_allowed_models


def load_gateway_config(path: Path | None) -> GatewayConfig:
    """Read and check the gateway file; without one, offer only the extractive model."""
    if path is None:
        return parse_gateway_config({}, "the built-in gateway defaults")
    try:
        document = tomllib.loads(path.read_text())
    except OSError as exc:
        raise GatewayConfigError(f"cannot read gateway file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise GatewayConfigError(f"{path} is not valid TOML: {exc}") from exc
    return parse_gateway_config(document, str(path))


def parse_gateway_config(document: Mapping[str, Any], source: str) -> GatewayConfig:
    unknown = sorted(set(document) - _TOP_KEYS)
    if unknown:
        raise GatewayConfigError(f"{source}: unknown keys {unknown}; keys are {sorted(_TOP_KEYS)}")
    upstreams = {
        name: _upstream(name, table, source)
        for name, table in _table(document, "upstreams", source).items()
    }
    models = {
        name: _model(name, table, upstreams, source)
        for name, table in _table(document, "models", source).items()
    }
    models.setdefault(
        EXTRACTIVE_MODEL, ModelConfig(EXTRACTIVE_MODEL, "chat", (Hop(EXTRACTIVE, EXTRACTIVE),))
    )
    aliases = {
        name: _alias(name, table, models, source)
        for name, table in _table(document, "aliases", source).items()
    }
    aliases.setdefault(RAG_ALIAS, Alias(RAG_ALIAS, EXTRACTIVE_MODEL, retrieve=True))
    clashes = sorted(set(aliases) & set(models))
    if clashes:
        raise GatewayConfigError(f"{source}: {clashes} are both a model and an alias")

    allowed = document.get("default_allowed_models")
    if allowed is not None:
        allowed = frozenset(_names(allowed, "default_allowed_models", source))
        missing = sorted(allowed - set(models) - set(aliases))
        if missing:
            raise GatewayConfigError(f"{source}: default_allowed_models names unknown {missing}")
    return GatewayConfig(
        upstreams=upstreams,
        models=models,
        aliases=aliases,
        default_allowed_models=allowed,
        default_max_tokens=_integer(document, "default_max_tokens", 1024, 1, 1_000_000, source),
        cache_ttl_hours=_number(document, "cache_ttl_hours", 24.0, 0.0, 24.0 * 365, source),
        retrieve_passages=_integer(document, "retrieve_passages", 4, 1, 20, source),
    )


def _upstream(name: str, table: object, source: str) -> UpstreamConfig:
    where = f"{source}: upstream {name!r}"
    if not _UPSTREAM_NAME.match(name) or name == EXTRACTIVE:
        raise GatewayConfigError(f"{where}: a name is 1-32 lowercase letters, digits, hyphens")
    if not isinstance(table, dict):
        raise GatewayConfigError(f"{where} must be a table such as [upstreams.{name}]")
    if "api_key" in table:
        raise GatewayConfigError(
            f"{where}: never write an API key in the file; store it with"
            " 'stockade gateway key gateway-NAME --stdin' and name it in api_key_secret"
        )
    unknown = sorted(set(table) - _UPSTREAM_KEYS)
    if unknown:
        raise GatewayConfigError(f"{where} has unknown keys {unknown}")
    base_url = table.get("base_url")
    if not isinstance(base_url, str) or not is_safe_url(base_url):
        raise GatewayConfigError(f"{where}: base_url must use https outside loopback addresses")
    secret = table.get("api_key_secret")
    if secret is not None and (not isinstance(secret, str) or not _SECRET_NAME.match(secret)):
        raise GatewayConfigError(f"{where}: api_key_secret must be a key store name 'gateway-…'")
    return UpstreamConfig(
        name=name,
        base_url=base_url.rstrip("/"),
        api_key_secret=secret,
        timeout_seconds=_number(table, "timeout_seconds", 60.0, 0.05, 600.0, where),
        connect_timeout_seconds=_number(table, "connect_timeout_seconds", 5.0, 0.05, 60.0, where),
        max_retries=_integer(table, "max_retries", 2, 0, 5, where),
        breaker_failures=_integer(table, "breaker_failures", 5, 1, 1000, where),
        breaker_reset_seconds=_number(table, "breaker_reset_seconds", 30.0, 0.05, 3600.0, where),
    )


def _model(
    name: str, table: object, upstreams: Mapping[str, UpstreamConfig], source: str
) -> ModelConfig:
    where = f"{source}: model {name!r}"
    if not _NAME.match(name):
        raise GatewayConfigError(f"{where}: a name is letters, digits and . _ : / -")
    if not isinstance(table, dict) or set(table) - {"route", "kind"}:
        raise GatewayConfigError(f"{where} must be a table with 'route' and optionally 'kind'")
    kind = table.get("kind", "chat")
    if kind not in ("chat", "embedding"):
        raise GatewayConfigError(f"{where}: kind is 'chat' or 'embedding'")
    hops = tuple(
        _hop(step, upstreams, where) for step in _names(table.get("route"), "route", where)
    )
    if not hops:
        raise GatewayConfigError(f"{where}: route must name at least one upstream")
    if kind == "embedding" and any(hop.upstream == EXTRACTIVE for hop in hops):
        raise GatewayConfigError(f"{where}: the extractive provider does not make embeddings")
    return ModelConfig(name, kind, hops)


def _hop(step: str, upstreams: Mapping[str, UpstreamConfig], where: str) -> Hop:
    if step == EXTRACTIVE:
        return Hop(EXTRACTIVE, EXTRACTIVE)
    upstream, _, model = step.partition(":")
    if upstream not in upstreams or not model:
        raise GatewayConfigError(
            f"{where}: route step {step!r} must be 'UPSTREAM:MODEL' with a declared upstream,"
            f" or '{EXTRACTIVE}'"
        )
    return Hop(upstream, model)


def _alias(name: str, table: object, models: Mapping[str, ModelConfig], source: str) -> Alias:
    where = f"{source}: alias {name!r}"
    if not _NAME.match(name) or not isinstance(table, dict):
        raise GatewayConfigError(f"{where} must be a table with 'model' and 'retrieve'")
    model = table.get("model")
    if not isinstance(model, str) or model not in models:
        raise GatewayConfigError(f"{where}: model must name a declared model, not {model!r}")
    retrieve = table.get("retrieve", False)
    if not isinstance(retrieve, bool) or set(table) - {"model", "retrieve"}:
        raise GatewayConfigError(f"{where}: retrieve is true or false, and no other keys")
    if retrieve and models[model].kind != "chat":
        raise GatewayConfigError(f"{where}: retrieval needs a chat model")
    return Alias(name, str(model), retrieve)


def _table(document: Mapping[str, Any], key: str, source: str) -> dict[str, Any]:
    value = document.get(key, {})
    if not isinstance(value, dict):
        raise GatewayConfigError(f"{source}: '{key}' must be a table")
    return value


def _names(value: object, key: str, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise GatewayConfigError(f"{where}: {key} must be a list of strings")
    return list(value)


def _integer(
    table: Mapping[str, Any], key: str, default: int, low: int, high: int, where: str
) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise GatewayConfigError(f"{where}: {key} must be a whole number from {low} to {high}")
    return value


def _number(
    table: Mapping[str, Any], key: str, default: float, low: float, high: float, where: str
) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GatewayConfigError(f"{where}: {key} must be a number")
    if not math.isfinite(value) or not low <= value <= high:
        raise GatewayConfigError(f"{where}: {key} must be from {low:g} to {high:g}")
    return float(value)
