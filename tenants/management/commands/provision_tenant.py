"""`provision_tenant SLUG --name NAME --owner-email EMAIL …` (DESIGN.md)."""

from __future__ import annotations

import json
import sys
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from portal import context
from portal.errors import ApplicationError
from tenants.services import tenant_provision


class Command(BaseCommand):
    help = "Create a tenant, its schema, domain and owner; print one JSON line."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("slug", metavar="SLUG")
        parser.add_argument("--name", required=True)
        parser.add_argument("--owner-email", required=True)
        parser.add_argument("--domain", default=None)
        parser.add_argument("--seat-limit", type=int, default=None)
        parser.add_argument(
            "--owner-password-stdin",
            action="store_true",
            help="Read the owner's password from standard input.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        password = None
        if options["owner_password_stdin"]:
            password = sys.stdin.readline().rstrip("\r\n")
            if not password:
                raise CommandError("No password on standard input.", returncode=1)
        with context.actor_context(
            actor_type="operator", actor_label="command line", source="cli"
        ):
            try:
                result = tenant_provision(
                    slug=options["slug"],
                    name=options["name"],
                    owner_email=options["owner_email"],
                    domain=options["domain"],
                    owner_password=password,
                    seat_limit=options["seat_limit"],
                    progress=lambda step: self.stderr.write(f"provision: {step}"),
                )
            except ApplicationError as exc:
                raise CommandError(exc.message, returncode=1) from None
        self.stdout.write(json.dumps(result.as_json()))
