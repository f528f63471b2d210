"""Tenant lifecycle: provisioning, suspension, retirement, purge (TEN-3, TEN-5).

Public-schema code. It enters a tenant only through `tenant_context` for one
unit of work and passes ids, never instances, across the switch.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import secrets
import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction
from django.utils import timezone
from django_tenants.utils import schema_context, tenant_context

from portal import context
from portal.errors import ApplicationError, Conflict, NotFound
from portal.services.registry import audit_exempt, audits
from tenants.models import Domain, PlatformAuditEvent, Tenant, TenantStatus
from tenants.schema_copy import schema_create_from_snapshot, snapshot_get

SLUG_RE = re.compile(r"^[a-z][a-z0-9-]{1,39}$")
RESERVED_SLUGS = frozenset(
    {"www", "public", "api", "admin", "static", "media", "template"}
)
HOST_RE = re.compile(
    r"^(?=.{1,253}$)(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*$"
)
DEFAULT_GRACE = timedelta(days=30)

Progress = Callable[[str], None]


def _noop(_: str) -> None:
    return None


@audit_exempt("pure: derives a name")
def schema_for_slug(slug: str) -> str:
    return "t_" + slug.replace("-", "_")


@audit_exempt("read: builds a URL")
def tenant_origin(tenant: Tenant) -> str:
    """The tenant's canonical origin, built from settings, never headers."""
    domain = (
        Domain.objects.filter(tenant=tenant, is_primary=True)
        .values_list("domain", flat=True)
        .first()
        or f"{tenant.slug}.{settings.PORTAL_BASE_DOMAIN}"
    )
    port = f":{settings.PORTAL_PUBLIC_PORT}" if settings.PORTAL_PUBLIC_PORT else ""
    return f"{settings.PORTAL_PUBLIC_SCHEME}://{domain}{port}"


@audit_exempt("records platform events itself")
def platform_audit_record(
    *,
    action: str,
    tenant: Tenant | None = None,
    changes: dict[str, Any] | None = None,
    target_type: str = "",
    target_id: str = "",
) -> PlatformAuditEvent:
    """Append one event to the platform audit log (public schema).

    Tenant id, slug and schema are stored as plain values so the row
    outlives the tenant. Works from any schema: the table exists only in
    public, which is on every search path.
    """
    ctx = context.current()
    with schema_context("public"):
        event = PlatformAuditEvent(
            occurred_at=timezone.now(),
            actor_type=ctx.actor_type,
            actor_id=ctx.actor_id,
            actor_label=ctx.actor_label[:254],
            action=action,
            tenant_id_value=tenant.pk if tenant else None,
            tenant_slug=tenant.slug if tenant else "",
            tenant_schema=tenant.schema_name if tenant else "",
            target_type=target_type,
            target_id=target_id,
            changes=changes or {},
            ip=ctx.ip,
            user_agent=ctx.user_agent[:400],
            request_id=ctx.request_id,
            source=ctx.source,
        )
        event.save()
    return event


@audit_exempt("pure: validation")
def validate_slug(slug: str) -> str:
    slug = (slug or "").strip()
    if not SLUG_RE.match(slug):
        raise ApplicationError(
            "The slug must be 2-40 characters: lowercase letters, digits and hyphens, "
            "starting with a letter.",
            code="invalid_slug",
            details={"slug": ["Invalid slug."]},
        )
    if slug in RESERVED_SLUGS:
        raise ApplicationError(
            f"The slug {slug!r} is reserved.",
            code="reserved_slug",
            details={"slug": ["Reserved slug."]},
        )
    return slug


@audit_exempt("read: validation")
def validate_domain(host: str, *, tenant: Tenant | None = None) -> str:
    host = (host or "").strip().lower().rstrip(".")
    if not HOST_RE.match(host) or host.replace(".", "").isdigit():
        raise ApplicationError(
            f"{host!r} is not a valid host name.",
            code="invalid_domain",
            details={"domain": ["Invalid host name."]},
        )
    if host == settings.PORTAL_BASE_DOMAIN:
        raise ApplicationError(
            "The base domain belongs to the platform console.",
            code="domain_taken",
            details={"domain": ["Reserved for the platform."]},
        )
    owner = Domain.objects.filter(domain__iexact=host).exclude(
        tenant=tenant if tenant is not None else None
    )
    if owner.exists():
        raise ApplicationError(
            f"The domain {host!r} is already in use.",
            code="domain_taken",
            details={"domain": ["Already in use."]},
        )
    return host


