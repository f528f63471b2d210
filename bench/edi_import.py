"""EDI §5 benchmark: a full file applied end to end, beside a bare COPY.

    .venv/bin/python bench/edi_import.py [--rows 100000] [--reuse]

On its own database (`bench_edi_import`) and tenant `bench-edi`, for a
generated file of --rows rows (about 120 bytes each: employee id, email,
names, title, department, location, manager, seat, two groups), it times
four scenarios in order: the first load, the same data again, 10 % changed
+ 2 % new + 2 % absent, and every row changed. Each is received through
`edi_file_receive` (spool, encryption, the EdiFile commit) and then run
in a fresh worker process exactly as the worker's task body runs it
(`job_start` + `edi_import_run`), timed from the moment that process is
up (a running worker) until `completed` with the results written. Beside
each, the floor: a bare `COPY` of the same CSV into an unindexed table.
Between files, untimed, the member tables get the VACUUM ANALYZE that
autovacuum would give them (when the server runs without it), and a
CHECKPOINT. The worker's peak RSS (VmHWM) is printed per scenario; files
are generated on disk, so nothing here holds a whole file. Timed with
DEBUG=False.

Targets (edi.md §5): 100k rows <= 10 s, 1M rows <= 60 s, RSS <= 250 MB.
Exit status 0 only if every timed scenario with a target meets it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (  # noqa: E402 - the bench folder is not a package
    base_parser,
    bench_tenant_ensure,
    django_start,
    in_bench_tenant,
    log,
    machine_report,
    table,
)

DATABASE = "bench_edi_import"
SLUG = "bench-edi"
HEADER = (
    "employee_id,email,first_name,last_name,job_title,department,location,"
    "manager_employee_id,seat,groups\n"
)


def generate(
    path: Path, rows: range, *, salt: str = "", drop: int = 0, shout: bool = False
) -> Path:
    """Write the CSV to `path` line by line (1M rows never sit in memory)."""
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write(HEADER.upper() if shout else HEADER)
        for i in rows:
            if drop and i % 50 == 7:
                continue  # 2 % absent
            mgr = f"E{i // 10}" if i >= 10 else ""
            first = f"First{i}{salt if (not drop or i % 10 == 3) else ''}"
            out.write(
                f"E{i},person{i}@corp.test,{first},Last{i},Engineer,Dept{i % 50},"
                f"City{i % 20},{mgr},active,G{i % 7};G{i % 11}\n"
            )
    return path


def chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with path.open("rb") as source:
        while block := source.read(size):
            yield block


def floor_copy(path: Path) -> float:
    """A bare COPY of the same CSV into an unindexed table."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMP TABLE bench_floor (a text, b text, c text, d text, "
            "e text, f text, g text, h text, i text, j text)"
        )
        began = time.perf_counter()
        with cursor.cursor.copy(
            "COPY bench_floor FROM STDIN WITH (FORMAT csv, HEADER true)"
        ) as copy:
            for block in chunks(path):
                copy.write(block)
        took = time.perf_counter() - began
        cursor.execute("DROP TABLE bench_floor")
    return took


def run_file(path: Path, url: str) -> tuple[float, float, object]:
    """Receive the file here, import it in a fresh worker process.

    The worker is a separate process, as in production, so its peak RSS is
    the import's and not this process's (which generated files and ran
    migrations). Returns (seconds from the EdiFile commit to completed,
    the worker's peak RSS in MB, the file).
    """
    from edi.models import EdiFile
    from edi.services.receive import edi_file_receive
    from edi.services.spool import SpoolWriter
    from portal.db import current_schema

    with SpoolWriter(current_schema()) as writer:
        for block in chunks(path):
            writer.write(block)
        spooled = writer.finish()
    edi_file = edi_file_receive(spooled=spooled, source="api", mode="full")
    child = subprocess.run(
        [sys.executable, __file__, "--worker", str(edi_file.job_id), "--url", url],
        check=True,
        capture_output=True,
        text=True,
    )
    figures = json.loads(child.stdout.strip().splitlines()[-1])
    log(f"worker peak RSS {figures['rss']:.0f} MB, {figures['base']:.0f} MB at start")
    return figures["took"], figures["rss"], EdiFile.objects.get(pk=edi_file.pk)


