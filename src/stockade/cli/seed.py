"""The demo data that ``make run`` seeds on its first start."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from sqlalchemy import text

from stockade.db import Scope
from stockade.identity import admin
from stockade.knowledge.demo import add_missing_demo_documents
from stockade.knowledge.embedders import EmbedderError
from stockade.knowledge.service import Knowledge
from stockade.runtime import Runtime

DEMO_TENANTS = ("acme", "globex")
DEMO_REDIRECT_URI = "http://127.0.0.1:8765/callback"
# The tenant that gets the Northwind Outfitters handbook, added by its contributor.
DEMO_DOCUMENTS_TENANT = "acme"
DEMO_DOCUMENTS_AUTHOR = "contributor@acme.example"
_TICKETS = {
    "acme": [
        ("Invoice PDF shows the wrong VAT rate", "open"),
        ("Single sign-on loop on Safari", "pending"),
        ("Export of last quarter's usage", "closed"),
    ],
    "globex": [
        ("Webhook retries pile up after deploy", "open"),
        ("Add a second billing contact", "open"),
    ],
}


def seed_demo(runtime: Runtime, say: Callable[[str], None]) -> bool:
    """Create the demo once and print its passwords; return False when it already exists."""
    owner = runtime.db.owner
    with owner.begin() as conn:
        seeded = conn.execute(
            text("select count(*) from tenants where name = any(:names)"),
            {"names": list(DEMO_TENANTS)},
        ).scalar_one()
    if seeded:
        # A demo seeded before the handbook existed gets it now; a second run adds nothing.
        _seed_documents(runtime, say)
        say("Demo data exists already; its passwords were printed when it was created.")
        say("Set a new one with: stockade user set-password EMAIL --password-stdin")
        return False

    for name in DEMO_TENANTS:
        # The free plan has 3 seats; the demo has 6 members per tenant.
        admin.create_tenant(owner, name, "pro")
    say("Demo users (the passwords are shown only now and stored nowhere in clear):")
    for tenant in DEMO_TENANTS:
        for role in sorted(runtime.policy.roles):
            email = f"{role}@{tenant}.example"
            password = secrets.token_urlsafe(12)
            admin.add_user(
                owner, runtime.policy, email=email, tenant=tenant, role=role, password=password
            )
            say(f"  {email:<28} {password}")
    # One user in both tenants, to show the tenant picker.
    password = secrets.token_urlsafe(12)
    for tenant in DEMO_TENANTS:
        admin.add_user(
            owner,
            runtime.policy,
            email="pat@example.com",
            tenant=tenant,
            role="contributor",
            password=password if tenant == "acme" else None,
        )
    say(f"  {'pat@example.com':<28} {password}  (contributor in both tenants)")

    client = admin.create_client(owner, "Demo app", [DEMO_REDIRECT_URI], public=True)
    say(f"Demo public OAuth client: client_id {client.client_id}, redirect URI {DEMO_REDIRECT_URI}")
    _seed_tickets(runtime)
    _seed_documents(runtime, say)
    return True


def _seed_tickets(runtime: Runtime) -> None:
    with runtime.db.owner.begin() as conn:
        for tenant, tickets in _TICKETS.items():
            for title, status in tickets:
                conn.execute(
                    text(
                        "insert into tickets (tenant_id, title, status)"
                        " select id, :title, :status from tenants where name = :tenant"
                    ),
                    {"title": title, "status": status, "tenant": tenant},
                )


def _seed_documents(runtime: Runtime, say: Callable[[str], None]) -> None:
    with runtime.db.owner.begin() as conn:
        author = conn.execute(
            text(
                "select m.tenant_id, m.user_id, array_agg(m.role order by m.role) as roles"
                " from memberships m join tenants t on t.id = m.tenant_id"
                " join users u on u.id = m.user_id"
                " where t.name = :tenant and u.email = :email group by m.tenant_id, m.user_id"
            ),
            {"tenant": DEMO_DOCUMENTS_TENANT, "email": DEMO_DOCUMENTS_AUTHOR},
        ).first()
    if author is None:
        say(f"No {DEMO_DOCUMENTS_AUTHOR} in {DEMO_DOCUMENTS_TENANT}; demo documents skipped.")
        return
    scope = Scope(tenant_id=author.tenant_id, roles=tuple(author.roles), user_id=author.user_id)
    try:
        added = add_missing_demo_documents(Knowledge.from_runtime(runtime), scope)
    except EmbedderError as exc:
        say(
            f"Indexing a demo document failed: {exc}. Fix the embedder settings, delete the"
            " failed document and run stockade demo again to add the rest."
        )
        return
    if added:
        say(f"Added {len(added)} demo documents to {DEMO_DOCUMENTS_TENANT}, indexed for search.")
