"""Tenants, users, memberships, OAuth state, tickets, and their RLS policies.

Revision ID: 0001
Revises:
"""

from alembic import context, op

revision = "0001"
down_revision = None

# Tables that carry tenant_id: RLS enabled and forced, policies compare with the
# transaction's tenant. Tables without tenant_id are global (users, clients, sessions).
_FUNCTIONS = """
create function stockade_tenant() returns uuid
    language sql stable parallel safe
    as $$ select nullif(current_setting('stockade.tenant_id', true), '')::uuid $$;

create function stockade_user() returns uuid
    language sql stable parallel safe
    as $$ select nullif(current_setting('stockade.user_id', true), '')::uuid $$;

create function stockade_login_email() returns text
    language sql stable parallel safe
    as $$ select nullif(current_setting('stockade.login_email', true), '') $$;

create function stockade_roles() returns text[]
    language sql stable parallel safe
    as $$ select coalesce(
        string_to_array(nullif(current_setting('stockade.roles', true), ''), ','),
        '{}'::text[]) $$;

-- role_permissions mirrors the policy file; only the owner writes it, at start-up.
create table role_permissions (
    role text not null,
    permission text not null,
    primary key (role, permission)
);

create function stockade_can(wanted text) returns boolean
    language sql stable parallel safe
    as $$ select exists (
        select 1 from role_permissions
        where permission = wanted and role = any(stockade_roles())) $$;
"""

_TABLES = """
create table tenants (
    id uuid primary key,
    name text not null unique check (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    plan text not null default 'free',
    created_at timestamptz not null default now()
);

create table users (
    id uuid primary key,
    email text not null check (email = lower(email) and position('@' in email) > 1),
    password_hash text not null,
    password_changed_at timestamptz not null default now(),
    created_at timestamptz not null default now()
);
create unique index users_email_key on users (email);

create table password_history (
    id bigint generated always as identity primary key,
    user_id uuid not null references users (id) on delete cascade,
    password_hash text not null,
    retired_at timestamptz not null default now()
);
create index password_history_user on password_history (user_id, retired_at desc);

create table memberships (
    tenant_id uuid not null references tenants (id) on delete cascade,
    user_id uuid not null references users (id) on delete cascade,
    role text not null,
    created_at timestamptz not null default now(),
    primary key (tenant_id, user_id, role)
);
create index memberships_user on memberships (user_id);

create table oauth_clients (
    client_id text primary key,
    name text not null,
    secret_hash bytea,
    redirect_uris text[] not null check (cardinality(redirect_uris) > 0),
    is_public boolean not null,
    created_at timestamptz not null default now(),
    check (is_public = (secret_hash is null))
);

create table browser_sessions (
    id_hash bytea primary key,
    user_id uuid not null references users (id) on delete cascade,
    amr text[] not null,
    authenticated_at timestamptz not null default now(),
    expires_at timestamptz not null
);

create table authorization_codes (
    code_hash bytea primary key,
    tenant_id uuid not null references tenants (id) on delete cascade,
    user_id uuid not null references users (id) on delete cascade,
    client_id text not null references oauth_clients (client_id) on delete cascade,
    redirect_uri text not null,
    scope text not null,
    nonce text,
    code_challenge text not null,
    amr text[] not null,
    authenticated_at timestamptz not null,
    expires_at timestamptz not null,
    used_at timestamptz,
    family_id uuid
);

create table refresh_tokens (
    token_hash bytea primary key,
    family_id uuid not null,
    tenant_id uuid not null references tenants (id) on delete cascade,
    user_id uuid not null references users (id) on delete cascade,
    client_id text not null references oauth_clients (client_id) on delete cascade,
    scope text not null,
    amr text[] not null,
    authenticated_at timestamptz not null,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    used_at timestamptz,
    revoked_at timestamptz
);
create index refresh_tokens_family on refresh_tokens (tenant_id, family_id);

create table tickets (
    id uuid primary key default gen_random_uuid(),
    tenant_id uuid not null references tenants (id) on delete cascade,
    title text not null,
    body text not null default '',
    status text not null default 'open' check (status in ('open', 'pending', 'closed')),
    created_by uuid references users (id) on delete set null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
create index tickets_tenant_created on tickets (tenant_id, created_at desc, id);
"""

