"""Tenant lifecycle after provisioning (TEN-5, PORTAL-25): suspension, seat
limits, retirement with a grace period, and the purge."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone
from django_tenants.utils import schema_context, tenant_context

from portal.errors import ApplicationError, NotFound
from portal.services.registry import audit_exempt, audits
from tenants.models import Domain, Tenant, TenantStatus
from tenants.services.platform import platform_audit_record
from tenants.services.provisioning import _schema_exists

logger = logging.getLogger(__name__)

DEFAULT_GRACE = timedelta(days=30)


def _tenant_for_update(tenant_id: int) -> Tenant:
    tenant = Tenant.objects.select_for_update().filter(pk=tenant_id).first()
    if (
        tenant is None
        or tenant.schema_name in ("public",)
        or tenant.status == "template"
    ):
        raise NotFound("Tenant not found.")
    return tenant


@audits("tenant.suspended")
@transaction.atomic
def tenant_suspend(*, tenant_id: int, reason: str) -> Tenant:
    """Suspend: pages answer 403, APIs, SSO, SFTP, tokens and tasks refused."""
    tenant = _tenant_for_update(tenant_id)
    if tenant.status != TenantStatus.ACTIVE:
        raise ApplicationError(
            f"Only an active tenant can be suspended ({tenant.status})."
        )
    tenant.status = TenantStatus.SUSPENDED
    tenant.save(update_fields=["status", "updated_at"])
    platform_audit_record(
        action="tenant.suspended", tenant=tenant, changes={"reason": reason}
    )
    return tenant


@audits("tenant.resumed")
@transaction.atomic
def tenant_resume(*, tenant_id: int) -> Tenant:
    tenant = _tenant_for_update(tenant_id)
    if tenant.status != TenantStatus.SUSPENDED:
        raise ApplicationError(
            f"Only a suspended tenant can be resumed ({tenant.status})."
        )
    tenant.status = TenantStatus.ACTIVE
    tenant.save(update_fields=["status", "updated_at"])
    platform_audit_record(action="tenant.resumed", tenant=tenant)
    return tenant


@audits("tenant.seat_limit_changed")
def tenant_seat_limit_set(*, tenant_id: int, seat_limit: int | None) -> Tenant:
    """Operators set the seat limit; lowering it removes no seat (PORTAL-08)."""
    from portal.services.members import seat_limit_set

    with schema_context("public"):
        tenant = Tenant.objects.get(pk=tenant_id)
    # One transaction for both schemas (one database): the tenant's seat pool
    # and the public mirror change together or not at all.
    with transaction.atomic():
        with tenant_context(tenant):
            seat_limit_set(limit=seat_limit)
        with schema_context("public"):
            tenant = _tenant_for_update(tenant_id)
            before = tenant.seat_limit
            tenant.seat_limit = seat_limit
            tenant.save(update_fields=["seat_limit", "updated_at"])
            platform_audit_record(
                action="tenant.seat_limit_changed",
                tenant=tenant,
                changes={"seat_limit": {"before": before, "after": seat_limit}},
            )
    return tenant


@audits("tenant.retire_requested")
@transaction.atomic
def tenant_retire_request(
    *, tenant_id: int, reason: str, confirm_slug: str, grace: timedelta = DEFAULT_GRACE
) -> Tenant:
    """Schedule deletion after `grace`; the typed slug must match exactly."""
    tenant = _tenant_for_update(tenant_id)
    if confirm_slug != tenant.slug:
        raise ApplicationError(
            "Type the tenant's slug exactly to confirm.",
            code="confirmation_mismatch",
            details={"confirm_slug": ["Does not match."]},
        )
    if not reason.strip():
        raise ApplicationError("Give a reason.", details={"reason": ["Required."]})
    if tenant.status not in (TenantStatus.ACTIVE, TenantStatus.SUSPENDED):
        raise ApplicationError(f"This tenant cannot be retired ({tenant.status}).")
    tenant.suspended_before_retirement = tenant.status == TenantStatus.SUSPENDED
    tenant.status = TenantStatus.PENDING_DELETION
    tenant.purge_after = timezone.now() + grace
    tenant.retire_reason = reason.strip()[:500]
    tenant.save(
        update_fields=[
            "status",
            "purge_after",
            "retire_reason",
            "suspended_before_retirement",
            "updated_at",
        ]
    )
    platform_audit_record(
        action="tenant.retire_requested",
        tenant=tenant,
        changes={
            "reason": tenant.retire_reason,
            "purge_after": tenant.purge_after.isoformat(),
        },
    )
    recipients = _owner_emails(tenant)
    purge_after = tenant.purge_after
    name = tenant.name
    transaction.on_commit(
        lambda: _send_retirement_notice(recipients, name=name, purge_after=purge_after)
    )
    return tenant


def _owner_emails(tenant: Tenant) -> list[str]:
    from portal.models import Member, MemberStatus
    from portal.roles import Role

    with tenant_context(tenant):
        return list(
            Member.objects.filter(
                role=Role.OWNER, status=MemberStatus.ACTIVE
            ).values_list("email", flat=True)
        )


def _send_retirement_notice(
    recipients: list[str], *, name: str, purge_after: Any
) -> None:
    from django.core.mail import send_mail

    if not recipients:
        return
    send_mail(
        subject=f"{name}: your portal is scheduled for deletion",
        message=(
            f"The portal of {name} has been retired by the platform operators and is "
            f"now offline. Its data will be permanently deleted after "
            f"{purge_after:%Y-%m-%d %H:%M} UTC. If this is a mistake, contact your "
            "account team before then: the retirement can still be cancelled."
        ),
        from_email=None,
        recipient_list=recipients,
        fail_silently=True,
    )


@audits("tenant.retire_cancelled")
@transaction.atomic
def tenant_retire_cancel(*, tenant_id: int) -> Tenant:
    tenant = _tenant_for_update(tenant_id)
    if tenant.status != TenantStatus.PENDING_DELETION:
        raise ApplicationError("This tenant is not scheduled for deletion.")
    tenant.status = (
        TenantStatus.SUSPENDED
        if tenant.suspended_before_retirement
        else TenantStatus.ACTIVE
    )
    tenant.purge_after = None
    tenant.save(update_fields=["status", "purge_after", "updated_at"])
    platform_audit_record(
        action="tenant.retire_cancelled",
        tenant=tenant,
        changes={"status": tenant.status},
    )
    return tenant


# Other apps add steps (revoke SFTP keys, EDI tokens, …); each takes the
# tenant id and must be safe to rerun.
PURGE_STEPS: list[Callable[[Tenant], None]] = []


@audits("tenant.purged")
def tenant_purge(*, tenant_id: int) -> dict[str, Any]:
    """Irreversibly remove a pending tenant whose grace has passed (TEN-5).

    Every step is re-runnable, so a purge killed midway completes on the
    next run. Returns the verification report also written to the platform
    audit log.
    """
    from django_celery_beat.models import PeriodicTask

    with schema_context("public"), transaction.atomic():
        # Claim the tenant in one conditional update: a retirement cancelled
        # a moment ago can no longer be purged, and once claimed it can no
        # longer be cancelled. A purge killed midway finds it `purging`.
        Tenant.objects.filter(
            pk=tenant_id,
            status=TenantStatus.PENDING_DELETION,
            purge_after__lte=timezone.now(),
        ).update(status=TenantStatus.PURGING)
        tenant = Tenant.objects.filter(pk=tenant_id).first()
    if tenant is None:
        raise NotFound("Tenant not found.")
    if tenant.status != TenantStatus.PURGING:
        raise ApplicationError(
            "Only a tenant pending deletion whose grace period is over can be purged."
        )
    report: dict[str, Any] = {"slug": tenant.slug, "schema": tenant.schema_name}
    for step in PURGE_STEPS:
        step(tenant)
    if _schema_exists(tenant.schema_name):
        with tenant_context(tenant):
            from portal.services.keyring import keyring_destroy

            report["destroyed_keys"] = keyring_destroy()
    with schema_context("public"):
        report["schedules_deleted"] = PeriodicTask.objects.filter(
            name__endswith=f"@{tenant.schema_name}"
        ).delete()[0]
    _cache_purge(tenant.schema_name)
    media = Path(settings.MEDIA_ROOT) / tenant.schema_name
    if media.exists():
        shutil.rmtree(media)
    with connection.cursor() as cursor:
        schema = connection.ops.quote_name(tenant.schema_name)
        cursor.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    with schema_context("public"), transaction.atomic():
        Domain.objects.filter(tenant_id=tenant_id).delete()
        report["verified"] = {
            "schema_exists": _schema_exists(tenant.schema_name),
            "media_exists": media.exists(),
        }
        platform_audit_record(action="tenant.purged", tenant=tenant, changes=report)
        Tenant.objects.filter(pk=tenant_id).delete()
    return report


def _cache_purge(schema_name: str) -> None:
    delete_pattern = getattr(cache, "delete_pattern", None)
    client = getattr(cache, "_cache", None)
    if delete_pattern is not None:
        delete_pattern(f"{schema_name}:*")
    elif client is not None and hasattr(client, "get_client"):
        redis = client.get_client(write=True)
        for key in redis.scan_iter(match=f"{schema_name}:*"):
            redis.delete(key)
    elif isinstance(client, dict):
        for key in [k for k in client if str(k).startswith(f"{schema_name}:")]:
            client.pop(key, None)
            # LocMemCache.get() raises KeyError if the expiry entry outlives the value.
            getattr(cache, "_expire_info", {}).pop(key, None)


@audit_exempt("dispatcher; each purge audits")
def tenant_purge_due() -> list[str]:
    """Purge every tenant whose grace period is over; return their slugs."""
    with schema_context("public"):
        due = list(
            Tenant.objects.filter(
                Q(status=TenantStatus.PENDING_DELETION, purge_after__lte=timezone.now())
                | Q(status=TenantStatus.PURGING)
            ).values_list("pk", "slug")
        )
    purged = []
    for tenant_id, slug in due:
        # One tenant's failure must not hold up the others; its steps are
        # re-runnable and the next run retries it.
        try:
            tenant_purge(tenant_id=tenant_id)
        except Exception:
            logger.exception("Purge of tenant %s failed; will retry", slug)
            continue
        purged.append(slug)
    return purged
