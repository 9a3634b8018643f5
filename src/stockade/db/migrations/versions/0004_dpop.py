"""DPoP proof replay cache and token binding.

Revision ID: 0004
Revises: 0003
"""

from alembic import context, op

revision = "0004"
down_revision = "0003"

# The jti of every accepted DPoP proof, shared by all Stockade processes, so a proof
# replayed to another process is caught too. A row is keyed by the SHA-256 of the proof
# key's thumbprint and the jti, and is kept until the proof would be too old to accept.
# It has no tenant and no RLS, like signin_throttle, because proofs are checked before
# any tenant is known, and the table holds only digests and times.
_REPLAY_CACHE = """
create table dpop_proofs (
    proof_hash bytea primary key check (length(proof_hash) = 32),
    expires_at timestamptz not null
);
create index dpop_proofs_expiry on dpop_proofs (expires_at);
"""

_BINDING = """
-- RFC 7638 thumbprint of the key that a public client's refresh tokens are bound to;
-- null for an unbound family, and always null for confidential clients.
alter table token_families add column dpop_jkt text;

-- A tenant that requires DPoP refuses unbound tokens at the token endpoint and at
-- every resource route.
alter table tenants add column require_dpop boolean not null default false;
"""

_GRANTS = {
    "dpop_proofs": "select, insert, delete",
}


def upgrade() -> None:
    role = op.get_bind().dialect.identifier_preparer.quote(context.config.attributes["app_role"])
    op.execute(_REPLAY_CACHE)
    op.execute(_BINDING)
    for table, privileges in _GRANTS.items():
        op.execute(f"grant {privileges} on {table} to {role}")
