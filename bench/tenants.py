"""TEN-16 scale benchmark: provision many tenants, then compare latency.

    .venv/bin/python bench/tenants.py [--tenants 1000] [--compare-clone]

On its own database (`bench_tenants`, dropped and created unless --reuse)
the script provisions N tenants through `tenants.services.tenant_provision`
and prints:

1. creation time: first, median, p95, total, seconds per tenant, and the
   median of the first 100 against the last 100; with --compare-clone the
   tenants alternate between the two TEN-4 methods (migrate, clone from
   `template_tenant`) so both see the same catalog growth;
2. catalog size and the time of a no-op `migrate_schemas --tenant`;
3. latency through the real WSGI server (gunicorn on loopback): tenants 1
   and N get identical data (500 members, 1,000 audit events), their owners
   sign in, and after a warm-up every page gets --requests interleaved
   requests per tenant.

Exit status 0 only if tenant N's median on every page is within 10% of
tenant 1's (the TEN-16 check); 1 otherwise.
"""

from __future__ import annotations

import http.client
import io
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402 - the bench folder is not a package
    ROOT,
    base_parser,
    django_start,
    log,
    machine_report,
    median,
    ms,
    owner_password_reset,
    percentile,
    table,
)

DATABASE = "bench_tenants"
LATENCY_TOLERANCE = 0.10
CREATION_TARGET_S = 1.0
SEED_MEMBERS = 500
SEED_AUDIT_EVENTS = 1000
# Shared by both latency tenants so their data is identical, emails included.
SEED_DOMAIN = "bench.test"
SEED_ACTION = "bench.seeded_event"


@dataclass
class Creation:
    index: int
    slug: str
    method: str
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)


def slug_for(index: int, total: int) -> str:
    return f"bench-{index:0{max(4, len(str(total)))}d}"


# ---------------------------------------------------------------- creation


def template_ensure() -> None:
    """The TEN-4 template, made by the same service provisioning uses."""
    from tenants.services import template_tenant_ensure

    started = time.perf_counter()
    template_tenant_ensure()
    log(f"template ready in {time.perf_counter() - started:.2f} s")


def provision_one(index: int, total: int, *, clone: bool) -> Creation:
    from django.db import connection
    from django.test import override_settings

    from tenants.services import tenant_provision

    slug = slug_for(index, total)
    marks: list[tuple[str, float]] = []

    def progress(step: str) -> None:
        marks.append((step, time.perf_counter()))

    started = time.perf_counter()
    with override_settings(TENANT_CREATION_FAKES_MIGRATIONS=clone):
        tenant_provision(
            slug=slug,
            name=f"Bench {index}",
            owner_email=f"owner@{slug}.test",
            progress=progress,
        )
    seconds = time.perf_counter() - started
    connection.set_schema_to_public()
    # progress() marks the start of each step; a phase runs to the next mark.
    phases: dict[str, float] = {}
    previous_name, previous_at = "validate", started
    for name, at in marks:
        phases[previous_name] = at - previous_at
        previous_name, previous_at = name, at
    return Creation(index, slug, "clone" if clone else "migrate", seconds, phases)


def provision_all(total: int, *, compare_clone: bool) -> list[Creation]:
    from django.conf import settings

    from portal import context
    from tenants.models import Tenant

    default_clone = bool(settings.TENANT_CREATION_FAKES_MIGRATIONS)
    existing = set(Tenant.objects.values_list("slug", flat=True))
    results: list[Creation] = []
    run_started = time.perf_counter()
    with context.actor_context(actor_type="system", actor_label="bench", source="cli"):
        for index in range(1, total + 1):
            if slug_for(index, total) in existing:
                continue
            clone = index % 2 == 0 if compare_clone else default_clone
            results.append(provision_one(index, total, clone=clone))
            if len(results) % 50 == 0:
                recent = [r.seconds for r in results[-50:]]
                log(
                    f"provisioned {index}/{total}: last 50 median "
                    f"{median(recent):.3f} s, elapsed "
                    f"{time.perf_counter() - run_started:.0f} s"
                )
    return results


