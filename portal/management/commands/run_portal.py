"""`make run`: migrate, ensure the demo tenant, run web + worker + beat.

Prints the URLs and the demo owner's login; Ctrl-C stops every process.
Running it again reuses the data (and the demo owner's password, kept in
PORTAL_DATA_DIR/demo-owner.json with mode 0600).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django_tenants.utils import schema_context, tenant_context

DEMO_SLUG = "acme"
DEMO_OWNER = "owner@acme.example"
DEMO_MEMBERS = 300
SFTP_BIND = "127.0.0.1"


class Command(BaseCommand):
    help = "Run the whole portal locally with a demo tenant (make run)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--no-worker", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        self._migrate()
        login = self._demo_tenant()
        self._serve(options, login)

    def _migrate(self) -> None:
        self.stderr.write("Migrating…")
        call_command("migrate_portal")
        call_command("collectstatic", interactive=False, verbosity=0)

    def _demo_tenant(self) -> dict[str, str]:
        from portal.services.demo import demo_members_seed
        from tenants.models import Tenant
        from tenants.services import tenant_provision

        secret_file = Path(settings.PORTAL_DATA_DIR) / "demo-owner.json"
        with schema_context("public"):
            tenant = Tenant.objects.filter(slug=DEMO_SLUG).first()
        if (
            tenant is None
            or tenant.status == "provisioning"
            or not secret_file.exists()
        ):
            self.stderr.write("Creating the demo tenant acme…")
            if tenant is not None and tenant.status != "provisioning":
                # The tenant exists but its saved login is gone: reset it.
                from portal.services.members import member_owner_ensure

                password = _new_password()
                with tenant_context(tenant):
                    member_owner_ensure(email=DEMO_OWNER, password=password)
                login = {"email": DEMO_OWNER, "password": password}
            else:
                result = tenant_provision(
                    slug=DEMO_SLUG,
                    name="Acme Corporation",
                    owner_email=DEMO_OWNER,
                    seat_limit=250,
                )
                tenant = result.tenant
                login = {"email": result.owner_email, "password": result.owner_password}
            secret_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(login, handle)
        login = json.loads(secret_file.read_text())
        with schema_context("public"):
            tenant = Tenant.objects.get(slug=DEMO_SLUG)
        with tenant_context(tenant):
            added = demo_members_seed(count=DEMO_MEMBERS, domain="acme.example")
        if added:
            self.stderr.write(f"Added {added} demo members.")
        return login

    def _serve(self, options: dict[str, Any], login: dict[str, str]) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        python = sys.executable
        bin_dir = Path(python).parent
        host, port = options["host"], options["port"]
        commands = {
            "web": [python, "manage.py", "runserver", f"{host}:{port}", "--noreload"],
            # --grace: uploads get 10 s to finish, inside the 20 s below.
            "sftpd": [
                python,
                "manage.py",
                "sftpd",
                "--bind",
                SFTP_BIND,
                "--port",
                "2222",
                "--grace",
                "10",
            ],
        }
        # The child would create it too; creating it here (once, never
        # replaced) lets the banner show its fingerprint.
        from edi.services.sftp import sftp_host_key_ensure

        sftp_host_key = sftp_host_key_ensure()
        if not options["no_worker"]:
            commands["worker"] = [
                str(bin_dir / "celery"),
                "-A",
                "portal",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                "2",
            ]
            commands["beat"] = [
                str(bin_dir / "celery"),
                "-A",
                "portal",
                "beat",
                "--loglevel",
                "INFO",
            ]
        processes = {
            name: subprocess.Popen(cmd, env=env, start_new_session=True)  # noqa: S603
            for name, cmd in commands.items()
        }
        base = settings.PORTAL_BASE_DOMAIN
        self.stdout.write(
            "\n"
            f"  Demo tenant:   http://{DEMO_SLUG}.{base}:{port}/\n"
            f"  Owner login:   {login['email']} / {login['password']}\n"
            f"  Console:       http://{base}:{port}/  (operators: "
            "python manage.py createsuperuser)\n"
            f"  API docs:      http://{DEMO_SLUG}.{base}:{port}/api/docs/\n"
            f"  SFTP server:   sftp -P 2222 {DEMO_SLUG}@{SFTP_BIND}  (host key "
            f"{sftp_host_key.sha256}; keys: python manage.py edi_sftp_key "
            f"{DEMO_SLUG} --public-key FILE.pub)\n"
            "  Ctrl-C stops everything.\n"
        )
        stopping = False

        def stop(*_: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            while not stopping:
                for name, proc in processes.items():
                    if proc.poll() is not None:
                        self.stderr.write(
                            f"{name} exited ({proc.returncode}); stopping."
                        )
                        stopping = True
                time.sleep(0.5)
        finally:
            # SIGINT, like Ctrl-C in a terminal: every child shuts down
            # cleanly and detaches from the embedded database.
            for proc in processes.values():
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGINT)
            deadline = time.monotonic() + 20
            for proc in processes.values():
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
            if not os.environ.get("DATABASE_URL"):
                from portal.devdb import handles_prune

                # Children killed above never detached; this process is then
                # the last, and the embedded server stops when it exits.
                handles_prune(Path(settings.PORTAL_DATA_DIR))
            self.stderr.write("Stopped.")


def _new_password() -> str:
    import secrets

    return secrets.token_urlsafe(18)
