"""Encryption at rest: no plaintext in the tables, ciphertexts bound to tenant and row,
and a wrapping-key rotation that re-wraps data keys without touching sealed rows."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from stockade.db import scoped_transaction
from stockade.keys.envelope import DataKeys, SealError
from stockade.keys.local import KeyStoreError
from stockade.knowledge import store
from stockade.knowledge.service import Knowledge
from stockade.runtime import Runtime
from tests.cli.test_cli import run
from tests.conftest import Factory
from tests.knowledge.conftest import add_indexed

SENTENCE = "The vault combination is written inside the lighthouse logbook."


def _dump(runtime: Runtime, table: str, tenant_id: uuid.UUID) -> bytes:
    """Every column of a tenant's rows as text, read as the database owner."""
    with runtime.db.owner.begin() as conn:
        rows = conn.execute(
            text(f"select t::text from {table} as t where tenant_id = :t"),  # noqa: S608 - fixed names
            {"t": tenant_id},
        ).scalars()
        return "\n".join(rows).encode()


def test_superuser_reads_no_plaintext(
    runtime: Runtime, factory: Factory, knowledge: Knowledge
) -> None:
    member = factory.member(roles=("contributor",))
    add_indexed(knowledge, member, "Lighthouse notes", SENTENCE)

    for table in ("documents", "document_chunks"):
        dump = _dump(runtime, table, member.tenant_id).lower()
        assert dump, table
        for word in (b"vault", b"combination", b"lighthouse", b"logbook", b"lighthous"):
            assert word not in dump, (table, word)
    with runtime.db.owner.begin() as conn:
        uploads = conn.execute(
            text("select count(upload_sealed) from documents where tenant_id = :t"),
            {"t": member.tenant_id},
        ).scalar_one()
    assert uploads == 0  # the uploaded file is dropped once its text is redacted
    found = knowledge.search(member.scope(), "where is the vault combination", 1)
    assert found[0].text == SENTENCE
    assert found[0].title == "Lighthouse notes"


def test_moved_ciphertext_does_not_open(
    runtime: Runtime, factory: Factory, knowledge: Knowledge
) -> None:
    a = factory.member(factory.tenant("seal-a"), roles=("contributor",))
    b = factory.member(factory.tenant("seal-b"), roles=("contributor",))
    add_indexed(knowledge, a, "a", SENTENCE)
    add_indexed(knowledge, b, "b", "Tenant b writes about gardening.")
    with runtime.db.owner.begin() as conn:
        chunk_a = conn.execute(
            text("select id, body_sealed from document_chunks where tenant_id = :t"),
            {"t": a.tenant_id},
        ).one()
        chunk_b = conn.execute(
            text("select id from document_chunks where tenant_id = :t"), {"t": b.tenant_id}
        ).scalar_one()

    with scoped_transaction(knowledge.app, a.scope()) as conn:
        key_a = knowledge.keys.current(conn, a.tenant_id)
    with scoped_transaction(knowledge.app, b.scope()) as conn:
        key_b = knowledge.keys.current(conn, b.tenant_id)
    assert store.open_chunk(key_a, chunk_a.id, chunk_a.body_sealed) == SENTENCE
    with pytest.raises(SealError):
        store.open_chunk(key_b, chunk_b, chunk_a.body_sealed)
    with pytest.raises(SealError):
        store.open_chunk(key_b, chunk_a.id, chunk_a.body_sealed)
    with pytest.raises(SealError):
        store.open_chunk(key_a, chunk_b, chunk_a.body_sealed)

    # The owner copies A's ciphertext into B's row: B's search fails to open it.
    with runtime.db.owner.begin() as conn:
        conn.execute(
            text("update document_chunks set body_sealed = :s where tenant_id = :t and id = :id"),
            {"s": chunk_a.body_sealed, "t": b.tenant_id, "id": chunk_b},
        )
    with pytest.raises(SealError):
        knowledge.search(b.scope(), "gardening", 1)


def test_wrapped_data_key_is_bound_to_its_tenant(
    runtime: Runtime, factory: Factory, knowledge: Knowledge
) -> None:
    a = factory.member(factory.tenant("wrap-a"), roles=("contributor",))
    b = factory.member(factory.tenant("wrap-b"), roles=("contributor",))
    add_indexed(knowledge, a, "a", SENTENCE)
    add_indexed(knowledge, b, "b", "b")
    swap = (
        "update tenant_data_keys set wrapped_key = (select wrapped_key from"
        " tenant_data_keys where tenant_id = :source) where tenant_id = :target"
    )
    with runtime.db.owner.begin() as conn:
        original = conn.execute(
            text("select wrapped_key from tenant_data_keys where tenant_id = :b"),
            {"b": b.tenant_id},
        ).scalar_one()
        conn.execute(text(swap), {"source": a.tenant_id, "target": b.tenant_id})

    fresh = DataKeys(runtime.keystore)  # no cached key
    with (
        pytest.raises(KeyStoreError, match="does not decrypt"),
        scoped_transaction(knowledge.app, b.scope()) as conn,
    ):
        fresh.current(conn, b.tenant_id)
    rotated = run(runtime.settings, "keys", "rotate")
    assert rotated.returncode != 0
    assert f"keep their old wrapping (tenants {b.tenant_id})" in rotated.stderr

    with runtime.db.owner.begin() as conn:
        conn.execute(
            text("update tenant_data_keys set wrapped_key = :w where tenant_id = :b"),
            {"w": original, "b": b.tenant_id},
        )


def test_rotation_rewraps_data_keys_and_keeps_documents_readable(
    runtime: Runtime, factory: Factory, knowledge: Knowledge, tmp_path: Path
) -> None:
    member = factory.member(roles=("contributor",))
    document_id = add_indexed(knowledge, member, "Lighthouse notes", SENTENCE)

    def state() -> tuple[bytes, str, bytes]:
        with runtime.db.owner.begin() as conn:
            wrapped, key_id = conn.execute(
                text(
                    "select wrapped_key, wrapping_key_id from tenant_data_keys where tenant_id = :t"
                ),
                {"t": member.tenant_id},
            ).one()
            body = conn.execute(
                text("select body_sealed from documents where id = :d"), {"d": document_id}
            ).scalar_one()
        return bytes(wrapped), key_id, bytes(body)

    before = state()
    for _ in range(2):
        result = run(runtime.settings, "keys", "rotate")
        assert result.returncode == 0, result.stderr
        assert "data keys re-wrapped" in result.stdout
    after = state()

    assert after[1] == runtime.keystore.current_wrapping_key_id() != before[1]
    assert after[0] != before[0]
    assert after[2] == before[2]
    # The first key is gone from the key store; the data key still opens with a new cache.
    assert before[1] not in runtime.keystore.wrapping_key_ids()
    fresh = DataKeys(runtime.keystore)
    with scoped_transaction(knowledge.app, member.scope()) as conn:
        found = store.get_document(conn, fresh, member.tenant_id, document_id)
    assert found is not None
    assert found[1] == SENTENCE
    with runtime.db.owner.begin() as conn:
        events = (
            conn.execute(
                text(
                    "select action from platform_audit_events"
                    " where action = 'keys:wrapping-rotated'"
                )
            )
            .scalars()
            .all()
        )
    assert len(events) >= 2
