"""Full-text search over keyed hashes of words, so no plaintext word is stored.

PostgreSQL stems the text (``to_tsvector('english', ...)``) in a statement that stores
nothing. Each lexeme is then replaced by an HMAC under a key derived from the tenant's
data key, and the hashes, with their positions, make the stored ``tsvector``. Queries
hash their lexemes the same way, so ``ts_rank`` and the GIN index work unchanged.

A reader of the table sees how often a hashed word occurs and where, not which word it
is; the same word hashes differently in each tenant.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from sqlalchemy import Connection, text

from stockade.keys.envelope import DataKey

TEXT_SEARCH_CONFIG = "english"
_HASH_CHARS = 16
_PURPOSE = "lexemes"


def hashed_tsvectors(conn: Connection, key: DataKey, bodies: Sequence[str]) -> list[str]:
    """Return one ``tsvector`` literal of hashed lexemes per body, in order."""
    rows = conn.execute(
        text(
            "select item.ordinality, lexeme.lexeme, lexeme.positions"
            " from unnest(cast(:bodies as text[])) with ordinality as item(body, ordinality),"
            " unnest(to_tsvector(cast(:config as regconfig), item.body)) as lexeme"
        ),
        {"bodies": list(bodies), "config": TEXT_SEARCH_CONFIG},
    ).all()

    secret = key.derive(_PURPOSE)
    entries: list[list[str]] = [[] for _ in bodies]
    for ordinality, lexeme, positions in rows:
        spots = ",".join(str(position) for position in positions or ())
        hashed = _hash(secret, lexeme)
        entries[ordinality - 1].append(f"'{hashed}':{spots}" if spots else f"'{hashed}'")
    return [" ".join(entry) for entry in entries]


def hashed_tsquery(conn: Connection, key: DataKey, query: str) -> str | None:
    """Return a ``tsquery`` literal matching any of the query's words, or None if it has none."""
    lexemes = conn.execute(
        text("select lexeme from unnest(to_tsvector(cast(:config as regconfig), :query))"),
        {"query": query, "config": TEXT_SEARCH_CONFIG},
    ).scalars()
    secret = key.derive(_PURPOSE)
    hashed = sorted({_hash(secret, lexeme) for lexeme in lexemes})
    if not hashed:
        return None
    return " | ".join(f"'{value}'" for value in hashed)


def _hash(secret: bytes, lexeme: str) -> str:
    # Hex digits only, so the literal needs no quoting beyond its single quotes.
    return hmac.new(secret, lexeme.encode(), hashlib.sha256).hexdigest()[:_HASH_CHARS]
