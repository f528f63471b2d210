"""Demo data for `make run`: a few hundred generated members."""

from __future__ import annotations

import random
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from portal.models import Member, MemberGroup, MemberSource, MemberStatus
from portal.services.audit import audit_event_record
from portal.services.registry import audits

FIRST = [
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Donald",
    "Frances",
    "John",
    "Radia",
    "Ken",
    "Margaret",
    "Tim",
    "Sophie",
    "Linus",
    "Katherine",
    "Dennis",
    "Hedy",
    "Guido",
]
LAST = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Allen",
    "McCarthy",
    "Perlman",
    "Thompson",
    "Hamilton",
    "Berners-Lee",
    "Wilson",
    "Torvalds",
    "Johnson",
    "Ritchie",
    "Lamarr",
    "van Rossum",
]
DEPARTMENTS = [
    "Sales",
    "Sales Operations",
    "Marketing",
    "Customer Success",
    "Partnerships",
]
LOCATIONS = ["London", "Dublin", "New York", "Berlin", "Singapore", "Sydney"]
TITLES = ["Account Executive", "Sales Manager", "SDR", "Regional Director", "Analyst"]


@audits("portal.demo.seeded")
@transaction.atomic
def demo_members_seed(*, count: int, domain: str, seed: int = 7) -> int:
    """Add `count` generated members (once: does nothing if already seeded)."""
    if (
        Member.objects.filter(email__endswith=f"@{domain}")
        .exclude(role="owner")
        .exists()
    ):
        return 0
    rng = random.Random(seed)  # noqa: S311 - demo data, not security
    groups = [
        MemberGroup.objects.get_or_create(name=name)[0]
        for name in ("EMEA", "Americas", "APAC", "Enterprise")
    ]
    now = timezone.now()
    members = []
    for n in range(count):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        status = rng.choices(
            [MemberStatus.ACTIVE, MemberStatus.INVITED, MemberStatus.DEACTIVATED],
            [80, 15, 5],
        )[0]
        members.append(
            Member(
                email=f"{first}.{last}.{n}@{domain}".lower().replace(" ", ""),
                employee_id=f"E{10000 + n}",
                first_name=first,
                last_name=last,
                job_title=rng.choice(TITLES),
                department=rng.choice(DEPARTMENTS),
                location=rng.choice(LOCATIONS),
                status=status,
                has_seat=status == MemberStatus.ACTIVE and rng.random() < 0.7,
                seat_granted_at=now,
                source=rng.choice(
                    [
                        MemberSource.EDI,
                        MemberSource.EDI,
                        MemberSource.SSO,
                        MemberSource.MANUAL,
                    ]
                ),
                last_sign_in_at=now - timedelta(days=rng.randint(0, 120))
                if status == MemberStatus.ACTIVE
                else None,
            )
        )
    created = Member.objects.bulk_create(members, batch_size=1000)
    through = Member.groups.through
    through.objects.bulk_create(
        [
            through(member_id=m.pk, membergroup_id=rng.choice(groups).pk)
            for m in created
        ],
        batch_size=1000,
    )
    audit_event_record(action="portal.demo.seeded", changes={"members": len(created)})
    return len(created)
