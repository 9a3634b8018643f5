"""The gateway file: unsafe or malformed settings stop start-up with a clear message."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from stockade.gateway.config import (
    EXTRACTIVE_MODEL,
    RAG_ALIAS,
    GatewayConfigError,
    load_gateway_config,
    parse_gateway_config,
)
from tests.gateway.conftest import CHAIN_MODEL, gateway_document, to_toml

URL = "http://127.0.0.1:9"


def _with_upstream(**fields: Any) -> dict[str, Any]:
    document = gateway_document(URL)
    document["upstreams"]["primary"].update(fields)
    return document


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (_with_upstream(api_key="sk-live-123"), "never write an API key"),
        (_with_upstream(base_url="http://10.0.0.5/v1"), "https outside loopback"),
        (_with_upstream(base_url="http://127.0.0.1.example.com/v1"), "https outside loopback"),
        (_with_upstream(base_url="http://localhost.example.com/v1"), "https outside loopback"),
        (_with_upstream(api_key="sk-live-123"), "stockade gateway key gateway-NAME --stdin"),
        (_with_upstream(api_key_secret="stripe-api-key"), "key store name 'gateway-"),
        (_with_upstream(max_retries=50), "max_retries must be a whole number from 0 to 5"),
        (_with_upstream(timeout_seconds=float("nan")), "timeout_seconds must be from"),
        ({"models": {"x": {"route": ["nowhere:model"]}}}, "declared upstream"),
        ({"models": {"x": {"route": []}}}, "at least one upstream"),
        ({"models": {"x": {"route": ["extractive"], "kind": "embedding"}}}, "embeddings"),
        ({"aliases": {"a": {"model": "missing"}}}, "must name a declared model"),
        ({"default_allowed_models": ["ghost"]}, "names unknown ['ghost']"),
        ({"surprise": 1}, "unknown keys ['surprise']"),
    ],
)
def test_bad_gateway_file_refused(document: dict[str, Any], message: str) -> None:
    with pytest.raises(GatewayConfigError) as raised:
        parse_gateway_config(document, "gateway.toml")

    assert message in str(raised.value)
    assert "sk-live-123" not in str(raised.value)


def test_defaults_offer_extractive_only() -> None:
    config = load_gateway_config(None)

    assert config.public_names() == [EXTRACTIVE_MODEL, RAG_ALIAS]
    resolved = config.resolve(RAG_ALIAS)
    assert resolved is not None
    assert resolved[0].name == EXTRACTIVE_MODEL
    assert resolved[1] is True


def test_file_is_read_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(to_toml(gateway_document(URL, "http://localhost:10")))

    config = load_gateway_config(path)

    assert [hop.upstream for hop in config.models[CHAIN_MODEL].route] == ["primary", "backup"]
    assert config.upstreams["primary"].timeout_seconds == 0.5


def test_missing_or_invalid_file_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[upstreams\n")

    with pytest.raises(GatewayConfigError, match="cannot read gateway file"):
        load_gateway_config(tmp_path / "absent.toml")
    with pytest.raises(GatewayConfigError, match="is not valid TOML"):
        load_gateway_config(broken)


def test_documented_example_file_parses() -> None:
    guide = Path(__file__).resolve().parents[2] / "docs" / "gateway.md"
    example = re.search(r"```toml\n(.*?)```", guide.read_text(), re.DOTALL)
    assert example is not None
    config = parse_gateway_config(tomllib.loads(example.group(1)), "docs/gateway.md")
    assert config.models["text-embedding-3-small"].kind == "embedding"
    assert config.upstreams["local"].base_url == "http://127.0.0.1:11434/v1"