_POLICIES = """
-- Each setting function is wrapped in a sub-select so PostgreSQL evaluates it once per
-- query (an InitPlan) instead of once per row.
alter table tenants enable row level security;
alter table tenants force row level security;
create policy tenant_member_read on tenants for select using (
    id = (select stockade_tenant())
    or exists (select 1 from memberships m where m.tenant_id = tenants.id
               and m.user_id = (select stockade_user())));
create policy operator_all on tenants to current_user using (true) with check (true);

alter table users enable row level security;
alter table users force row level security;
create policy user_read on users for select using (
    id = (select stockade_user())
    or email = (select stockade_login_email())
    or exists (select 1 from memberships m where m.user_id = users.id
               and m.tenant_id = (select stockade_tenant())));
create policy user_self_update on users for update
    using (id = (select stockade_user())) with check (id = (select stockade_user()));
create policy operator_all on users to current_user using (true) with check (true);

alter table password_history enable row level security;
alter table password_history force row level security;
create policy history_self on password_history
    using (user_id = (select stockade_user())) with check (user_id = (select stockade_user()));
create policy operator_all on password_history to current_user using (true) with check (true);

alter table memberships enable row level security;
alter table memberships force row level security;
create policy membership_read on memberships for select using (
    tenant_id = (select stockade_tenant()) or user_id = (select stockade_user()));
create policy membership_manage on memberships for all
    using (tenant_id = (select stockade_tenant()) and (select stockade_can('members:manage')))
    with check (tenant_id = (select stockade_tenant()) and (select stockade_can('members:manage')));
create policy operator_all on memberships to current_user using (true) with check (true);

alter table authorization_codes enable row level security;
alter table authorization_codes force row level security;
create policy tenant_scope on authorization_codes
    using (tenant_id = (select stockade_tenant()))
    with check (tenant_id = (select stockade_tenant()));

alter table refresh_tokens enable row level security;
alter table refresh_tokens force row level security;
create policy tenant_scope on refresh_tokens
    using (tenant_id = (select stockade_tenant()))
    with check (tenant_id = (select stockade_tenant()));

alter table tickets enable row level security;
alter table tickets force row level security;
create policy tickets_read on tickets for select
    using (tenant_id = (select stockade_tenant()) and (select stockade_can('tickets:read')));
create policy tickets_insert on tickets for insert
    with check (tenant_id = (select stockade_tenant()) and (select stockade_can('tickets:write')));
create policy tickets_update on tickets for update
    using (tenant_id = (select stockade_tenant()) and (select stockade_can('tickets:write')))
    with check (tenant_id = (select stockade_tenant()));
create policy tickets_delete on tickets for delete
    using (tenant_id = (select stockade_tenant()) and (select stockade_can('tickets:write')));
create policy operator_all on tickets to current_user using (true) with check (true);
"""

# The application role gets exactly these privileges and owns nothing.
_GRANTS = {
    "role_permissions": "select",
    "tenants": "select",
    "users": "select, update",
    "password_history": "select, insert, delete",
    "memberships": "select, insert, update, delete",
    "oauth_clients": "select",
    "browser_sessions": "select, insert, update, delete",
    "authorization_codes": "select, insert, update",
    "refresh_tokens": "select, insert, update",
    "tickets": "select, insert, update, delete",
}


def upgrade() -> None:
    role = op.get_bind().dialect.identifier_preparer.quote(context.config.attributes["app_role"])
    op.execute(_FUNCTIONS)
    op.execute(_TABLES)
    op.execute(_POLICIES)
    op.execute(f"grant usage on schema public to {role}")
    for table, privileges in _GRANTS.items():
        op.execute(f"grant {privileges} on {table} to {role}")