@dataclasses.dataclass(frozen=True)
class ProvisionResult:
    tenant: Tenant
    url: str
    owner_email: str
    owner_password: str

    def as_json(self) -> dict[str, str]:
        return {
            "slug": self.tenant.slug,
            "url": self.url,
            "owner_email": self.owner_email,
            "owner_password": self.owner_password,
        }


@audit_exempt("template upkeep; no tenant data")
def public_tenant_ensure() -> Tenant:
    """Make sure the public tenant and its base-domain row exist (TEN-6)."""
    with schema_context("public"):
        tenant = Tenant.objects.filter(schema_name="public").first()
        if tenant is None:
            tenant = Tenant(
                schema_name="public",
                slug="public",
                name="Platform",
                status=TenantStatus.PUBLIC,
            )
            tenant.save()
        domain = settings.PORTAL_BASE_DOMAIN
        if not Domain.objects.filter(domain__iexact=domain).exists():
            Domain.objects.create(domain=domain, tenant=tenant, is_primary=True)
    return tenant


@audits("tenant.provisioned")
def tenant_provision(
    *,
    slug: str,
    name: str,
    owner_email: str,
    domain: str | None = None,
    owner_password: str | None = None,
    seat_limit: int | None = None,
    progress: Progress = _noop,
) -> ProvisionResult:
    """Create a tenant: row, schema, domain, seat pool and owner, then active.

    Each step is skipped when already done, so rerunning a failed run
    finishes it. An active (or suspended, retiring) slug raises `Conflict`
    and changes nothing. Validation happens before anything is written.
    """
    from django.contrib.auth.password_validation import validate_password
    from django.core.exceptions import ValidationError
    from django.core.validators import validate_email

    slug = validate_slug(slug)
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise ApplicationError(
            "Give the organisation a name (at most 200 characters).",
            code="invalid_name",
            details={"name": ["Required."]},
        )
    try:
        validate_email(owner_email or "")
    except ValidationError:
        raise ApplicationError(
            f"{owner_email!r} is not a valid email address.",
            code="invalid_email",
            details={"owner_email": ["Invalid email."]},
        ) from None
    if seat_limit is not None and seat_limit < 0:
        raise ApplicationError(
            "The seat limit cannot be negative.", code="invalid_seat_limit"
        )
    if owner_password is not None:
        try:
            validate_password(owner_password)
        except ValidationError as exc:
            raise ApplicationError(
                "The owner password is too weak: " + " ".join(exc.messages),
                code="weak_password",
            ) from None
    password = owner_password or secrets.token_urlsafe(18)

    with schema_context("public"):
        public_tenant_ensure()
        existing = Tenant.objects.filter(slug=slug).first()
        if existing is not None and existing.status != TenantStatus.PROVISIONING:
            raise Conflict(
                f"A tenant with the slug {slug!r} already exists ({existing.status}).",
                code="slug_taken",
            )
        host = (domain or f"{slug}.{settings.PORTAL_BASE_DOMAIN}").strip().lower()
        host = validate_domain(host, tenant=existing)
        schema_name = schema_for_slug(slug)
        if existing is None and Tenant.objects.filter(schema_name=schema_name).exists():
            raise Conflict(f"The schema {schema_name} is taken.", code="slug_taken")

        progress("tenant row")
        tenant = existing or Tenant(schema_name=schema_name, slug=slug)
        tenant.name = name
        tenant.status = TenantStatus.PROVISIONING
        tenant.seat_limit = seat_limit
        tenant.save()

        progress("schema")
        _schema_create(tenant, resume=existing is not None)

        progress("domain")
        if not Domain.objects.filter(tenant=tenant, domain__iexact=host).exists():
            Domain.objects.create(domain=host, tenant=tenant, is_primary=True)

    progress("owner")
    tenant_id = tenant.pk
    with tenant_context(Tenant.objects.get(pk=tenant_id)):
        from portal.services.members import member_owner_ensure, seat_limit_set

        with transaction.atomic():
            seat_limit_set(limit=seat_limit)
            member_owner_ensure(email=owner_email, password=password)

    with schema_context("public"), transaction.atomic():
        tenant = Tenant.objects.select_for_update().get(pk=tenant_id)
        tenant.status = TenantStatus.ACTIVE
        tenant.save(update_fields=["status", "updated_at"])
        platform_audit_record(
            action="tenant.provisioned",
            tenant=tenant,
            changes={"domain": host, "seat_limit": seat_limit, "owner": "created"},
        )
        url = tenant_origin(tenant) + "/"
    progress("done")
    return ProvisionResult(
        tenant=tenant, url=url, owner_email=owner_email, owner_password=password
    )


