"""PostgreSQL: the engines, migrations, tenant-scoped transactions and RLS policies."""

from stockade.db.database import Database, open_database
from stockade.db.scope import Scope, scoped_transaction

__all__ = ["Database", "Scope", "open_database", "scoped_transaction"]
