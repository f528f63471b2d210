"""The embedded PostgreSQL used when DATABASE_URL is unset (TEN-12).

pgserver ships PostgreSQL binaries in a pip package. The server lives in
PORTAL_DATA_DIR/pgdata, listens on a Unix socket only with trust auth, and
stops when the last process attached to it exits. Never used in production:
settings refuse it when PORTAL_DEBUG is off unless tests opt in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

DATABASE_NAME = "portal"


def server_uri(data_dir: Path) -> str:
    """Start or attach to the embedded server and return its libpq URI."""
    import pgserver

    pgdata = data_dir / "pgdata"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        # pgserver runs postgres as the `pgserver` user when started by root;
        # that user must be able to reach the data directory.
        os.chmod(pgdata.parent, 0o755)  # noqa: S103 - traversal only, no secrets
    if pgdata.exists():
        handles_prune(data_dir)
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    # Keep a reference for the life of the process: the server stops when
    # the last handle is released.
    _SERVERS.append(server)
    uri: str = server.get_uri()
    return uri


_SERVERS: list[Any] = []


def handles_prune(data_dir: Path) -> None:
    """Forget attached processes that died without detaching.

    pgserver stops the server when the last attached process exits, using a
    list of pids in the data directory. A process killed by a signal never
    removes itself, and the server would then never stop on its own.
    """
    import json

    import psutil

    path = data_dir / "pgdata" / ".handle_pids.json"
    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]
    if alive != pids:
        path.write_text(json.dumps(alive))


def database_settings(data_dir: Path) -> dict[str, Any]:
    """Django DATABASES entry for the embedded server, creating the database."""
    uri = server_uri(data_dir)
    parsed = urlparse(uri)
    query = parse_qs(parsed.query)
    # HOST comes from the URI: long data paths fall back to a runtime dir.
    host = query.get("host", [parsed.hostname or ""])[0]
    user = parsed.username or "postgres"
    _ensure_database(uri)
    return {
        "NAME": DATABASE_NAME,
        "USER": user,
        "PASSWORD": "",
        "HOST": host,
        "PORT": str(parsed.port or ""),
    }


def _ensure_database(uri: str) -> None:
    import psycopg

    with psycopg.connect(uri, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE_NAME]
        ).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
