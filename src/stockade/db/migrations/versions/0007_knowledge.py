"""Tenant data keys, documents, and chunks partitioned into one namespace per tenant.

Revision ID: 0007
Revises: 0006
"""

from alembic import context, op

revision = "0007"
down_revision = "0006"

# Each tenant's data key, wrapped by the key store's wrapping key `wrapping_key_id` with
# the tenant id as associated data. Rotating the wrapping key re-wraps these rows; the
# data they protect is not touched. `version` leaves room for rotating a tenant's data
# key itself, which re-encrypts that tenant's rows.
_DATA_KEYS = """
create table tenant_data_keys (
    tenant_id uuid not null references tenants (id) on delete cascade,
    version integer not null check (version > 0),
    wrapped_key bytea not null,
    wrapping_key_id text not null,
    created_at timestamptz not null default now(),
    rewrapped_at timestamptz,
    primary key (tenant_id, version)
);
alter table tenant_data_keys enable row level security;
alter table tenant_data_keys force row level security;
create policy tenant_scope on tenant_data_keys for select
    using (tenant_id = (select stockade_tenant()));
create policy tenant_insert on tenant_data_keys for insert
    with check (tenant_id = (select stockade_tenant()));
create policy operator_all on tenant_data_keys to current_user using (true) with check (true);
"""

# Titles, text and the redaction mapping are sealed (AES-256-GCM under the tenant's data
# key, nonce first); sizes, status and progress are plain so that lists need no key.
# `upload_sealed` keeps the uploaded file until the indexing job has extracted and
# redacted its text into `body_sealed`, then it is cleared.
_DOCUMENTS = """
create table documents (
    id uuid primary key,
    tenant_id uuid not null references tenants (id) on delete cascade,
    key_version integer not null,
    title_sealed bytea not null,
    upload_sealed bytea,
    body_sealed bytea,
    pii_sealed bytea,
    pii_counts jsonb not null default '{}',
    media_type text not null,
    byte_size integer not null check (byte_size >= 0),
    status text not null default 'queued'
        check (status in ('queued', 'indexing', 'ready', 'failed')),
    chunks_done integer not null default 0 check (chunks_done >= 0),
    chunks_total integer check (chunks_total >= 0),
    error text,
    created_by uuid references users (id) on delete set null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    unique (tenant_id, id)
);
create index documents_tenant_created on documents (tenant_id, created_at desc, id);
alter table documents enable row level security;
alter table documents force row level security;
create policy documents_read on documents for select
    using (tenant_id = (select stockade_tenant()) and (select stockade_can('documents:read')));
create policy documents_insert on documents for insert
    with check (tenant_id = (select stockade_tenant())
                and (select stockade_can('documents:write')));
create policy documents_update on documents for update
    using (tenant_id = (select stockade_tenant()) and (select stockade_can('documents:write')))
    with check (tenant_id = (select stockade_tenant()));
create policy documents_delete on documents for delete
    using (tenant_id = (select stockade_tenant()) and (select stockade_can('documents:write')));
create policy operator_all on documents to current_user using (true) with check (true);
"""

# One list partition per tenant: the parent's indexes are created on every partition, so
# each tenant has its own HNSW graph and its own GIN index, and no index spans two
# tenants. `lexemes` holds keyed hashes of the chunk's stemmed words (see
# knowledge/lexemes.py), so full-text rank works without plaintext words on disk.
# NOTE: the dimension is fixed at 384 for every embedder; another width needs a
# migration that rebuilds the embeddings.
_CHUNKS = """
create table document_chunks (
    tenant_id uuid not null references tenants (id) on delete cascade,
    id uuid not null,
    document_id uuid not null,
    ordinal integer not null check (ordinal >= 0),
    key_version integer not null,
    body_sealed bytea not null,
    embedding vector(384) not null,
    lexemes tsvector not null,
    primary key (tenant_id, id),
    unique (tenant_id, document_id, ordinal),
    foreign key (tenant_id, document_id) references documents (tenant_id, id) on delete cascade
) partition by list (tenant_id);
create index document_chunks_embedding on document_chunks
    using hnsw (embedding vector_cosine_ops);
create index document_chunks_lexemes on document_chunks using gin (lexemes);
alter table document_chunks enable row level security;
alter table document_chunks force row level security;
create policy chunks_read on document_chunks for select
    using (tenant_id = (select stockade_tenant())
           and ((select stockade_can('search:query'))
                or (select stockade_can('documents:read'))));
create policy chunks_write on document_chunks for insert
    with check (tenant_id = (select stockade_tenant())
                and (select stockade_can('documents:write')));
create policy chunks_delete on document_chunks for delete
    using (tenant_id = (select stockade_tenant()) and (select stockade_can('documents:write')));
create policy operator_all on document_chunks to current_user using (true) with check (true);
"""

# A tenant's partition is made in the transaction that makes the tenant, and dropped with
# it. Row-level security does not reach a partition read directly, so each partition
# has RLS forced with no policy (it shows nothing when named directly) and no grant to
# the application role; reads go through the parent, whose policies apply.
_NAMESPACES = """
create function stockade_chunk_partition(tenant uuid) returns text
    language sql immutable
    as $$ select 'document_chunks_' || replace(tenant::text, '-', '') $$;

create function stockade_create_namespace() returns trigger
    language plpgsql
    set search_path = public
    as $$
begin
    execute format('create table %I partition of document_chunks for values in (%L)',
                   stockade_chunk_partition(new.id), new.id);
    execute format('alter table %I enable row level security',
                   stockade_chunk_partition(new.id));
    execute format('alter table %I force row level security',
                   stockade_chunk_partition(new.id));
    return new;
end $$;

create function stockade_drop_namespace() returns trigger
    language plpgsql
    set search_path = public
    as $$
begin
    execute format('drop table if exists %I', stockade_chunk_partition(old.id));
    return old;
end $$;

create trigger tenants_create_namespace after insert on tenants
    for each row execute function stockade_create_namespace();
create trigger tenants_drop_namespace after delete on tenants
    for each row execute function stockade_drop_namespace();

do $$
declare
    tenant uuid;
begin
    for tenant in select id from tenants loop
        execute format('create table %I partition of document_chunks for values in (%L)',
                       stockade_chunk_partition(tenant), tenant);
        execute format('alter table %I enable row level security',
                       stockade_chunk_partition(tenant));
        execute format('alter table %I force row level security',
                       stockade_chunk_partition(tenant));
    end loop;
end $$;
"""

_GRANTS = {
    "tenant_data_keys": "select, insert",
    "documents": "select, insert, update, delete",
    "document_chunks": "select, insert, delete",
}


def upgrade() -> None:
    role = op.get_bind().dialect.identifier_preparer.quote(context.config.attributes["app_role"])
    # A no-op where a superuser already made it, as the embedded server's start-up does.
    op.execute("create extension if not exists vector")
    op.execute(_DATA_KEYS)
    op.execute(_DOCUMENTS)
    op.execute(_CHUNKS)
    op.execute(_NAMESPACES)
    for table, privileges in _GRANTS.items():
        op.execute(f"grant {privileges} on {table} to {role}")


def downgrade() -> None:
    op.execute("drop trigger tenants_drop_namespace on tenants")
    op.execute("drop trigger tenants_create_namespace on tenants")
    op.execute("drop function stockade_drop_namespace()")
    op.execute("drop function stockade_create_namespace()")
    op.execute("drop table document_chunks")
    op.execute("drop function stockade_chunk_partition(uuid)")
    op.execute("drop table documents")
    op.execute("drop table tenant_data_keys")
