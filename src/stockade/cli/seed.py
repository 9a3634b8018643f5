"""The demo data that ``make run`` seeds on its first start."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from sqlalchemy import text

from stockade.identity import admin
from stockade.runtime import Runtime

DEMO_TENANTS = ("acme", "globex")
DEMO_REDIRECT_URI = "http://127.0.0.1:8765/callback"
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
