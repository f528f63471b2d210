"""Typed factory_boy factories and helpers for tenant-schema models.

Call them inside `tenant_context`: a factory writes to the current schema.
"""

from __future__ import annotations

import itertools
from typing import Any

import factory
from django.contrib.auth import get_user_model
from factory.django import DjangoModelFactory

from portal.models import AuditEvent, Member, MemberStatus
from portal.roles import Role

User = get_user_model()
_counter = itertools.count(1)
TEST_PASSWORD = "a long test password 42"  # noqa: S105


class MemberFactory(DjangoModelFactory[Member]):
    class Meta:
        model = Member

    email = factory.Sequence(lambda n: f"person{n}@example.test")
    first_name = factory.Faker("first_name")
    last_name = factory.Faker("last_name")
    status = MemberStatus.ACTIVE
    role = Role.MEMBER


class AuditEventFactory(DjangoModelFactory[AuditEvent]):
    class Meta:
        model = AuditEvent

    occurred_at = factory.Faker("date_time", tzinfo=__import__("datetime").UTC)
    actor_type = "system"
    action = "test.event.recorded"
    source = "cli"


def member_with_login(role: str = Role.MEMBER, **kw: Any) -> Member:
    """A member with a Django user and the password TEST_PASSWORD."""
    n = next(_counter)
    email = kw.pop("email", f"{role}{n}-{id(kw)}@example.test")
    user = User.objects.create_user(
        username=email.lower(), email=email, password=TEST_PASSWORD
    )
    return MemberFactory.create(email=email, role=role, user=user, **kw)
