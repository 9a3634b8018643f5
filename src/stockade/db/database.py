"""Open the database: start or reach PostgreSQL, set up the two roles, migrate.

Two roles take part. The owner runs migrations and owns every table; the operator's
command-line actions use it too. The application role, which serves every request, owns
nothing, is no superuser and cannot bypass RLS; ``open_database`` checks this and
refuses to start otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import structlog
from alembic import command
from alembic.config import Config
from psycopg import sql
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL, make_url

from stockade.config import ConfigError, Settings
from stockade.db.embedded import start_embedded_server
from stockade.keys import KeyStore

log = structlog.get_logger(__name__)

_EMBEDDED_OWNER = "stockade_owner"
_EMBEDDED_DATABASE = "stockade"
_APP_PASSWORD_SECRET = "database-app-password"  # noqa: S105 - a key store name
_MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same in every Stockade process.
_MIGRATION_LOCK = 7_305_117_451


@dataclass
class Database:
    owner: Engine
    app: Engine
    app_role: str

    def dispose(self) -> None:
        self.app.dispose()
        self.owner.dispose()


def open_database(settings: Settings, keystore: KeyStore, *, pool_size: int = 10) -> Database:
    """Reach PostgreSQL, create the application role, run migrations, and check roles."""
    app_password = keystore.get_or_create_secret(_APP_PASSWORD_SECRET).reveal()
    if settings.database_url:
        owner_url = _psycopg_url(settings.database_url)
        _ensure_app_role(owner_url, settings.app_db_role, app_password)
    else:
        superuser_url = start_embedded_server(settings.postgres_dir)
        _prepare_embedded(superuser_url, settings.app_db_role, app_password)
        owner_url = superuser_url.set(username=_EMBEDDED_OWNER, database=_EMBEDDED_DATABASE)

    # hide_parameters keeps request data out of exception messages and so out of logs.
    owner = create_engine(owner_url, pool_size=2, max_overflow=2, hide_parameters=True)
    migrate(owner, settings.app_db_role)

    app_url = owner_url.set(username=settings.app_db_role, password=app_password)
    app = create_engine(app_url, pool_size=pool_size, max_overflow=pool_size, hide_parameters=True)
    _check_app_role(app)
    return Database(owner=owner, app=app, app_role=settings.app_db_role)


def migrate(owner: Engine, app_role: str) -> None:
    """Bring the schema to the newest revision; concurrent starts take turns."""
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["app_role"] = app_role
    with owner.connect() as connection:
        connection.execute(text("select pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK})
        connection.commit()
        try:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            connection.commit()
        finally:
            connection.execute(text("select pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK})
            connection.commit()


def _psycopg_url(raw: str) -> URL:
    try:
        url = make_url(raw)
    except Exception as exc:
        raise ConfigError("STOCKADE_DATABASE_URL is not a valid database URL") from exc
    if url.get_backend_name() != "postgresql":
        raise ConfigError("STOCKADE_DATABASE_URL must point at PostgreSQL 15 or newer")
    return url.set(drivername="postgresql+psycopg")


def _connect(url: URL) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=url.query.get("host") or url.host,  # type: ignore[arg-type]
        port=url.port,
        user=url.username,
        password=url.password,
        dbname=url.database,
        autocommit=True,
    )


def _prepare_embedded(superuser_url: URL, app_role: str, app_password: str) -> None:
    """Create the owner role, the database and its extensions on the embedded server."""
    with _connect(superuser_url) as conn:
        if not conn.execute(
            "select 1 from pg_roles where rolname = %s", [_EMBEDDED_OWNER]
        ).fetchone():
            conn.execute(sql.SQL("create role {} login").format(sql.Identifier(_EMBEDDED_OWNER)))
        exists = conn.execute(
            "select 1 from pg_database where datname = %s", [_EMBEDDED_DATABASE]
        ).fetchone()
        if not exists:
            conn.execute(
                sql.SQL("create database {} owner {}").format(
                    sql.Identifier(_EMBEDDED_DATABASE), sql.Identifier(_EMBEDDED_OWNER)
                )
            )
    _ensure_app_role(superuser_url.set(database=_EMBEDDED_DATABASE), app_role, app_password)
    with _connect(superuser_url.set(database=_EMBEDDED_DATABASE)) as conn:
        # Extensions need a superuser; vector search tables use pgvector.
        conn.execute("create extension if not exists vector")


def _ensure_app_role(url: URL, role: str, password: str) -> None:
    statement = (
        "create role {} login password {} nosuperuser nobypassrls nocreatedb nocreaterole noinherit"
    )
    try:
        with _connect(url) as conn:
            found = conn.execute("select 1 from pg_roles where rolname = %s", [role]).fetchone()
            if not found:
                conn.execute(sql.SQL(statement).format(sql.Identifier(role), sql.Literal(password)))
                log.info("database_role_created", role=role)
            else:
                conn.execute(
                    sql.SQL("alter role {} password {}").format(
                        sql.Identifier(role), sql.Literal(password)
                    )
                )
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ConfigError(
            f"the database owner may not create or alter role {role!r}; "
            "grant it CREATEROLE, or create the role yourself"
        ) from exc
    except psycopg.OperationalError as exc:
        raise ConfigError(
            f"cannot connect to PostgreSQL: {exc.sqlstate or 'connection failed'}"
        ) from exc


def _check_app_role(app: Engine) -> None:
    """Refuse to serve through a role that could read past RLS."""
    with app.connect() as connection:
        row = connection.execute(
            text(
                "select r.rolsuper, r.rolbypassrls,"
                " (select count(*) from pg_class c where c.relowner = r.oid"
                "  and c.relnamespace = 'public'::regnamespace)"
                " from pg_roles r where r.rolname = current_user"
            )
        ).one()
    superuser, bypass, owned = row
    if superuser or bypass or owned:
        raise ConfigError(
            "the application database role must not be a superuser, bypass RLS or own "
            f"tables (superuser={superuser}, bypassrls={bypass}, tables owned={owned})"
        )
