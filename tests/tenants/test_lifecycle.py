"""Retirement: request, cancel and purge (TEN-5).

The purge drops a schema and commits, so its test uses `committed_tenant`
(real commits, its own unique schema). Requests that are refused or
cancelled run in the rolled-back `db` transaction.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import cache
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import DatabaseError, connection
from django.test import Client
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_tenants.utils import schema_context, tenant_context

from portal.crypto import KeyDestroyed
from portal.db import use_public_schema
from portal.errors import ApplicationError, TenantContextError
from portal.models import DataKey, Member
from portal.services import keyring
from portal.services.keyring import keyring_decrypt, keyring_encrypt
from tenants.models import Domain, PlatformAuditEvent, Tenant, TenantStatus
from tenants.services import (
    _cache_purge,
    tenant_purge,
    tenant_purge_due,
    tenant_resume,
    tenant_retire_cancel,
    tenant_retire_request,
    tenant_suspend,
)
from tests.conftest import ci_requires
from tests.factories import member_with_login


def _schema_exists(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [name])
        return cursor.fetchone() is not None


def _snapshot(tenant: Tenant) -> tuple:
    with schema_context("public"):
        row = Tenant.objects.filter(pk=tenant.pk).values(
            "status", "purge_after", "retire_reason", "updated_at"
        )
        events = PlatformAuditEvent.objects.filter(tenant_slug=tenant.slug).count()
        return (row.get(), events)


# Requests and cancellation (rolled back) ------------------------------------------


@pytest.mark.parametrize(
    "typed", ["tenan", "TENANT", " tenant", "tenant ", "other", ""]
)
def test_retire_with_a_wrong_confirmation_changes_nothing(tenant, typed):
    before = _snapshot(tenant)
    with pytest.raises(ApplicationError, match="slug exactly") as excinfo:
        tenant_retire_request(tenant_id=tenant.pk, reason="closing", confirm_slug=typed)
    assert excinfo.value.code == "confirmation_mismatch"
    assert _snapshot(tenant) == before


def test_retire_without_a_reason_changes_nothing(tenant):
    before = _snapshot(tenant)
    with pytest.raises(ApplicationError, match="reason"):
        tenant_retire_request(tenant_id=tenant.pk, reason="  ", confirm_slug="tenant")
    assert _snapshot(tenant) == before


def test_retire_sets_pending_with_a_30_day_grace(tenant):
    start = timezone.now()
    retired = tenant_retire_request(
        tenant_id=tenant.pk, reason="contract ended", confirm_slug="tenant"
    )
    assert retired.status == TenantStatus.PENDING_DELETION
    assert retired.purge_after is not None
    assert (
        timedelta(days=30)
        <= retired.purge_after - start
        < timedelta(days=30, minutes=1)
    )
    with schema_context("public"):
        event = PlatformAuditEvent.objects.filter(tenant_slug="tenant").latest("id")
    assert event.action == "tenant.retire_requested"
    assert event.changes["reason"] == "contract ended"
    # Not yet due, and only pending tenants can be purged at all.
    with pytest.raises(ApplicationError):
        tenant_retire_request(
            tenant_id=tenant.pk, reason="again", confirm_slug="tenant"
        )


def test_cancel_restores_active_and_the_host_serves_again(tenant):
    tenant_retire_request(tenant_id=tenant.pk, reason="closing", confirm_slug="tenant")
    blocked = Client(HTTP_HOST="tenant.localhost").get("/")
    assert blocked.status_code == 403
    assert b"scheduled for deletion" in blocked.content

    restored = tenant_retire_cancel(tenant_id=tenant.pk)
    assert restored.status == TenantStatus.ACTIVE
    assert restored.purge_after is None
    with schema_context("public"):
        assert Tenant.objects.get(pk=tenant.pk).status == TenantStatus.ACTIVE
        last = PlatformAuditEvent.objects.filter(tenant_slug="tenant").latest("id")
    assert last.action == "tenant.retire_cancelled"
    assert Client(HTTP_HOST="tenant.localhost").get("/").status_code == 302


def test_cancel_refused_for_an_active_tenant(tenant):
    before = _snapshot(tenant)
    with pytest.raises(ApplicationError, match="not scheduled"):
        tenant_retire_cancel(tenant_id=tenant.pk)
    assert _snapshot(tenant) == before


def test_suspended_tenant_can_be_retired(tenant):
    tenant_suspend(tenant_id=tenant.pk, reason="unpaid")
    retired = tenant_retire_request(
        tenant_id=tenant.pk, reason="closing", confirm_slug="tenant"
    )
    assert retired.status == TenantStatus.PENDING_DELETION
    with pytest.raises(ApplicationError):
        tenant_resume(tenant_id=tenant.pk)


def test_purge_refuses_a_tenant_that_is_not_pending(tenant):
    with pytest.raises(ApplicationError, match="pending deletion"):
        tenant_purge(tenant_id=tenant.pk)
    assert _schema_exists("t_tenant")


def test_public_tenant_cannot_be_retired(tenant):
    with schema_context("public"):
        public = Tenant.objects.get(schema_name="public")
    with pytest.raises(ApplicationError):
        tenant_retire_request(tenant_id=public.pk, reason="x", confirm_slug="public")


# The purge (committed) --------------------------------------------------------------


@pytest.mark.schema
def test_purge_removes_data_files_keys_cache_and_schedules(committed_tenant):
    tenant = committed_tenant
    schema, slug = tenant.schema_name, tenant.slug
    cache_key = "ten5-" + uuid.uuid4().hex
    keep_name = f"x@{schema}_keep"
    with tenant_context(tenant):
        for _ in range(3):
            member_with_login()
        assert Member.objects.count() == 4
        blob = keyring_encrypt(purpose="secrets", plaintext=b"canary", aad=b"probe")
        fingerprint = DataKey.objects.get(purpose="secrets").fingerprint
        cache.set(cache_key, "tenant value", 600)
        stored = default_storage.save("exports/probe.txt", ContentFile(b"tenant file"))
    media = Path(settings.MEDIA_ROOT) / schema
    assert (media / stored).is_file()
    with schema_context("public"):
        cache.set(cache_key, "platform value", 600)
        interval, _ = IntervalSchedule.objects.get_or_create(
            every=1, period=IntervalSchedule.DAYS
        )
        for name in (f"x@{schema}", keep_name):
            PeriodicTask.objects.create(
                name=name,
                task="portal.noop",
                interval=interval,
                headers=json.dumps({"_schema_name": schema}),
                kwargs=json.dumps({"schema_name": schema}),
            )
    try:
        # A default grace keeps the tenant through today's purge run.
        tenant_retire_request(tenant_id=tenant.pk, reason="closing", confirm_slug=slug)
        assert slug not in tenant_purge_due()
        assert _schema_exists(schema)
        tenant_retire_cancel(tenant_id=tenant.pk)

        tenant_retire_request(
            tenant_id=tenant.pk, reason="closing", confirm_slug=slug, grace=timedelta(0)
        )
        assert slug in tenant_purge_due()

        assert not _schema_exists(schema)
        assert not media.exists()
        with schema_context("public"):
            assert not Tenant.objects.filter(pk=tenant.pk).exists()
            assert not Domain.objects.filter(tenant_id=tenant.pk).exists()
            assert not PeriodicTask.objects.filter(name=f"x@{schema}").exists()
            assert PeriodicTask.objects.filter(name=keep_name).exists()
            assert cache.get(cache_key) == "platform value"
        with schema_context(schema):
            assert cache.get(cache_key) is None
        assert Client(HTTP_HOST=f"{slug}.localhost").get("/").status_code == 404

        # The key was shredded: nothing in memory, nothing left to unwrap.
        assert not [k for k in keyring._cache if k[0] == f"tenant-{tenant.pk}"]
        with (
            schema_context(schema),
            pytest.raises((KeyDestroyed, DatabaseError, TenantContextError)),
        ):
            keyring_decrypt(purpose="secrets", blob=blob, aad=b"probe")

        with schema_context("public"):
            events = {
                e.action: e for e in PlatformAuditEvent.objects.filter(tenant_slug=slug)
            }
        assert {
            "tenant.provisioned",
            "tenant.retire_requested",
            "tenant.purged",
        } <= set(events)
        purged = events["tenant.purged"]
        assert purged.tenant_schema == schema
        assert purged.tenant_id_value == tenant.pk
        assert fingerprint in purged.changes["destroyed_keys"]
        assert purged.changes["schedules_deleted"] == 1
        assert purged.changes["verified"] == {
            "schema_exists": False,
            "media_exists": False,
        }

        # A second run finds nothing to do and does not fail.
        assert slug not in tenant_purge_due()
    finally:
        use_public_schema()
        with schema_context("public"):
            PeriodicTask.objects.filter(name__in=[f"x@{schema}", keep_name]).delete()
            cache.delete(cache_key)


@pytest.mark.schema
def test_purge_finishes_when_the_schema_is_already_gone(committed_tenant):
    # A purge killed after the DROP left the row and domain: rerunning completes.
    tenant = committed_tenant
    tenant_retire_request(
        tenant_id=tenant.pk,
        reason="closing",
        confirm_slug=tenant.slug,
        grace=timedelta(0),
    )
    with connection.cursor() as cursor:
        cursor.execute(f'DROP SCHEMA "{tenant.schema_name}" CASCADE')
    assert tenant.slug in tenant_purge_due()
    with schema_context("public"):
        assert not Tenant.objects.filter(pk=tenant.pk).exists()
        assert not Domain.objects.filter(tenant_id=tenant.pk).exists()
        assert PlatformAuditEvent.objects.filter(
            tenant_slug=tenant.slug, action="tenant.purged"
        ).exists()


def _redis_cache_settings() -> dict:
    import redis

    url = "redis://127.0.0.1:6379/15"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
    except redis.exceptions.ConnectionError:
        ci_requires("redis")
    return {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": url,
            "KEY_FUNCTION": "django_tenants.cache.make_key",
        }
    }


@pytest.mark.parametrize("backend", ["locmem", "redis"])
def test_cache_purge_removes_only_the_schema_keys(backend, settings):
    # Production uses Redis (PORTAL_CACHE_URL); tests and dev use locmem.
    if backend == "redis":
        settings.CACHES = _redis_cache_settings()
    doomed, kept = "t_" + uuid.uuid4().hex[:10], "t_" + uuid.uuid4().hex[:10]
    for schema in (doomed, kept):
        with schema_context(schema):
            cache.set("a", 1, 60)
            cache.set("b", 2, 60)
    _cache_purge(doomed)
    with schema_context(doomed):
        assert cache.get_many(["a", "b"]) == {}
    with schema_context(kept):
        assert cache.get_many(["a", "b"]) == {"a": 1, "b": 2}
        cache.delete_many(["a", "b"])


def test_cancelling_retirement_of_a_suspended_tenant_keeps_it_suspended(tenant):
    from tenants.models import Tenant, TenantStatus
    from tenants.services import (
        tenant_retire_cancel,
        tenant_retire_request,
        tenant_suspend,
    )

    tenant_suspend(tenant_id=tenant.pk, reason="unpaid invoice")
    tenant_retire_request(
        tenant_id=tenant.pk, reason="contract ended", confirm_slug=tenant.slug
    )
    tenant_retire_cancel(tenant_id=tenant.pk)
    assert Tenant.objects.get(pk=tenant.pk).status == TenantStatus.SUSPENDED


def _operator_client(*, signed_in_seconds_ago: int) -> Any:
    import time

    from django.contrib.auth import get_user_model
    from django.test import Client

    with schema_context("public"):
        operator = get_user_model().objects.create_user(
            username="op-retire@platform.test", password="x", is_staff=True
        )
        client = Client(HTTP_HOST="localhost")
        client.force_login(operator)
        session = client.session
        session["auth_at"] = int(time.time()) - signed_in_seconds_ago
        session.save()
    return client


@pytest.mark.parametrize(("ago", "retired"), [(60, True), (16 * 60, False)])
def test_console_retirement_needs_a_recent_sign_in(tenant, ago, retired):
    client = _operator_client(signed_in_seconds_ago=ago)
    response = client.post(
        f"/tenants/{tenant.pk}/retire/",
        {"reason": "contract ended", "confirm_slug": tenant.slug},
    )
    with schema_context("public"):
        status = Tenant.objects.get(pk=tenant.pk).status
    if retired:
        assert response.status_code == 302
        assert status == TenantStatus.PENDING_DELETION
    else:
        assert response.status_code == 400
        assert b"Sign in again" in response.content
        assert status == TenantStatus.ACTIVE


def test_purge_refuses_a_pending_tenant_whose_grace_is_not_over(tenant):
    tenant_retire_request(tenant_id=tenant.pk, reason="closing", confirm_slug="tenant")
    with pytest.raises(ApplicationError, match="grace period"):
        tenant_purge(tenant_id=tenant.pk)
    with schema_context("public"):
        assert Tenant.objects.get(pk=tenant.pk).status == TenantStatus.PENDING_DELETION
    assert _schema_exists("t_tenant")


def test_a_tenant_being_purged_cannot_be_cancelled_and_shows_the_deletion_page(
    tenant,
):
    with schema_context("public"):
        Tenant.objects.filter(pk=tenant.pk).update(status=TenantStatus.PURGING)
    with pytest.raises(ApplicationError):
        tenant_retire_cancel(tenant_id=tenant.pk)
    response = Client(HTTP_HOST="tenant.localhost").get("/")
    assert response.status_code == 403
    assert b"scheduled for deletion" in response.content
