"""Audit events and sign-in throttling.

Revision ID: 0002
Revises: 0001
"""

from alembic import context, op

revision = "0002"
down_revision = "0001"

# Each tenant's events form a hash chain: `seq` counts from 1 without gaps, `prev_hash` is
# the previous event's `hash` (32 zero bytes for the first), and `hash` is the SHA-256 of
# `prev_hash` followed by the event's canonical JSON (see stockade.audit.trail). Writers
# of one tenant take turns on an advisory lock; the unique (tenant_id, seq) key turns a
# writer that skipped the lock into an error instead of a fork.
_AUDIT = """
create table audit_events (
    id bigint generated always as identity primary key,
    -- No cascade: deleting a tenant that has an audit trail fails until an operator
    -- exports and removes the trail on purpose.
    tenant_id uuid not null references tenants (id),
    seq bigint not null check (seq > 0),
    occurred_at timestamptz not null,
    action text not null check (action ~ '^[a-z][a-z0-9-]*:[a-z][a-z0-9-]*$'),
    -- No foreign key to users: events outlive the accounts they mention.
    actor_user_id uuid,
    subject text,
    -- HMAC-SHA256 of the client address under a key store key, never the address.
    client_address text,
    request_id text,
    trace_id text,
    data jsonb not null check (jsonb_typeof(data) = 'object'),
    prev_hash bytea not null check (length(prev_hash) = 32),
    hash bytea not null check (length(hash) = 32),
    unique (tenant_id, seq)
);

-- Events that belong to no tenant, such as a failed sign-in for an e-mail address that
-- matches no account. One chain for the whole platform.
create table platform_audit_events (
    id bigint generated always as identity primary key,
    seq bigint not null unique check (seq > 0),
    occurred_at timestamptz not null,
    action text not null check (action ~ '^[a-z][a-z0-9-]*:[a-z][a-z0-9-]*$'),
    actor_user_id uuid,
    subject text,
    client_address text,
    request_id text,
    trace_id text,
    data jsonb not null check (jsonb_typeof(data) = 'object'),
    prev_hash bytea not null check (length(prev_hash) = 32),
    hash bytea not null check (length(hash) = 32)
);

-- The application role may append but not read most events, so it learns the end of a
-- chain through these functions. They run as the owner and return only the last seq and
-- hash: of the transaction's tenant, or of the platform chain.
create function audit_chain_head(out seq bigint, out hash bytea)
    language sql stable security definer
    set search_path = pg_catalog, pg_temp
    as $$ select e.seq, e.hash from public.audit_events e
          where e.tenant_id = public.stockade_tenant()
          order by e.seq desc limit 1 $$;
revoke all on function audit_chain_head() from public;

create function platform_audit_chain_head(out seq bigint, out hash bytea)
    language sql stable security definer
    set search_path = pg_catalog, pg_temp
    as $$ select e.seq, e.hash from public.platform_audit_events e
          order by e.seq desc limit 1 $$;
revoke all on function platform_audit_chain_head() from public;

alter table audit_events enable row level security;
alter table audit_events force row level security;
create policy audit_read on audit_events for select
    using (tenant_id = (select stockade_tenant()) and (select stockade_can('audit:read')));
create policy audit_append on audit_events for insert
    with check (tenant_id = (select stockade_tenant()));
create policy operator_all on audit_events to current_user using (true) with check (true);

alter table platform_audit_events enable row level security;
alter table platform_audit_events force row level security;
create policy platform_append on platform_audit_events for insert with check (true);
create policy operator_all on platform_audit_events to current_user using (true) with check (true);
"""

# Failed sign-in counters, shared by every Stockade process. A row is keyed by an HMAC
# digest of an e-mail address ('account') or of a client network ('address'), so the
# table holds neither. It has no tenant: an e-mail address may match no account at all.
_THROTTLE = """
create table signin_throttle (
    key_kind text not null check (key_kind in ('account', 'address')),
    key_digest text not null,
    failures integer not null check (failures >= 0),
    window_started_at timestamptz not null,
    blocked_until timestamptz,
    locked_until timestamptz,
    primary key (key_kind, key_digest)
);
create index signin_throttle_window on signin_throttle (window_started_at);
"""

# The application role appends audit events and cannot change or delete them.
_GRANTS = {
    "audit_events": "select, insert",
    "platform_audit_events": "insert",
    "signin_throttle": "select, insert, update, delete",
}
_FUNCTIONS = ("audit_chain_head()", "platform_audit_chain_head()")


def upgrade() -> None:
    role = op.get_bind().dialect.identifier_preparer.quote(context.config.attributes["app_role"])
    op.execute(_AUDIT)
    op.execute(_THROTTLE)
    for table, privileges in _GRANTS.items():
        op.execute(f"grant {privileges} on {table} to {role}")
    for function in _FUNCTIONS:
        op.execute(f"grant execute on function {function} to {role}")
