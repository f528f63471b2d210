"""`manage.py sso_configure SLUG --idp-metadata FILE [--enforce-sso]
[--allow-idp-initiated] [--jit]`: the `/sso/` page's metadata upload.

Prints one JSON line `{"slug", "idp_entity_id", "sp_entity_id", "acs_url"}`,
or exits 1 with `error: <reason code>: <message>` on stderr. The flags only
switch policies on; everything is applied in one transaction or not at all.
"""

from __future__ import annotations

import json
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import CommandError
from django.db import transaction

from portal.commands import TenantCommand
from portal.errors import ApplicationError
from sso.services import (
    idp_configure_from_metadata,
    idp_policies_set,
    saml_context,
    sp_urls,
)
from sso.services.keys import sp_key_ensure
from sso.services.xmlcheck import MAX_METADATA_BYTES


class Command(TenantCommand):
    help = "Set a tenant's identity provider from its SAML metadata XML."

    def add_arguments(self, parser: ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--idp-metadata", required=True, metavar="FILE")
        parser.add_argument("--enforce-sso", action="store_true")
        parser.add_argument("--allow-idp-initiated", action="store_true")
        parser.add_argument("--jit", action="store_true")

    def handle_tenant(self, tenant: Any, **options: Any) -> str | None:
        path = Path(options["idp_metadata"])
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_METADATA_BYTES + 1)
        except OSError as exc:
            raise CommandError(
                f"error: metadata_unreadable: {exc.strerror}: {path}", returncode=1
            ) from None
        if len(data) > MAX_METADATA_BYTES:
            raise CommandError(
                "error: metadata_too_large: The metadata is larger than 1 MiB.",
                returncode=1,
            )
        try:
            with transaction.atomic():
                sp_key_ensure()
                idp = idp_configure_from_metadata(data=data, actor=None)
                policies: dict[str, bool] = {}
                if options["allow_idp_initiated"]:
                    policies["allow_idp_initiated"] = True
                if options["jit"]:
                    policies["jit_enabled"] = True
                if options["enforce_sso"]:
                    policies["enforce_sso"] = True
                if policies:
                    idp = idp_policies_set(actor=None, operator=True, **policies)
        except ApplicationError as exc:
            raise CommandError(
                f"error: {exc.code}: {exc.message}", returncode=1
            ) from None
        urls = sp_urls(saml_context(idp=idp).origin)
        self.stdout.write(
            json.dumps(
                {
                    "slug": tenant.slug,
                    "idp_entity_id": idp.entity_id,
                    "sp_entity_id": urls["entity_id"],
                    "acs_url": urls["acs_url"],
                }
            )
        )
        return None
