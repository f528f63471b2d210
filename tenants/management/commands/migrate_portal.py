"""Migrate public, then only the tenant schemas that are behind (TEN-6).

`python manage.py migrate_portal` is what deploys (and `make run`) use
instead of plain `migrate`: shared apps first, the public tenant ensured,
then the pre-check, then the first behind schema alone as a canary, then
the rest. Each schema migrates separately, so a killed run restarts where it
stopped.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from tenants.services import (
    public_tenant_ensure,
    template_tenant_ensure,
    tenant_schemas_behind,
)


class Command(BaseCommand):
    help = "Migrate the public schema, then every tenant schema that is behind."

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("migrate_schemas", shared=True, interactive=False, verbosity=0)
        public_tenant_ensure()
        if settings.TENANT_CREATION_FAKES_MIGRATIONS:
            template_tenant_ensure()
        behind = tenant_schemas_behind()
        self.stderr.write(f"{len(behind)} tenant schema(s) behind.")
        if not behind:
            return
        canary, rest = behind[0], behind[1:]
        call_command(
            "migrate_schemas", schema_name=canary, interactive=False, verbosity=0
        )
        self.stderr.write(f"canary {canary} migrated.")
        for schema in rest:
            call_command(
                "migrate_schemas", schema_name=schema, interactive=False, verbosity=0
            )
        self.stderr.write("done.")
