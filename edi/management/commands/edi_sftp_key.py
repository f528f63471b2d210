"""`manage.py edi_sftp_key SLUG --public-key FILE [--name NAME]`.

Registers an SFTP public key for the tenant, as the `/edi/` page does.
FILE is an OpenSSH `.pub` file (or an RFC 4716 block from PuTTYgen), or
`-` for standard input. Prints one JSON line `{"slug", "username", "name",
"algorithm", "bits", "fingerprint"}`, or exits 1 with
`error: <reason code>: <message>` on stderr.
"""

from __future__ import annotations

import json
import sys
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import CommandError

from edi.services.sftp import MAX_KEY_TEXT, sftp_key_register
from portal.commands import TenantCommand
from portal.errors import ApplicationError


class Command(TenantCommand):
    help = "Register an SFTP public key for a tenant."

    def add_arguments(self, parser: ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--public-key", required=True, metavar="FILE")
        parser.add_argument(
            "--name", default="", help="default: the key's comment, or the file name"
        )

    def handle_tenant(self, tenant: Any, **options: Any) -> str | None:
        source = options["public_key"]
        if source == "-":
            text = sys.stdin.read(MAX_KEY_TEXT + 1)
            default_name = ""
        else:
            path = Path(source)
            try:
                with path.open("rb") as handle:
                    data = handle.read(MAX_KEY_TEXT + 1)
            except OSError as exc:
                raise CommandError(
                    f"error: public_key_unreadable: {exc.strerror}: {path}",
                    returncode=1,
                ) from None
            text = data.decode("utf-8", errors="replace")
            default_name = path.name
        try:
            sftp_key = sftp_key_register(
                public_key_text=text,
                name=options["name"] or _comment(text) or default_name,
                actor=None,
            )
        except ApplicationError as exc:
            raise CommandError(
                f"error: {exc.code}: {exc.message}", returncode=1
            ) from None
        self.stdout.write(
            json.dumps(
                {
                    "slug": tenant.slug,
                    "username": tenant.slug,
                    "name": sftp_key.name,
                    "algorithm": sftp_key.algorithm,
                    "bits": sftp_key.bits,
                    "fingerprint": sftp_key.fingerprint,
                }
            )
        )
        return None


def _comment(text: str) -> str:
    parts = text.strip().split(None, 2)
    return parts[2].strip() if len(parts) == 3 and "\n" not in parts[2] else ""