def creation_report(results: list[Creation], total: int) -> None:
    print(f"\n== Creation ({len(results)} tenants through tenant_provision) ==")
    if not results:
        print("nothing provisioned: every bench tenant already exists (--reuse)")
        return
    groups: dict[str, list[Creation]] = {}
    for result in results:
        groups.setdefault(result.method, []).append(result)
    if len(groups) > 1:
        groups["all"] = results
    rows = []
    for method, items in groups.items():
        seconds = [r.seconds for r in items]
        # First 100 against last 100; halves when there are fewer than 200,
        # so the two never overlap.
        edge = max(1, min(100, len(seconds) // 2))
        head = seconds[:edge]
        tail = seconds[-edge:]
        rows.append(
            [
                method,
                len(items),
                f"{seconds[0]:.3f}",
                f"{median(seconds):.3f}",
                f"{percentile(seconds, 0.95):.3f}",
                f"{sum(seconds):.1f}",
                f"{sum(seconds) / len(seconds):.3f}",
                f"{median(head):.3f}",
                f"{median(tail):.3f}",
                f"{median(tail) / median(head):.2f}",
            ]
        )
    print(
        table(
            [
                "method",
                "n",
                "first s",
                "median s",
                "p95 s",
                "total s",
                "s/tenant",
                "first100 med",
                "last100 med",
                "last/first",
            ],
            rows,
        )
    )
    if len(results) < 200:
        print("(fewer than 200 tenants: first100/last100 compare the two halves)")
    print("\nphases, median ms (validate = checks before the tenant row):")
    phase_names = list(dict.fromkeys(p for r in results for p in r.phases))
    phase_rows = []
    for method, items in groups.items():
        phase_rows.append(
            [method]
            + [
                ms(median([r.phases.get(name, 0.0) for r in items]))
                for name in phase_names
            ]
        )
    print(table(["method", *phase_names], phase_rows))
    for method, items in groups.items():
        per_tenant = sum(r.seconds for r in items) / len(items)
        verdict = "met" if per_tenant <= CREATION_TARGET_S else "MISSED"
        print(
            f"target <= {CREATION_TARGET_S:.1f} s per tenant ({method}): "
            f"{per_tenant:.3f} s, {verdict}"
        )


# ----------------------------------------------------------------- catalog


def catalog_size() -> dict[str, int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT pg_database_size(current_database()),
                   (SELECT count(*) FROM pg_class),
                   (SELECT count(*) FROM pg_attribute),
                   (SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)
                      FROM pg_class c
                      JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = 'pg_catalog'),
                   (SELECT count(*) FROM pg_namespace WHERE nspname LIKE 't\\_%%')
            """
        )
        database, classes, attributes, catalog, schemas = cursor.fetchone()
    return {
        "database bytes": database,
        "pg_catalog bytes": catalog,
        "pg_class rows": classes,
        "pg_attribute rows": attributes,
        "tenant schemas": schemas,
    }


def catalog_report(before: dict[str, int], after: dict[str, int]) -> None:
    print("\n== Catalog ==")
    added = after["tenant schemas"] - before["tenant schemas"]
    rows = []
    for key in before:
        delta = after[key] - before[key]
        per = f"{delta / added:,.0f}" if added and key != "tenant schemas" else ""
        rows.append([key, f"{before[key]:,}", f"{after[key]:,}", per])
    print(table(["", "before tenants", "after", "per tenant"], rows))


def noop_migrate_report() -> None:
    from django.core.management import call_command
    from django.db import connection

    from tenants.models import Tenant

    schemas = Tenant.objects.exclude(schema_name="public").count()
    started = time.perf_counter()
    call_command(
        "migrate_schemas",
        tenant=True,
        interactive=False,
        verbosity=0,
        stdout=io.StringIO(),
    )
    seconds = time.perf_counter() - started
    connection.set_schema_to_public()
    print("\n== No-op migrate_schemas --tenant (in-process, standard executor) ==")
    print(
        f"{schemas} schemas: {seconds:.1f} s total, "
        f"{seconds / max(1, schemas) * 1000:.1f} ms per schema  (baseline)"
    )
    # TEN-6: what deploys run instead. migrate_portal compares each
    # schema's django_migrations with the graph and migrates none here.
    started = time.perf_counter()
    call_command("migrate_portal", stdout=io.StringIO(), stderr=io.StringIO())
    seconds = time.perf_counter() - started
    connection.set_schema_to_public()
    verdict = "met" if seconds < 10 else "MISSED"
    print(
        f"migrate_portal (shared + pre-check, nothing behind): {seconds:.1f} s total, "
        f"{seconds / max(1, schemas) * 1000:.1f} ms per schema; "
        f"target < 10 s at 1,000 tenants: {verdict}"
    )


# ----------------------------------------------------------------- latency


def seed_tenant(slug: str) -> int:
    """Give a tenant the identical latency data set; return a member id for
    the API detail page. Re-runnable: existing seed rows are kept."""
    from datetime import timedelta

    from django.db import connection
    from django.utils import timezone
    from django_tenants.utils import tenant_context

    from portal import context
    from portal.models import AuditEvent, Member, MemberGroup
    from portal.services.demo import demo_members_seed
    from tenants.models import Tenant

    tenant = Tenant.objects.get(slug=slug)
    with (
        context.actor_context(actor_type="system", actor_label="bench", source="cli"),
        tenant_context(tenant),
    ):
        demo_members_seed(count=SEED_MEMBERS, domain=SEED_DOMAIN)
        have = AuditEvent.objects.filter(action=SEED_ACTION).count()
        # A fixed clock keeps both tenants' rows byte-for-byte alike.
        base = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
        AuditEvent.objects.bulk_create(
            [
                AuditEvent(
                    occurred_at=base - timedelta(minutes=n),
                    actor_type="system",
                    actor_label="bench",
                    action=SEED_ACTION,
                    target_type="portal.member",
                    target_id=str(n % SEED_MEMBERS + 2),
                    changes={"n": n, "field": "department", "to": "Sales"},
                    source="cli",
                )
                for n in range(have, SEED_AUDIT_EVENTS)
            ],
            batch_size=1000,
        )
        # Fresh bulk loads have no statistics yet; autovacuum might analyze
        # one tenant and not the other mid-run and skew the comparison.
        with connection.cursor() as cursor:
            for model in (Member, Member.groups.through, MemberGroup, AuditEvent):
                cursor.execute(f'ANALYZE "{model._meta.db_table}"')  # noqa: S608
        detail = (
            Member.objects.filter(email__endswith="@" + SEED_DOMAIN)
            .order_by("pk")
            .values_list("pk", flat=True)[SEED_MEMBERS // 2]
        )
    connection.set_schema_to_public()
    return detail


class HttpSession:
    """One browser: a cookie jar and a Host header, over http.client."""

    def __init__(self, port: int, host: str) -> None:
        self.port = port
        self.host = host
        self.cookies: dict[str, str] = {}
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes, float]:
        sent = {"Host": self.host, "User-Agent": "bench/tenants", **(headers or {})}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        started = time.perf_counter()
        self.conn.request(method, path, body=body, headers=sent)
        response = self.conn.getresponse()
        data = response.read()
        elapsed = time.perf_counter() - started
        for header in response.headers.get_all("Set-Cookie") or []:
            jar: SimpleCookie = SimpleCookie()
            jar.load(header)
            for name, morsel in jar.items():
                self.cookies[name] = morsel.value
        # Sync gunicorn workers close every connection; http.client reopens.
        return response.status, data, elapsed

    def login(self, email: str, password: str) -> None:
        status, page, _ = self.request("GET", "/accounts/login/")
        found = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        if status != 200 or not found:
            raise SystemExit(f"{self.host}: login page answered {status}")
        body = urlencode(
            {
                "username": email,
                "password": password,
                "csrfmiddlewaretoken": found.group(1).decode(),
            }
        ).encode()
        status, _, _ = self.request(
            "POST",
            "/accounts/login/",
            body=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        if status != 302 or "sessionid" not in self.cookies:
            raise SystemExit(f"{self.host}: login answered {status}, no session")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_start(
    *, database_url: str, port: int, workers: int, logfile: Path
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PORTAL_DEBUG": "1",
        "DJANGO_SETTINGS_MODULE": "portal.settings",
    }
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "portal.wsgi",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--chdir",
        str(ROOT),
        "--timeout",
        "120",
        "--log-level",
        "warning",
    ]
    with logfile.open("wb") as sink:
        process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            command, env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"gunicorn exited; see {logfile}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                return process
        except OSError:
            time.sleep(0.2)
    process.terminate()
    raise SystemExit(f"gunicorn did not answer /healthz within 60 s; see {logfile}")


def server_stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def latency_run(
    *,
    database_url: str,
    first: str,
    last: str,
    requests: int,
    warmup: int,
    workers: int,
) -> bool:
    from django.conf import settings
    from django.db import connection

    print(
        f"\n== Latency through gunicorn ({workers} sync workers, loopback): "
        f"{first} vs {last} =="
    )
    details = {slug: seed_tenant(slug) for slug in (first, last)}
    logins = {
        slug: owner_password_reset(schema_name="t_" + slug.replace("-", "_"))
        for slug in (first, last)
    }
    # The bench process holds no connection while the server is measured.
    connection.close()

    pages: dict[str, Callable[[str], str]] = {
        "/": lambda slug: "/",
        "/members/": lambda slug: "/members/",
        "/audit/": lambda slug: "/audit/",
        "/api/v1/members/<id>/": lambda slug: f"/api/v1/members/{details[slug]}/",
    }
    port = free_port()
    logfile = Path(tempfile.gettempdir()) / f"bench_tenants_gunicorn_{port}.log"
    process = server_start(
        database_url=database_url, port=port, workers=workers, logfile=logfile
    )
    samples: dict[tuple[str, str], list[float]] = {
        (slug, page): [] for slug in (first, last) for page in pages
    }
    try:
        sessions = {
            slug: HttpSession(port, f"{slug}.{settings.PORTAL_BASE_DOMAIN}")
            for slug in (first, last)
        }
        for slug, session in sessions.items():
            session.login(*logins[slug])
        total_rounds = warmup + requests
        started = time.perf_counter()
        for round_no in range(total_rounds):
            # Alternate which tenant goes first so neither always follows
            # the other's cache-warming request.
            order = (first, last) if round_no % 2 == 0 else (last, first)
            for page, path_for in pages.items():
                for slug in order:
                    status, _, elapsed = sessions[slug].request("GET", path_for(slug))
                    if status != 200:
                        raise SystemExit(f"{slug} {page} answered {status}")
                    if round_no >= warmup:
                        samples[(slug, page)].append(elapsed)
            if round_no and round_no % 100 == 0:
                log(
                    f"latency round {round_no}/{total_rounds}, "
                    f"{time.perf_counter() - started:.0f} s"
                )
    finally:
        server_stop(process)

    rows = []
    ok = True
    for page in pages:
        one, many = samples[(first, page)], samples[(last, page)]
        ratio = median(many) / median(one)
        within = ratio <= 1 + LATENCY_TOLERANCE
        ok = ok and within
        rows.append(
            [
                page,
                ms(median(one)),
                ms(percentile(one, 0.95)),
                ms(median(many)),
                ms(percentile(many, 0.95)),
                f"{ratio:.3f}",
                "ok" if within else "SLOWER",
            ]
        )
    print(
        f"{requests} measured requests per page per tenant after {warmup} "
        f"warm-up rounds; client-side ms including loopback"
    )
    print(
        table(
            [
                "page",
                f"{first} med",
                "p95",
                f"{last} med",
                "p95",
                "N/1 median",
                "within 10%",
            ],
            rows,
        )
    )
    return ok


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=1000, help="default 1000")
    parser.add_argument(
        "--compare-clone",
        action="store_true",
        help="alternate tenants between migrating and cloning template_tenant",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=500,
        help="measured requests per page per tenant (default 500)",
    )
    parser.add_argument(
        "--warmup", type=int, default=25, help="warm-up rounds (default 25)"
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument(
        "--skip-latency",
        action="store_true",
        help="stop after creation and catalog figures (the check is not run)",
    )
    args = parser.parse_args()
    if args.tenants < 2:
        parser.error("--tenants must be at least 2 (tenant 1 is compared with N)")

    database_url = django_start(database=DATABASE, reuse=args.reuse)

    from django.conf import settings

    print("== Machine ==")
    print(machine_report())
    default_method = "clone" if settings.TENANT_CREATION_FAKES_MIGRATIONS else "migrate"
    print(
        f"tenants {args.tenants}, method "
        f"{'alternate migrate/clone' if args.compare_clone else default_method}"
    )

    if args.compare_clone or settings.TENANT_CREATION_FAKES_MIGRATIONS:
        # Without the template, django-tenants silently migrates instead.
        template_ensure()
    before = catalog_size()
    log(f"provisioning {args.tenants} tenants")
    results = provision_all(args.tenants, compare_clone=args.compare_clone)
    creation_report(results, args.tenants)
    catalog_report(before, catalog_size())
    noop_migrate_report()

    if args.skip_latency:
        print("\nlatency skipped (--skip-latency): TEN-16 check not run")
        return 0
    ok = latency_run(
        database_url=database_url,
        first=slug_for(1, args.tenants),
        last=slug_for(args.tenants, args.tenants),
        requests=args.requests,
        warmup=args.warmup,
        workers=args.workers,
    )
    print(
        f"\nTEN-16 check: tenant {args.tenants}'s median within 10% of tenant 1's "
        f"on every page: {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
