"""The embedded PostgreSQL server (pgserver) kept under the data folder."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from sqlalchemy.engine import URL, make_url


def start_embedded_server(folder: Path) -> URL:
    """Start (or attach to) the server in ``folder`` and return its superuser URL.

    Several Stockade processes on one data folder share one server; pgserver stops it
    when the last of them exits.
    """
    # pgserver logs every step at INFO and warns about a missing XDG runtime folder.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        folder.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(  # type: ignore[attr-defined]
            folder.resolve(), cleanup_mode="stop"
        )
    url = make_url(server.get_uri())
    return url.set(drivername="postgresql+psycopg")
