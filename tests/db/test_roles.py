"""The application role cannot read past RLS, and every tenant table enforces RLS."""

from __future__ import annotations

from sqlalchemy import Engine, text

from stockade.runtime import Runtime
from tests.test_isolation import tenant_tables


def app_role_flag(app: Engine, column: str) -> bool:
    # ``column`` is one of the fixed pg_roles names passed by the tests below.
    statement = f"select {column} from pg_roles where rolname = current_user"  # noqa: S608
    with app.connect() as conn:
        return bool(conn.execute(text(statement)).scalar_one())


def test_app_role_not_superuser(runtime: Runtime) -> None:
    assert app_role_flag(runtime.db.app, "rolsuper") is False


def test_app_role_cannot_bypass_rls(runtime: Runtime) -> None:
    assert app_role_flag(runtime.db.app, "rolbypassrls") is False


def test_app_role_owns_no_relation(runtime: Runtime) -> None:
    with runtime.db.app.connect() as conn:
        owned = (
            conn.execute(
                text(
                    "select c.oid::regclass::text from pg_class c"
                    " join pg_roles r on r.oid = c.relowner"
                    " where r.rolname = current_user"
                )
            )
            .scalars()
            .all()
        )
    assert owned == []


def test_app_role_cannot_act_as_owner(runtime: Runtime) -> None:
    # Membership in the owner role would let the app role SET ROLE to it, and the
    # owner's operator policies see every tenant's rows.
    with runtime.db.app.connect() as conn:
        reachable = (
            conn.execute(
                text(
                    "select distinct r.rolname from pg_class c"
                    " join pg_roles r on r.oid = c.relowner"
                    " where c.relnamespace = 'public'::regnamespace"
                    " and pg_has_role(current_user, c.relowner, 'MEMBER')"
                )
            )
            .scalars()
            .all()
        )
    assert reachable == []


def rls_flags(owner: Engine) -> dict[str, tuple[bool, bool]]:
    """Map each tenant table to its (relrowsecurity, relforcerowsecurity) pair."""
    tables = tenant_tables(owner)
    with owner.connect() as conn:
        rows = conn.execute(
            text(
                "select relname, relrowsecurity, relforcerowsecurity from pg_class"
                " where relnamespace = 'public'::regnamespace and relname = any(:tables)"
            ),
            {"tables": tables},
        ).all()
    return {row[0]: (row[1], row[2]) for row in rows}


def test_tenant_tables_enable_rls(runtime: Runtime) -> None:
    flags = rls_flags(runtime.db.owner)
    assert "tickets" in flags
    assert [table for table, (enabled, _) in flags.items() if not enabled] == []


def test_tenant_tables_force_rls(runtime: Runtime) -> None:
    flags = rls_flags(runtime.db.owner)
    assert "tickets" in flags
    assert [table for table, (_, forced) in flags.items() if not forced] == []
