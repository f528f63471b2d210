"""PORTAL-06 benchmark: the /members/ list at 100,000 members.

    .venv/bin/python bench/members.py [--members 100000] [--requests 200]

On its own database (`bench_members`, dropped and created unless --reuse)
the script provisions one tenant, seeds --members members (departments,
locations, groups, managers; bulk_create in batches of 5,000), signs in as
the owner and measures each query shape of /members/ in-process: the
Django test Client drives the whole middleware, view and template stack
and the timer wraps each request. That is server time without the network
and without opening a database connection per request (the connect cost is
printed separately). Shapes are interleaved round-robin after a warm-up.

For each shape it prints the median and p95, the query count of one page,
and a baseline measured in the same run: the bare SQL of the same filter
(`SELECT ... ORDER BY id DESC LIMIT 51` and the `count(*)`) through a
cursor, so the page's own overhead is visible. The dashboard `/` is timed
too (reported, not checked).

Exit status 0 only if every /members/ shape has p95 <= --target-ms and at
most 15 queries per page; 1 otherwise.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402 - the bench folder is not a package
    base_parser,
    bench_tenant_ensure,
    django_start,
    in_bench_tenant,
    log,
    machine_report,
    median,
    ms,
    owner_password_reset,
    percentile,
    table,
)

DATABASE = "bench_members"
SLUG = "bench-members"
BATCH = 5000
MAX_QUERIES = 15
DOMAIN = "example.test"

FIRST = [
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "John",
    "Radia", "Ken", "Margaret", "Tim", "Sophie", "Linus", "Katherine", "Dennis",
    "Hedy", "Guido", "Annie", "Claude", "Carol", "Niklaus", "Shafi", "Leslie",
]  # fmt: skip
LAST = [
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen",
    "McCarthy", "Perlman", "Thompson", "Hamilton", "Berners-Lee", "Wilson",
    "Torvalds", "Johnson", "Ritchie", "Lamarr", "van Rossum", "Easley",
    "Shannon", "Shaw", "Wirth", "Goldwasser", "Lamport",
]  # fmt: skip
DEPARTMENTS = [
    "Sales", "Sales Operations", "Marketing", "Customer Success", "Partnerships",
    "Finance", "Legal", "Engineering", "Product", "Design", "Support", "HR",
    "Recruiting", "IT", "Security", "Procurement", "Facilities", "Research",
    "Data", "Strategy", "Communications", "Training", "Quality", "Logistics",
]  # fmt: skip
LOCATIONS = [
    "London", "Dublin", "New York", "Berlin", "Singapore", "Sydney", "Paris",
    "Madrid", "Toronto", "Chicago", "Austin", "Seattle", "Tokyo", "Mumbai",
    "Sao Paulo", "Amsterdam", "Zurich", "Stockholm", "Warsaw", "Dubai",
]  # fmt: skip
TITLES = ["Account Executive", "Sales Manager", "SDR", "Regional Director", "Analyst"]
GROUPS = [f"Team {n:02d}" for n in range(1, 27)] + ["EMEA", "Americas", "APAC"]

# Search terms: "hopp" hits one surname in 24 (about 4% of rows); an
# employee id hits one row, which the trigram index finds directly.
COMMON_TERM = "hopp"


@dataclass
class Shape:
    name: str
    path: str
    query: dict[str, str]
    checked: bool = True


def shapes(*, count: int, cursor: str | None) -> list[Shape]:
    rare = f"e{10000 + count // 2}"
    listed = [
        Shape("no filter", "/members/", {}),
        Shape("page 2 (cursor)", "/members/", {"after": cursor or ""}),
        Shape(f"search q={COMMON_TERM}", "/members/", {"q": COMMON_TERM}),
        Shape(f"search q={rare}", "/members/", {"q": rare}),
        Shape("status=deactivated", "/members/", {"status": "deactivated"}),
        Shape("seat=yes", "/members/", {"seat": "yes"}),
        Shape("department=Marketing", "/members/", {"department": "Marketing"}),
        Shape("group=Team 07", "/members/", {"group": "Team 07"}),
        Shape(
            "combined",
            "/members/",
            {
                "q": COMMON_TERM,
                "status": "active",
                "seat": "yes",
                "department": "Sales",
            },
        ),
        Shape("dashboard /", "/", {}, checked=False),
    ]
    return listed


# ----------------------------------------------------------------- seeding


def seed(count: int, *, rng_seed: int = 11) -> None:
    """Add generated members until the tenant has `count` of them.

    Every fifth member or so reports to one of the first 500; members are in
    zero to three of 29 groups. Statistics are refreshed at the end, as
    autovacuum would do some time after a real bulk import.
    """
    from django.db import connection, transaction
    from django.utils import timezone

    from portal.models import Member, MemberGroup, MemberSource, MemberStatus
    from portal.roles import Role

    with in_bench_tenant(SLUG):
        have = Member.objects.filter(email__endswith="@" + DOMAIN).count()
        if have >= count:
            log(f"{have} members already seeded")
        else:
            rng = random.Random(f"{rng_seed}:{have}")
            for name in GROUPS:
                MemberGroup.objects.get_or_create(name=name)
            group_ids = list(MemberGroup.objects.values_list("pk", flat=True))
            managers = list(
                Member.objects.filter(email__endswith="@" + DOMAIN)
                .order_by("pk")
                .values_list("pk", flat=True)[:500]
            )
            through = Member.groups.through
            now = timezone.now()
            started = time.perf_counter()
            for start in range(have, count, BATCH):
                rows = []
                for n in range(start, min(count, start + BATCH)):
                    first, last = rng.choice(FIRST), rng.choice(LAST)
                    status = rng.choices(
                        [
                            MemberStatus.ACTIVE,
                            MemberStatus.INVITED,
                            MemberStatus.DEACTIVATED,
                        ],
                        [80, 15, 5],
                    )[0]
                    active = status == MemberStatus.ACTIVE
                    rows.append(
                        Member(
                            email=f"{first}.{last}.{n}@{DOMAIN}".lower().replace(
                                " ", ""
                            ),
                            employee_id=f"E{10000 + n}",
                            first_name=first,
                            last_name=last,
                            job_title=rng.choice(TITLES),
                            department=rng.choice(DEPARTMENTS),
                            location=rng.choice(LOCATIONS),
                            manager_id=(
                                rng.choice(managers)
                                if managers and rng.random() < 0.2
                                else None
                            ),
                            status=status,
                            has_seat=active and rng.random() < 0.7,
                            seat_granted_at=now if active else None,
                            role=Role.ADMIN if rng.random() < 0.002 else Role.MEMBER,
                            source=rng.choice(
                                [MemberSource.EDI] * 3
                                + [MemberSource.SSO, MemberSource.MANUAL]
                            ),
                            last_sign_in_at=(
                                now - timezone.timedelta(days=rng.randint(0, 180))
                                if active and rng.random() < 0.8
                                else None
                            ),
                            deactivated_at=(
                                now if status == MemberStatus.DEACTIVATED else None
                            ),
                        )
                    )
                with transaction.atomic():
                    created = Member.objects.bulk_create(rows, batch_size=BATCH)
                    links = [
                        through(member_id=member.pk, membergroup_id=group_id)
                        for member in created
                        for group_id in rng.sample(
                            group_ids, rng.choices([0, 1, 2, 3], [30, 40, 20, 10])[0]
                        )
                    ]
                    through.objects.bulk_create(links, batch_size=BATCH)
                if len(managers) < 500:
                    managers.extend(m.pk for m in created[: 500 - len(managers)])
                done = start + len(rows)
                log(
                    f"seeded {done}/{count} members, "
                    f"{time.perf_counter() - started:.0f} s"
                )
        with connection.cursor() as cursor:
            for model in (Member, Member.groups.through, MemberGroup):
                cursor.execute(f'VACUUM ANALYZE "{model._meta.db_table}"')  # noqa: S608


# -------------------------------------------------------------- measuring


def first_page_cursor() -> str | None:
    from portal.selectors.members import MemberFilters, member_list

    with in_bench_tenant(SLUG):
        return member_list(filters=MemberFilters()).next_cursor


def baseline_sql(shape: Shape) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """The bare page and count SQL of the shape's filter, from the selector's
    own queryset, so the baseline cannot drift from what the page runs."""
    from django.http import QueryDict

    from portal.selectors.members import MemberFilters, member_queryset
    from portal.selectors.pagination import decode_cursor

    query = QueryDict(mutable=True)
    query.update(shape.query)
    members = member_queryset(filters=MemberFilters.from_query(query))
    after = decode_cursor(shape.query.get("after"))
    if after:
        members = members.filter(pk__lt=after[0])
    page = members.order_by("-pk")[:51].query.sql_with_params()
    inner, params = (
        member_queryset(filters=MemberFilters.from_query(query))
        .values("pk")
        .query.sql_with_params()
    )
    count = (f"SELECT count(*) FROM ({inner}) AS matching", params)  # noqa: S608
    return page, count


def connect_cost(samples: int = 50) -> list[float]:
    """What a WSGI server with CONN_MAX_AGE=0 adds to every request."""
    from django.db import connection

    times = []
    for _ in range(samples):
        connection.close()
        started = time.perf_counter()
        connection.ensure_connection()
        times.append(time.perf_counter() - started)
    return times


def measure(
    *, shapes_: list[Shape], requests: int, warmup: int, email: str, password: str
) -> tuple[dict[str, list[float]], dict[str, int]]:
    from django.conf import settings
    from django.db import connection, reset_queries
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(HTTP_HOST=f"{SLUG}.{settings.PORTAL_BASE_DOMAIN}")
    answer = client.post("/accounts/login/", {"username": email, "password": password})
    if answer.status_code != 302:
        raise SystemExit(f"login answered {answer.status_code}")

    def get(shape: Shape) -> float:
        began = time.perf_counter()
        response = client.get(shape.path, shape.query)
        elapsed = time.perf_counter() - began
        if response.status_code != 200:
            raise SystemExit(f"{shape.name} answered {response.status_code}")
        return elapsed

    for _ in range(warmup):
        for shape in shapes_:
            get(shape)
    # Counted after the warm-up, so one-off cache fills are not included.
    queries: dict[str, int] = {}
    for shape in shapes_:
        reset_queries()
        with CaptureQueriesContext(connection) as captured:
            get(shape)
        queries[shape.name] = len(captured.captured_queries)

    timings: dict[str, list[float]] = {shape.name: [] for shape in shapes_}
    started = time.perf_counter()
    for round_no in range(requests):
        for shape in shapes_:
            timings[shape.name].append(get(shape))
        if round_no and round_no % 50 == 0:
            log(
                f"page round {round_no}/{requests}, "
                f"{time.perf_counter() - started:.0f} s"
            )
    return timings, queries


def measure_sql(
    *, shapes_: list[Shape], requests: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, int]]:
    from django.db import connection

    pages: dict[str, list[float]] = {}
    counts: dict[str, list[float]] = {}
    matched: dict[str, int] = {}
    with in_bench_tenant(SLUG), connection.cursor() as cursor:
        for shape in shapes_:
            if shape.path != "/members/":
                continue
            (page_sql, page_params), (count_sql, count_params) = baseline_sql(shape)
            pages[shape.name], counts[shape.name] = [], []
            for n in range(warmup + requests):
                began = time.perf_counter()
                cursor.execute(page_sql, page_params)
                cursor.fetchall()
                between = time.perf_counter()
                cursor.execute(count_sql, count_params)
                matched[shape.name] = cursor.fetchone()[0]
                ended = time.perf_counter()
                if n >= warmup:
                    pages[shape.name].append(between - began)
                    counts[shape.name].append(ended - between)
    return pages, counts, matched


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=100_000, help="default 100000")
    parser.add_argument(
        "--requests", type=int, default=200, help="measured requests per shape"
    )
    parser.add_argument("--warmup", type=int, default=10, help="warm-up rounds")
    parser.add_argument(
        "--target-ms",
        type=float,
        default=150.0,
        help="p95 target per shape (default 150, the issue; PORTAL-06 says 300)",
    )
    args = parser.parse_args()

    django_start(database=DATABASE, reuse=args.reuse)
    print("== Machine ==")
    print(machine_report())

    bench_tenant_ensure(slug=SLUG, name="Bench Members")
    started = time.perf_counter()
    seed(args.members)
    seed_seconds = time.perf_counter() - started
    email, password = owner_password_reset(schema_name="t_" + SLUG.replace("-", "_"))
    listed = shapes(count=args.members, cursor=first_page_cursor())

    print(f"\nmembers {args.members:,} (seeded in {seed_seconds:.1f} s)")
    log("measuring pages")
    timings, queries = measure(
        shapes_=listed,
        requests=args.requests,
        warmup=args.warmup,
        email=email,
        password=password,
    )
    log("measuring bare SQL")
    sql_pages, sql_counts, matched = measure_sql(
        shapes_=listed, requests=args.requests, warmup=args.warmup
    )
    connect = connect_cost()

    print(
        f"\n== /members/ server time, in-process (Django test Client), "
        f"{args.requests} requests per shape after {args.warmup} warm-up rounds =="
    )
    rows = []
    ok = True
    for shape in listed:
        page = timings[shape.name]
        met = percentile(page, 0.95) * 1000 <= args.target_ms and (
            queries[shape.name] <= MAX_QUERIES
        )
        if shape.checked:
            ok = ok and met
        verdict = ("ok" if met else "MISSED") if shape.checked else "(not checked)"
        rows.append(
            [
                shape.name,
                f"{matched[shape.name]:,}" if shape.name in matched else "",
                queries[shape.name],
                ms(median(page)),
                ms(percentile(page, 0.95)),
                ms(median(sql_pages[shape.name])) if shape.name in sql_pages else "",
                ms(percentile(sql_pages[shape.name], 0.95))
                if shape.name in sql_pages
                else "",
                ms(median(sql_counts[shape.name])) if shape.name in sql_counts else "",
                verdict,
            ]
        )
    print(
        table(
            [
                "shape",
                "matching",
                "queries",
                "page med",
                "page p95",
                "sql LIMIT 51 med",
                "p95",
                "sql count med",
                "target",
            ],
            rows,
        )
    )
    print(
        f"ms; target p95 <= {args.target_ms:.0f} ms and <= {MAX_QUERIES} queries "
        f"per page. Connecting to PostgreSQL, which a server with CONN_MAX_AGE=0 "
        f"adds per request: median {ms(median(connect))} ms, "
        f"p95 {ms(percentile(connect, 0.95))} ms."
    )
    print(f"\nPORTAL-06 check: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
