"""Tenant provisioning (TEN-3, TEN-4, TEN-6): validation, schema creation
from the template snapshot or by migration, and the migration pre-check."""

from __future__ import annotations

import dataclasses
import functools
import secrets
from collections.abc import Callable

from django.conf import settings
from django.db import connection, transaction
from django_tenants.utils import schema_context, tenant_context

from portal.errors import ApplicationError, Conflict
from portal.services.registry import audit_exempt, audits
from tenants.models import Domain, Tenant, TenantStatus
from tenants.schema_copy import schema_create_from_snapshot, snapshot_get
from tenants.services.platform import (
    platform_audit_record,
    public_tenant_ensure,
    schema_for_slug,
    tenant_origin,
    validate_domain,
    validate_slug,
)

Progress = Callable[[str], None]


def _noop(_: str) -> None:
    return None


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
        if existing is None and _schema_exists(schema_name):
            # Left over from an earlier tenant: adopting it would bring back
            # its people, passwords and audit log. An operator decides.
            raise Conflict(
                f"A schema named {schema_name} already exists without a tenant; "
                "an operator must inspect and drop it before this slug is used.",
                code="schema_exists",
            )

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
                cursor.execute(
                    f"DROP SCHEMA {connection.ops.quote_name(schema)} CASCADE"
                )
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
