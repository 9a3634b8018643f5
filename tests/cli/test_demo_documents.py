"""``stockade demo`` seeds the Northwind Outfitters handbook into acme, searchable at once."""

from __future__ import annotations

from sqlalchemy import text

from stockade.config import Settings
from stockade.db import Scope, scoped_transaction
from stockade.knowledge import store
from stockade.knowledge.demo import demo_documents
from stockade.knowledge.service import Knowledge
from stockade.runtime import Runtime
from tests.cli.test_cli import run


def _viewer_scope(runtime: Runtime) -> Scope:
    with runtime.db.owner.begin() as conn:
        row = conn.execute(
            text(
                "select m.tenant_id, m.user_id from memberships m"
                " join tenants t on t.id = m.tenant_id join users u on u.id = m.user_id"
                " where t.name = 'acme' and u.email = 'viewer@acme.example'"
            )
        ).one()
    return Scope(tenant_id=row.tenant_id, roles=("viewer",), user_id=row.user_id)


def test_demo_seeds_searchable_handbook_once(
    settings: Settings, runtime: Runtime, knowledge: Knowledge
) -> None:
    first = run(settings, "demo")
    second = run(settings, "demo")
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr

    scope = _viewer_scope(runtime)
    assert scope.tenant_id is not None
    with scoped_transaction(runtime.db.app, scope) as conn:
        documents = store.list_documents(conn, knowledge.keys, scope.tenant_id, limit=200)
    expected = sorted(document.title for document in demo_documents())
    assert sorted(document["title"] for document in documents) == expected
    assert {document["status"] for document in documents} == {"ready"}

    best = knowledge.search(scope, "Can I use fabric softener on a waterproof jacket?", 5)[0]
    assert "never fabric softener" in best.text
    assert best.title == "Product Care Guide"


def test_demo_handbook_is_redacted(
    settings: Settings, runtime: Runtime, knowledge: Knowledge
) -> None:
    assert run(settings, "demo").returncode == 0
    scope = _viewer_scope(runtime)

    passages = knowledge.search(scope, "security hotline for a suspected incident", 5)
    hotline = [passage for passage in passages if "security hotline" in passage.text]
    assert hotline, [passage.text[:80] for passage in passages]
    assert "<PHONE_1>" in hotline[0].text
    assert "555-0199" not in hotline[0].text