def _schema_exists(schema_name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s",
            [schema_name],
        )
        return cursor.fetchone() is not None


def _schema_create(tenant: Tenant, *, resume: bool) -> None:
    """Create the tenant's schema from the template snapshot, or by migrating.

    A snapshot replay is one transaction, so a killed run leaves no schema
    or a whole one. On a rerun, a schema that is still behind is migrated
    further, or (when copying) dropped and made again: a provisioning tenant
    has never been reachable, so it holds nothing of value.
    """
    schema = tenant.schema_name
    if _schema_exists(schema):
        if not resume or not _schema_behind(schema):
            return
        if settings.TENANT_CREATION_FAKES_MIGRATIONS:
            with connection.cursor() as cursor:
                cursor.execute(f'DROP SCHEMA "{schema}" CASCADE')
        else:
            from django.core.management import call_command

            call_command(
                "migrate_schemas", schema_name=schema, interactive=False, verbosity=0
            )
            return
    if settings.TENANT_CREATION_FAKES_MIGRATIONS:
        template_tenant_ensure()
        snapshot = snapshot_get(settings.TENANT_BASE_SCHEMA, _known_migrations())
        schema_create_from_snapshot(schema, snapshot)
    else:
        tenant.create_schema(check_if_exists=True, verbosity=0)


TEMPLATE_SLUG = "template"


@audit_exempt("template upkeep; no tenant data")
def template_tenant_ensure() -> Tenant:
    """Make sure the TEN-4 template schema exists and is fully migrated.

    The template is a tenant row (status `template`, no domain, never
    served) so `migrate_portal` keeps it current. Without it django-tenants
    would silently migrate instead of cloning.
    """
    schema = settings.TENANT_BASE_SCHEMA
    with schema_context("public"):
        template = Tenant.objects.filter(schema_name=schema).first()
        if template is None:
            template = Tenant(
                schema_name=schema,
                slug=TEMPLATE_SLUG,
                name="Template",
                status=TenantStatus.TEMPLATE,
            )
            template.save()
        if not _schema_exists(schema):
            # The base schema does not exist yet, so this migrates.
            template.create_schema(check_if_exists=True, verbosity=0)
        elif _schema_behind(schema):
            from django.core.management import call_command

            call_command(
                "migrate_schemas", schema_name=schema, interactive=False, verbosity=0
            )
    return template


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
    with tenant_context(tenant), transaction.atomic():
        seat_limit_set(limit=seat_limit)
    with schema_context("public"), transaction.atomic():
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

    with schema_context("public"):
        tenant = Tenant.objects.filter(pk=tenant_id).first()
    if tenant is None:
        raise NotFound("Tenant not found.")
    if tenant.status != TenantStatus.PENDING_DELETION:
        raise ApplicationError("Only a tenant pending deletion can be purged.")
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
        cursor.execute(f'DROP SCHEMA IF EXISTS "{tenant.schema_name}" CASCADE')
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
                status=TenantStatus.PENDING_DELETION, purge_after__lte=timezone.now()
            ).values_list("pk", "slug")
        )
    purged = []
    for tenant_id, slug in due:
        tenant_purge(tenant_id=tenant_id)
        purged.append(slug)
    return purged


@audit_exempt("read")
def tenant_list_active() -> list[Tenant]:
    """Active tenants, for loops that enter each in turn (TEN-14)."""
    with schema_context("public"):
        return list(Tenant.objects.filter(status=TenantStatus.ACTIVE).order_by("pk"))


@audit_exempt("writes a derived summary, not a change anyone made")
def tenant_health_refresh_all() -> int:
    """Recompute each live tenant's health summary into `Tenant.health`.

    PORTAL-26: the console reads the summary from the public row, so its list
    costs the same number of queries however many tenants there are. A
    failed job in the last 24 hours, or a running job without a heartbeat
    for 15 minutes, marks the tenant degraded.
    """
    with schema_context("public"):
        tenant_ids = list(
            Tenant.objects.filter(
                status__in=[TenantStatus.ACTIVE, TenantStatus.SUSPENDED]
            ).values_list("pk", flat=True)
        )
    for tenant_id in tenant_ids:
        with schema_context("public"):
            tenant = Tenant.objects.filter(pk=tenant_id).first()
        if tenant is None:
            continue
        with tenant_context(tenant):
            summary = _health_summary()
        with schema_context("public"):
            Tenant.objects.filter(pk=tenant_id).update(health=summary)
    return len(tenant_ids)