def settle() -> None:
    """Between files, untimed: what autovacuum does on a production server
    between nightly files (this machine's PostgreSQL runs with autovacuum
    off, which would leave each scenario the last one's dead rows), and a
    checkpoint, so one scenario's dirty pages are not written during the
    next one's clock."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW autovacuum")
        if cursor.fetchone()[0] == "off":
            cursor.execute(
                "VACUUM ANALYZE portal_member, portal_member_groups, portal_membergroup"
            )
        cursor.execute("CHECKPOINT")


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries that
    over from the parent at fork and exec, so a child started by a large
    parent would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(job_id: str, url: str) -> int:
    """The worker's task body for one job, timed; prints JSON (--worker)."""
    os.environ.update(
        DATABASE_URL=url, PORTAL_DEBUG="1", DJANGO_SETTINGS_MODULE="portal.settings"
    )
    import django

    django.setup()
    from django.test.utils import override_settings

    from edi.services.pipeline import edi_import_run
    from portal.services.jobs import job_start

    with override_settings(DEBUG=False), in_bench_tenant(SLUG):
        base = peak_rss_mb()
        began = time.perf_counter()  # the worker is up: as a running worker
        job = job_start(job_id=job_id)
        if job is None:
            raise SystemExit(f"job {job_id} is not runnable")
        edi_import_run(job=job)
        took = time.perf_counter() - began
    rss = peak_rss_mb()
    print(json.dumps({"took": took, "rss": rss, "base": base}))
    return 0


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.url)
    url = django_start(database=DATABASE, reuse=args.reuse)
    print("== Machine ==")
    print(machine_report())
    from django.test.utils import override_settings

    from portal.models import Member

    bench_tenant_ensure(slug=SLUG, name="Bench EDI")
    n = args.rows
    target = 10.0 if n <= 100_000 else 60.0
    work = Path(tempfile.mkdtemp(prefix="bench-edi-"))
    scenarios = [
        ("first load", lambda p: generate(p, range(n)), True),
        # The header in capitals: the same data in new bytes, so the file
        # is not a duplicate of the first (headers are case-folded).
        ("same data again", lambda p: generate(p, range(n), shout=True), True),
        (
            "10 % changed, 2 % new, 2 % absent",
            lambda p: generate(p, range(n + n // 50), salt="c", drop=1),
            True,
        ),
        (
            "every row changed (no target)",
            lambda p: generate(p, range(n), salt="z"),
            False,
        ),
    ]
    rows = []
    ok = True
    with override_settings(DEBUG=False), in_bench_tenant(SLUG):
        Member.objects.exclude(role="owner").delete()
        for name, make, timed in scenarios:
            path = make(work / "file.csv")
            log(f"{name}: {path.stat().st_size / 1e6:.1f} MB")
            floor = floor_copy(path)
            took, rss, edi_file = run_file(path, url)
            path.unlink()
            settle()
            status = getattr(edi_file, "status", "?")
            met = status == "completed" and (not timed or took <= target)
            ok = ok and met and rss <= 250
            counts = getattr(edi_file, "counts", {})
            rows.append(
                [
                    name,
                    status,
                    f"{took:.1f}",
                    f"{floor:.2f}",
                    f"{took / floor:.0f}x",
                    f"{rss:.0f}",
                    ", ".join(
                        f"{k} {counts.get(k, 0)}"
                        for k in ("created", "updated", "unchanged", "deactivated")
                    ),
                    ("met" if met else "MISSED") if timed else "-",
                ]
            )
    shutil.rmtree(work, ignore_errors=True)
    print(f"\n== {n:,} rows, full files, worker body in a fresh process ==")
    print(
        table(
            [
                "scenario",
                "status",
                "s",
                "floor s",
                "ratio",
                "RSS MB",
                "counts",
                "target",
            ],
            rows,
        )
    )
    print(f"Target: <= {target:.0f} s end to end, peak RSS <= 250 MB.")
    print(f"EDI §5 check: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
