"""`manage.py edi_token SLUG [--name NAME]`: issue an EDI HTTPS token.

Prints one JSON line `{"slug", "name", "token", "prefix", "scopes",
"expires_at"}`. The token is shown only this once: the portal keeps its
hash. Exits 1 with `error: <code>: <message>` on stderr otherwise.
"""

from __future__ import annotations

import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import CommandError

from edi.services.tokens import edi_token_issue
from portal.commands import TenantCommand
from portal.errors import ApplicationError

DEFAULT_NAME = "HTTPS upload"


class Command(TenantCommand):
    help = "Issue an EDI HTTPS token for a tenant and print it once."

    def add_arguments(self, parser: ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--name",
            default=DEFAULT_NAME,
            help=f"What the token is for (default: {DEFAULT_NAME!r}).",
        )

    def handle_tenant(self, tenant: Any, **options: Any) -> str | None:
        try:
            token, plaintext = edi_token_issue(name=options["name"], actor=None)
        except ApplicationError as exc:
            raise CommandError(
                f"error: {exc.code}: {exc.message}", returncode=1
            ) from None
        self.stdout.write(
            json.dumps(
                {
                    "slug": tenant.slug,
                    "name": token.name,
                    "token": plaintext,
                    "prefix": token.prefix,
                    "scopes": token.scopes,
                    "expires_at": token.expires_at.isoformat(),
                }
            )
        )
        return None
