"""Platform-level services: the platform audit log, names and hosts,
operator sign-in, tenant health summaries (public schema)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone
from django_tenants.utils import schema_context, tenant_context

from portal import context
from portal.errors import ApplicationError
from portal.services.registry import audit_exempt, audits
from tenants.models import Domain, PlatformAuditEvent, Tenant, TenantStatus

SLUG_RE = re.compile(r"^[a-z][a-z0-9-]{1,39}$")


RESERVED_SLUGS = frozenset(
    {"www", "public", "api", "admin", "static", "media", "template"}
)


HOST_RE = re.compile(
    r"^(?=.{1,253}$)(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*$"
)


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