def _health_summary() -> dict[str, Any]:
    from portal.models import DataKey, Job, JobStatus, Member
    from portal.selectors.members import seat_summary

    now = timezone.now()
    seats = seat_summary()
    failed = Job.objects.filter(
        status=JobStatus.FAILED, finished_at__gte=now - timedelta(hours=24)
    ).count()
    stalled = Job.objects.filter(
        status=JobStatus.RUNNING, heartbeat_at__lt=now - timedelta(minutes=15)
    ).count()
    oldest_key = DataKey.objects.filter(state="active").order_by("created_at").first()
    return {
        "state": "degraded" if failed or stalled else "healthy",
        "members": Member.objects.count(),
        "seats_used": seats.used,
        "seat_limit": seats.limit,
        "failed_jobs_24h": failed,
        "stalled_jobs": stalled,
        "oldest_key_days": (now - oldest_key.created_at).days if oldest_key else None,
        "checked_at": now.isoformat(),
    }


@functools.cache
def _known_migrations() -> frozenset[tuple[str, str]]:
    # The graph is fixed for the life of a process (code changes restart).
    from django.db.migrations.loader import MigrationLoader

    return frozenset(MigrationLoader(None, ignore_no_migrations=True).graph.nodes)


def _schema_behind(
    schema: str, expected: frozenset[tuple[str, str]] | None = None
) -> bool:
    """True when `schema` lacks any migration known to the code."""
    expected = expected if expected is not None else _known_migrations()
    with schema_context(schema), connection.cursor() as cursor:
        # Ask the catalog about this schema: an unqualified name would fall
        # through the search path to public's table.
        cursor.execute(
            "SELECT 1 FROM pg_tables WHERE schemaname = %s "
            "AND tablename = 'django_migrations'",
            [schema],
        )
        if cursor.fetchone() is None:
            return True
        cursor.execute("SELECT app, name FROM django_migrations")
        applied = {(app, name) for app, name in cursor.fetchall()}
    return bool(expected - applied)


@audit_exempt("read: compares migration records")
def tenant_schemas_behind() -> list[str]:
    """Schemas of tenants (template included) missing any known migration.

    TEN-6: a no-op `migrate_schemas` still costs about 0.17 s per schema, so
    deploys migrate only the schemas this pre-check finds behind. Reads each
    schema's `django_migrations` through its own search path (raw SQL never
    names another schema, TEN-17).
    """
    expected = _known_migrations()
    with schema_context("public"):
        schemas = list(
            Tenant.objects.exclude(schema_name="public")
            .exclude(status=TenantStatus.PROVISIONING)
            .order_by("pk")
            .values_list("schema_name", flat=True)
        )
    return [schema for schema in schemas if _schema_behind(schema, expected)]


OPERATOR_MAX_FAILURES = 5
OPERATOR_LOCK = timedelta(minutes=15)
OPERATOR_LOGIN_ERROR = "That email and password did not work, or sign-in is locked."


@audits("platform.operator.signed_in", "platform.operator.sign_in_failed")
def operator_login_attempt(*, request: Any, username: str, password: str) -> Any:
    """Check an operator's console sign-in; return the user or raise.

    The same rule as tenant sign-in (PORTAL-29): five failures for one
    account within 15 minutes lock it for 15 minutes, counted from the
    platform audit log, with one generic message. Only staff users of the
    public schema are operators.
    """
    from django.contrib.auth import authenticate

    username = (username or "").strip().lower()[:254]
    with schema_context("public"):
        failures = PlatformAuditEvent.objects.filter(
            action="platform.operator.sign_in_failed",
            occurred_at__gte=timezone.now() - OPERATOR_LOCK,
            changes__username=username,
        ).count()
        user = None
        if failures < OPERATOR_MAX_FAILURES:
            user = authenticate(request, username=username, password=password)
        if user is None or not user.is_staff:
            platform_audit_record(
                action="platform.operator.sign_in_failed",
                changes={
                    "username": username,
                    "locked": failures >= OPERATOR_MAX_FAILURES,
                },
            )
            raise ApplicationError(OPERATOR_LOGIN_ERROR, code="login_refused")
        platform_audit_record(
            action="platform.operator.signed_in",
            target_type="operator",
            target_id=str(user.pk),
        )
    return user
