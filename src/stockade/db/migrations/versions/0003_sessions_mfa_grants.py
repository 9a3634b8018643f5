"""Token families, revocation watermarks, MFA, member grants and approvals.

Revision ID: 0003
Revises: 0002
"""

from alembic import context, op

revision = "0003"
down_revision = "0002"

_SESSIONS = """
-- A family is every access and refresh token descended from one authorization code.
-- Access tokens carry its id as `sid`, so revoking the family stops them on their next
-- request, not at their expiry.
create table token_families (
    id uuid primary key,
    tenant_id uuid not null references tenants (id) on delete cascade,
    user_id uuid not null references users (id) on delete cascade,
    client_id text not null references oauth_clients (client_id) on delete cascade,
    browser_session bytea,
    created_at timestamptz not null default now(),
    revoked_at timestamptz,
    revoked_reason text
);
create index token_families_member on token_families (tenant_id, user_id);
create index token_families_user on token_families (user_id);
alter table token_families enable row level security;
alter table token_families force row level security;
create policy tenant_scope on token_families
    using (tenant_id = (select stockade_tenant()))
    with check (tenant_id = (select stockade_tenant()));
-- A user signs out of their own sessions in every tenant.
create policy own_families on token_families for select using (user_id = (select stockade_user()));
create policy own_families_revoke on token_families for update
    using (user_id = (select stockade_user())) with check (user_id = (select stockade_user()));
create policy operator_all on token_families to current_user using (true) with check (true);

alter table authorization_codes add column browser_session bytea;

-- Tokens issued before tokens_not_before are refused ("sign out everywhere").
alter table users
    add column tokens_not_before timestamptz not null default '-infinity',
    add column disabled_at timestamptz;
"""

_MFA = """
create table mfa_totp (
    user_id uuid primary key references users (id) on delete cascade,
    secret_ciphertext bytea not null,
    confirmed_at timestamptz,
    last_used_step bigint not null default 0,
    created_at timestamptz not null default now()
);
alter table mfa_totp enable row level security;
alter table mfa_totp force row level security;
create policy own_factor on mfa_totp
    using (user_id = (select stockade_user())) with check (user_id = (select stockade_user()));
create policy operator_all on mfa_totp to current_user using (true) with check (true);

create table mfa_recovery_codes (
    id bigint generated always as identity primary key,
    user_id uuid not null references users (id) on delete cascade,
    code_hash bytea not null,
    used_at timestamptz
);
create index mfa_recovery_codes_user on mfa_recovery_codes (user_id);
alter table mfa_recovery_codes enable row level security;
alter table mfa_recovery_codes force row level security;
create policy own_codes on mfa_recovery_codes
    using (user_id = (select stockade_user())) with check (user_id = (select stockade_user()));
create policy operator_all on mfa_recovery_codes to current_user using (true) with check (true);

-- A session that passed the password but not yet the second factor.
alter table browser_sessions
    add column mfa_pending boolean not null default false,
    add column mfa_failures integer not null default 0;
"""

_MEMBERS = """
-- Granting a privileged role waits here until a second admin decides. The checks keep
-- the requester, and the member who would get the role, from deciding it.
create table grant_requests (
    id uuid primary key default gen_random_uuid(),
    tenant_id uuid not null references tenants (id) on delete cascade,
    user_id uuid not null references users (id) on delete cascade,
    role text not null,
    requested_by uuid not null references users (id) on delete cascade,
    status text not null default 'pending'
        check (status in ('pending', 'approved', 'rejected', 'cancelled')),
    decided_by uuid references users (id) on delete set null,
    decided_at timestamptz,
    created_at timestamptz not null default now(),
    check (decided_by is null or (decided_by <> requested_by and decided_by <> user_id))
);
create unique index grant_requests_one_pending on grant_requests (tenant_id, user_id, role)
    where status = 'pending';
alter table grant_requests enable row level security;
alter table grant_requests force row level security;
create policy members_manage on grant_requests
    using (tenant_id = (select stockade_tenant()) and (select stockade_can('members:manage')))
    with check (tenant_id = (select stockade_tenant()) and (select stockade_can('members:manage')));

-- An invited user without a password sets one through the invitation link.
create table invitations (
    token_hash bytea primary key,
    tenant_id uuid not null references tenants (id) on delete cascade,
    user_id uuid not null references users (id) on delete cascade,
    invited_by uuid references users (id) on delete set null,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    accepted_at timestamptz
);
alter table invitations enable row level security;
alter table invitations force row level security;
create policy tenant_scope on invitations
    using (tenant_id = (select stockade_tenant()))
    with check (tenant_id = (select stockade_tenant()));

-- Inviting creates the user row; a user row grants nothing without a membership.
create policy user_invite on users for insert
    with check ((select stockade_can('members:manage')));
"""

_GRANTS = {
    "token_families": "select, insert, update",
    "mfa_totp": "select, insert, update, delete",
    "mfa_recovery_codes": "select, insert, update, delete",
    "grant_requests": "select, insert, update",
    "invitations": "select, insert, update",
    "users": "insert",
}


def upgrade() -> None:
    role = op.get_bind().dialect.identifier_preparer.quote(context.config.attributes["app_role"])
    op.execute(_SESSIONS)
    op.execute(_MFA)
    op.execute(_MEMBERS)
    for table, privileges in _GRANTS.items():
        op.execute(f"grant {privileges} on {table} to {role}")
