"""portal.db.row_first: the compiler-free read matches what the ORM returns."""

from __future__ import annotations

import pytest
from django.db import transaction
from django_tenants.utils import tenant_context

from portal.db import row_first
from portal.models import AuditEvent, Member
from portal.roles import Role
from portal.services.audit import audit_event_record
from tenants.models import Tenant


@pytest.fixture(autouse=True)
def _in_tenant(tenant):
    with tenant_context(tenant):
        yield


def _fields(instance):
    return {
        f.attname: getattr(instance, f.attname)
        for f in type(instance)._meta.concrete_fields
    }


def test_matches_the_orm_including_converted_fields(tenant, make_member):
    member = make_member(Role.ADMIN)
    event = audit_event_record(
        action="portal.test.row_first", target=member, changes={"nested": {"a": [1, 2]}}
    )
    fast = row_first(AuditEvent, "id = %s", [event.pk])
    assert fast is not None
    assert _fields(fast) == _fields(AuditEvent.objects.get(pk=event.pk))
    assert fast.changes["nested"] == {"a": [1, 2]}  # JSON decoded as by the ORM
    assert _fields(row_first(Member, "email = %s", [member.email])) == _fields(
        Member.objects.get(pk=member.pk)
    )


def test_none_when_nothing_matches(tenant):
    assert row_first(Member, "email = %s", ["nobody@example.invalid"]) is None


def test_instances_save_like_orm_instances(tenant, make_member):
    member = make_member(Role.MEMBER)
    fast = row_first(Member, "id = %s", [member.pk])
    assert fast is not None
    assert not fast._state.adding
    fast.first_name = "Renamed"
    fast.save(update_fields=["first_name"])
    member.refresh_from_db()
    assert member.first_name == "Renamed"


def test_order_by_and_for_update(tenant, make_member):
    make_member(Role.MEMBER)
    make_member(Role.MEMBER)
    with transaction.atomic():
        locked = row_first(
            Member, "role = %s", [Role.MEMBER], order_by="id", for_update=True
        )
    assert locked is not None
    assert locked.pk == min(
        Member.objects.filter(role=Role.MEMBER).values_list("pk", flat=True)
    )


def test_public_tables_from_a_tenant_schema(tenant):
    found = row_first(Tenant, "schema_name = %s", [tenant.schema_name])
    assert found is not None
    assert found.pk == tenant.pk
    assert found.slug == tenant.slug
