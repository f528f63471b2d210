"""Plumbing shared by the benchmark scripts in bench/.

Each benchmark owns a database on the PostgreSQL server of DATABASE_URL. The
database is dropped and created again at the start of a run (unless
--reuse), and Django is set up against it only afterwards, because settings
read DATABASE_URL once, at import.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import secrets
import statistics
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SERVER_URL = "postgres://postgres@127.0.0.1:5432"


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the benchmark database from an earlier run instead of "
        "dropping and creating it",
    )
    return parser


def database_url_for(name: str) -> str:
    """DATABASE_URL (or the local default) with its database set to `name`."""
    parts = urlsplit(os.environ.get("DATABASE_URL") or DEFAULT_SERVER_URL)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


def _admin_connect(url: str) -> Any:
    import psycopg

    parts = urlsplit(url)
    maintenance = urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))
    return psycopg.connect(maintenance, autocommit=True)


def database_recreate(url: str) -> None:
    """Drop the benchmark database (even with sessions open) and create it."""
    from psycopg import sql

    name = urlsplit(url).path.lstrip("/")
    with _admin_connect(url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)
            )
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def database_ensure(url: str) -> bool:
    """Create the database if it is missing; True when it was created."""
    from psycopg import sql

    name = urlsplit(url).path.lstrip("/")
    with _admin_connect(url) as conn:
        found = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [name]
        ).fetchone()
        if found:
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return True


def django_start(*, database: str, reuse: bool) -> str:
    """Prepare the benchmark database and set Django up against it.

    Runs `migrate_schemas --shared` and makes sure the public tenant exists.
    Returns the database URL, for child processes such as the WSGI server.
    """
    url = database_url_for(database)
    if reuse:
        created = database_ensure(url)
        log(f"database {database}: {'created' if created else 'reused'}")
    else:
        database_recreate(url)
        log(f"database {database}: dropped and created")
    os.environ["DATABASE_URL"] = url
    os.environ["PORTAL_DEBUG"] = "1"
    os.environ["DJANGO_SETTINGS_MODULE"] = "portal.settings"
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)

    import django

    django.setup()

    from django.core.management import call_command

    from tenants.services import public_tenant_ensure

    started = time.perf_counter()
    call_command("migrate_schemas", shared=True, interactive=False, verbosity=0)
    public_tenant_ensure()
    log(f"migrate_schemas --shared: {time.perf_counter() - started:.1f} s")
    return url


@contextmanager
def in_bench_tenant(slug: str) -> Iterator[Any]:
    """Enter the bench tenant's schema, with the audit actor set to the bench."""
    from django_tenants.utils import tenant_context

    from portal import context
    from tenants.models import Tenant

    tenant = Tenant.objects.get(slug=slug)
    with (
        context.actor_context(actor_type="system", actor_label="bench", source="cli"),
        tenant_context(tenant),
    ):
        yield tenant


def bench_tenant_ensure(*, slug: str, name: str) -> None:
    """Provision the bench tenant unless it is already active."""
    from portal import context
    from tenants.models import Tenant
    from tenants.services import tenant_provision

    if Tenant.objects.filter(slug=slug, status="active").exists():
        return
    with context.actor_context(actor_type="system", actor_label="bench", source="cli"):
        tenant_provision(slug=slug, name=name, owner_email=f"owner@{slug}.test")


def owner_password_reset(*, schema_name: str) -> tuple[str, str]:
    """Give the tenant's owner a fresh password; return (email, password).

    Resetting works the same on a new and a reused database, so no password
    has to be stored between runs.
    """
    from django_tenants.utils import tenant_context

    from portal import context
    from portal.models import Member
    from portal.roles import Role
    from portal.services.members import member_owner_ensure
    from tenants.models import Tenant

    password = "Bench-" + secrets.token_urlsafe(18)
    with (
        context.actor_context(actor_type="system", actor_label="bench", source="cli"),
        tenant_context(Tenant.objects.get(schema_name=schema_name)),
    ):
        email = (
            Member.objects.filter(role=Role.OWNER)
            .order_by("pk")
            .values_list("email", flat=True)
            .first()
        )
        if email is None:
            raise SystemExit(f"{schema_name} has no owner")
        member_owner_ensure(email=email, password=password)
    return email, password


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (p95 of 200 samples is the 190th smallest)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain fixed-width table, right-aligned except the first column."""
    body = [[str(cell) for cell in row] for row in rows]
    widths = [
        max(len(headers[i]), *(len(row[i]) for row in body)) if body else len(h)
        for i, h in enumerate(headers)
    ]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(widths[i + 1]) for i, cell in enumerate(cells[1:])]
        return "  ".join([first, *rest]).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(row) for row in body)
    return "\n".join(out)


def log(message: str) -> None:
    """Progress goes to stderr so stdout holds only the figures."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _memory_total() -> str:
    try:
        with open("/proc/meminfo") as handle:
            for row in handle:
                if row.startswith("MemTotal:"):
                    kib = int(row.split()[1])
                    return f"{kib / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for row in handle:
                if row.startswith("model name"):
                    return row.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_report() -> str:
    """The machine, for the results table in docs/benchmarks.md."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        server_version = cursor.fetchone()[0]
    now = datetime.datetime.now().astimezone()
    load = os.getloadavg()
    lines = [
        f"date      {now.isoformat(timespec='seconds')}",
        f"cpu       {os.cpu_count()} x {_cpu_model()}",
        f"memory    {_memory_total()}",
        f"load      {' '.join(f'{x:.2f}' for x in load)} (1/5/15 min, at start)",
        f"python    {platform.python_version()}",
        f"postgres  {server_version}",
    ]
    return "\n".join(lines)
