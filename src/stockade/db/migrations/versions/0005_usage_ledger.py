"""Plans, the usage ledger and reservations.

Revision ID: 0005
Revises: 0004
"""

from alembic import context, op

revision = "0005"
down_revision = "0004"

# The server's record of metered usage. The application role may add rows and read
# them, never change or delete one. Reading needs usage:read; adding needs only the
# tenant, because the server writes rows when it settles a reservation, in the scope of
# whichever member made the call. No API writes here.
_LEDGER = """
create table usage_ledger (
    id bigint generated always as identity primary key,
    tenant_id uuid not null references tenants (id) on delete cascade,
    kind text not null check (kind ~ '^[a-z][a-z0-9_]{0,62}$'),
    quantity bigint not null check (quantity >= 0),
    occurred_at timestamptz not null default now(),
    -- A reservation settles once, so it has at most one entry.
    reservation_id uuid unique,
    data jsonb not null default '{}'::jsonb check (jsonb_typeof(data) = 'object')
);
create index usage_ledger_tenant_kind on usage_ledger (tenant_id, kind, occurred_at);
alter table usage_ledger enable row level security;
alter table usage_ledger force row level security;
create policy usage_read on usage_ledger for select
    using (tenant_id = (select stockade_tenant()) and (select stockade_can('usage:read')));
create policy usage_append on usage_ledger for insert
    with check (tenant_id = (select stockade_tenant()));
"""

# One row per tenant, metered kind and window (a UTC day or month): what was used and
# what is reserved but not yet settled. A reservation raises `reserved` with one
# conditional UPDATE, so concurrent reservations queue on the row and none overspends.
_COUNTERS = """
create table usage_counters (
    tenant_id uuid not null references tenants (id) on delete cascade,
    kind text not null,
    period text not null check (period in ('day', 'month')),
    window_start timestamptz not null,
    used bigint not null default 0 check (used >= 0),
    reserved bigint not null default 0 check (reserved >= 0),
    primary key (tenant_id, kind, period, window_start)
);
alter table usage_counters enable row level security;
alter table usage_counters force row level security;
create policy tenant_scope on usage_counters
    using (tenant_id = (select stockade_tenant()))
    with check (tenant_id = (select stockade_tenant()));

create table usage_reservations (
    id uuid primary key,
    tenant_id uuid not null references tenants (id) on delete cascade,
    kind text not null,
    period text not null check (period in ('day', 'month')),
    window_start timestamptz not null,
    amount bigint not null check (amount > 0),
    status text not null default 'reserved'
        check (status in ('reserved', 'settled', 'released', 'expired')),
    created_at timestamptz not null,
    expires_at timestamptz not null,
    closed_at timestamptz,
    actual bigint check (actual >= 0)
);
-- Finds the expired reservations of a window that still count as reserved.
create index usage_reservations_open on usage_reservations
    (tenant_id, kind, period, window_start, expires_at) where status = 'reserved';
alter table usage_reservations enable row level security;
alter table usage_reservations force row level security;
create policy tenant_scope on usage_reservations
    using (tenant_id = (select stockade_tenant()))
    with check (tenant_id = (select stockade_tenant()));
"""

_GRANTS = {
    "usage_ledger": "select, insert",
    "usage_counters": "select, insert, update",
    "usage_reservations": "select, insert, update",
}


def upgrade() -> None:
    role = op.get_bind().dialect.identifier_preparer.quote(context.config.attributes["app_role"])
    op.execute(_LEDGER)
    op.execute(_COUNTERS)
    for table, privileges in _GRANTS.items():
        op.execute(f"grant {privileges} on {table} to {role}")
