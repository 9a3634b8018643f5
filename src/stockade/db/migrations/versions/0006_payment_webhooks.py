"""Stripe and Adyen webhook events, subscriptions and receipts.

Revision ID: 0006
Revises: 0005
"""

from alembic import context, op
from procrastinate.schema import SchemaManager

revision = "0006"
down_revision = "0005"

# Every verified webhook event, stored once per provider and event id before anything
# else happens to it. The body is the raw request (Stripe) or one notification item
# (Adyen) as bytes, because jsonb would reject some valid JSON (a \u0000 escape) and
# would not keep the bytes that were signed. The application role (the webhook routes)
# may only insert; the worker applies events as the owner role, which set_plan needs.
# `status` moves from 'pending' (or 'unresolved', waiting for its tenant to be known) to
# 'processed', 'ignored' or 'rejected' exactly once, in the transaction that applies it.
_EVENTS = """
create table payment_events (
    id bigint generated always as identity primary key,
    provider text not null check (provider in ('stripe', 'adyen')),
    event_id text not null check (length(event_id) between 1 and 255),
    event_type text not null check (length(event_type) between 1 and 255),
    -- The provider's creation time of the event (Stripe's `created`), if it has one.
    provider_created_at timestamptz,
    api_version text,
    object_id text,
    customer_id text,
    body bytea not null,
    received_at timestamptz not null default now(),
    status text not null default 'pending'
        check (status in ('pending', 'unresolved', 'processed', 'ignored', 'rejected')),
    outcome text,
    tenant_id uuid references tenants (id),
    processed_at timestamptz,
    requeued integer not null default 0,
    unique (provider, event_id)
);
create index payment_events_open on payment_events (received_at)
    where status in ('pending', 'unresolved');
create index payment_events_customer on payment_events (customer_id)
    where status = 'unresolved';
alter table payment_events enable row level security;
alter table payment_events force row level security;
create policy webhook_ingest on payment_events for insert with check (status in
    ('pending', 'ignored', 'rejected') and processed_at is null and tenant_id is null);
create policy operator_all on payment_events to current_user using (true) with check (true);

-- One row: whether the worker holds stored events instead of applying them.
create table payment_webhook_control (
    id boolean primary key default true check (id),
    paused boolean not null default false,
    changed_at timestamptz not null default now()
);
insert into payment_webhook_control (id) values (true);
"""

# Tenant-owned billing state. Members with billing:read see their tenant's rows; only
# the worker (owner role, scoped to the tenant) writes them.
_STATE = """
create table billing_customers (
    customer_id text primary key check (length(customer_id) between 1 and 255),
    tenant_id uuid not null references tenants (id) on delete cascade,
    created_at timestamptz not null default now()
);
create index billing_customers_tenant on billing_customers (tenant_id);

-- `state_at` and `state_rank` order the states: an event whose (created, rank) is
-- below the stored pair is older than the state already applied and is ignored.
create table billing_subscriptions (
    subscription_id text primary key check (length(subscription_id) between 1 and 255),
    tenant_id uuid not null references tenants (id) on delete cascade,
    customer_id text not null,
    status text not null,
    price_id text,
    plan text,
    current_period_end timestamptz,
    cancel_at_period_end boolean not null default false,
    state_at bigint not null,
    state_rank smallint not null,
    state_source text not null,
    payment_failed_at timestamptz,
    updated_at timestamptz not null default now()
);
create index billing_subscriptions_tenant on billing_subscriptions (tenant_id);

create table billing_receipts (
    id uuid primary key default gen_random_uuid(),
    tenant_id uuid not null references tenants (id) on delete cascade,
    provider text not null check (provider in ('stripe')),
    invoice_id text not null unique,
    subscription_id text,
    customer_id text not null,
    plan text,
    amount_paid bigint not null check (amount_paid >= 0),
    currency text not null check (currency ~ '^[a-z]{3}$'),
    period_start timestamptz,
    period_end timestamptz,
    paid_at timestamptz not null,
    issued_at timestamptz not null default now()
);
create index billing_receipts_tenant on billing_receipts (tenant_id, issued_at desc);
"""

_STATE_TABLES = ("billing_customers", "billing_subscriptions", "billing_receipts")
_STATE_POLICIES = """
alter table {table} enable row level security;
alter table {table} force row level security;
create policy billing_read on {table} for select
    using (tenant_id = (select stockade_tenant()) and (select stockade_can('billing:read')));
create policy operator_all on {table} to current_user using (true) with check (true);
"""

# procrastinate's job tables and functions. The application role defers jobs from the
# webhook routes and runs the worker's queue, so it may use every procrastinate table.
_JOB_TABLES = (
    "procrastinate_jobs",
    "procrastinate_events",
    "procrastinate_periodic_defers",
    "procrastinate_workers",
)

_GRANTS = {
    # Inserts use ON CONFLICT DO NOTHING without a target: naming one would make
    # PostgreSQL check the row against select policies, and this role may read none.
    "payment_events": "insert",
    "billing_customers": "select",
    "billing_subscriptions": "select",
    "billing_receipts": "select",
}


def upgrade() -> None:
    role = op.get_bind().dialect.identifier_preparer.quote(context.config.attributes["app_role"])
    op.execute(_EVENTS)
    op.execute(_STATE)
    for table in _STATE_TABLES:
        op.execute(_STATE_POLICIES.format(table=table))
    for table, privileges in _GRANTS.items():
        op.execute(f"grant {privileges} on {table} to {role}")

    # NOTE: this creates the schema of the procrastinate release installed when the
    # migration first runs. Upgrading procrastinate past a release that changes its schema
    # needs a new revision that applies procrastinate's own migration files.
    # The driver connection runs the script as is: through SQLAlchemy, its ':' and '%'
    # characters would be read as parameters.
    driver = op.get_bind().connection.driver_connection
    assert driver is not None, "a live connection always has a driver connection"
    driver.execute(SchemaManager.get_schema())
    for table in _JOB_TABLES:
        op.execute(f"grant select, insert, update, delete on {table} to {role}")
        sequence = driver.execute("select pg_get_serial_sequence(%s, 'id')", [table]).fetchone()
        if sequence and sequence[0]:
            op.execute(f"grant usage on sequence {sequence[0]} to {role}")
