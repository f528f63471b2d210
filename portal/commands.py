"""Base class for management commands that act on one tenant (TEN-14)."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django_tenants.utils import schema_context, tenant_context

from portal import context


class TenantCommand(BaseCommand):
    """Resolve `SLUG` in public; exit 1 unless the tenant is active.

    Subclasses implement `handle_tenant(tenant, **options)`, which runs
    inside `tenant_context` with the audit source set to `cli`.
    """

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("slug", metavar="SLUG", help="The tenant's slug.")

    def handle(self, *args: Any, **options: Any) -> str | None:
        from tenants.models import Tenant, TenantStatus

        slug = options["slug"]
        with schema_context("public"):
            tenant = (
                Tenant.objects.filter(slug=slug).exclude(schema_name="public").first()
            )
        if tenant is None:
            raise CommandError(
                f"error: tenant_unknown: No tenant with the slug {slug!r}.",
                returncode=1,
            )
        if tenant.status != TenantStatus.ACTIVE:
            raise CommandError(
                f"error: tenant_inactive: Tenant {slug!r} is not active "
                f"({tenant.status}).",
                returncode=1,
            )
        with (
            tenant_context(tenant),
            context.actor_context(
                actor_type="system", actor_label="command line", source="cli"
            ),
        ):
            return self.handle_tenant(tenant, **options)

    def handle_tenant(self, tenant: Any, **options: Any) -> str | None:
        raise NotImplementedError
