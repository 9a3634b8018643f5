"""Model gateway: tenant settings, the answer cache, consented samples, the outage switch.

Revision ID: 0008
Revises: 0007
"""

from alembic import context, op

revision = "0008"
down_revision = "0007"

# What an operator decided for one tenant: the models it may call (null means the
# gateway file's default list) and whether it consented to prompt and output sampling.
# Only the operator (owner role) writes here; the application role reads its own row.
_SETTINGS = """
create table gateway_tenant_settings (
    tenant_id uuid primary key references tenants (id) on delete cascade,
    allowed_models text[],
    sample_consent boolean not null default false,
    sample_percent smallint not null default 0 check (sample_percent between 0 and 100),
    updated_at timestamptz not null default now()
);
alter table gateway_tenant_settings enable row level security;
alter table gateway_tenant_settings force row level security;
create policy tenant_read on gateway_tenant_settings for select
    using (tenant_id = (select stockade_tenant()));
create policy operator_all on gateway_tenant_settings to current_user
    using (true) with check (true);
"""

# Answers kept for a provider outage. The key is a SHA-256 over the tenant, the model and
# the redacted messages, and the tenant id is also a column under RLS, so one tenant's
# entry can never answer another tenant's request. The answer is stored redacted; the
# gateway restores placeholders per caller when it serves one.
_CACHE = """
create table gateway_cache (
    tenant_id uuid not null references tenants (id) on delete cascade,
    cache_key bytea not null check (length(cache_key) = 32),
    model text not null,
    -- The answer as JSON, sealed under the tenant's data key (keys/envelope.py).
    key_version integer not null,
    answer_sealed bytea not null,
    -- The documents the answer quotes or cites: deleting one forgets the answer.
    document_ids uuid[] not null default '{}',
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    primary key (tenant_id, cache_key)
);
create index gateway_cache_expiry on gateway_cache (expires_at);
create index gateway_cache_documents on gateway_cache using gin (document_ids);

-- Runs as the role that deletes the document, inside its tenant's transaction.
create function stockade_forget_cached_answers() returns trigger
    language plpgsql
    set search_path = public
    as $$
begin
    delete from gateway_cache
    where tenant_id = old.tenant_id and document_ids @> array[old.id];
    return old;
end $$;
create trigger documents_forget_cached_answers after delete on documents
    for each row execute function stockade_forget_cached_answers();
alter table gateway_cache enable row level security;
alter table gateway_cache force row level security;
create policy tenant_scope on gateway_cache
    using (tenant_id = (select stockade_tenant()))
    with check (tenant_id = (select stockade_tenant()));
"""

# Redacted prompts and outputs of tenants that consented, readable with audit:read.
_SAMPLES = """
create table gateway_samples (
    id uuid primary key,
    tenant_id uuid not null references tenants (id) on delete cascade,
    occurred_at timestamptz not null default now(),
    trace_id text,
    model text not null,
    -- {"prompt": [...], "output": "..."} sealed under the tenant's data key.
    key_version integer not null,
    sample_sealed bytea not null
);
create index gateway_samples_tenant on gateway_samples (tenant_id, occurred_at);
alter table gateway_samples enable row level security;
alter table gateway_samples force row level security;
create policy samples_read on gateway_samples for select
    using (tenant_id = (select stockade_tenant()) and (select stockade_can('audit:read')));
create policy samples_append on gateway_samples for insert
    with check (tenant_id = (select stockade_tenant()));
"""

# One row: whether an operator forced the outage fallback (`stockade gateway outage on`).
# Every gateway process reads it in the transaction that reserves a call's budget.
_CONTROL = """
create table gateway_control (
    id boolean primary key default true check (id),
    outage_forced boolean not null default false,
    changed_at timestamptz not null default now()
);
insert into gateway_control (id) values (true);
"""

_GRANTS = {
    "gateway_tenant_settings": "select",
    "gateway_cache": "select, insert, update, delete",
    "gateway_samples": "select, insert",
    "gateway_control": "select",
}


def upgrade() -> None:
    role = op.get_bind().dialect.identifier_preparer.quote(context.config.attributes["app_role"])
    op.execute(_SETTINGS)
    op.execute(_CACHE)
    op.execute(_SAMPLES)
    op.execute(_CONTROL)
    for table, privileges in _GRANTS.items():
        op.execute(f"grant {privileges} on {table} to {role}")
