"""`manage.py sftpd [--bind 127.0.0.1] [--port 2222] [--host-key PATH]`.

Runs the EDI SFTP drop box (EDI-C3) until SIGINT or SIGTERM. The host key
is created once (Ed25519, mode 0600, default under PORTAL_DATA_DIR) and
never replaced; its fingerprints are printed at start. `--port 0` picks a
free port and prints it. Exits 1 with `error: <code>: <message>` on stderr
when the key is unusable or the address is taken.
"""

from __future__ import annotations

import logging
import signal
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from edi.services.sftp import sftp_host_key_default_path, sftp_host_key_ensure
from edi.sftpd import SftpServer
from portal.errors import ApplicationError


class Command(BaseCommand):
    help = "Run the EDI SFTP server."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--bind", default="127.0.0.1", metavar="ADDRESS")
        parser.add_argument("--port", type=int, default=2222)
        parser.add_argument(
            "--host-key",
            metavar="PATH",
            help=f"default: {sftp_host_key_default_path()}",
        )
        parser.add_argument(
            "--grace",
            type=float,
            default=30.0,
            help="seconds that running uploads get to finish on stop",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # paramiko logs every rejected sign-in at INFO; the audit log has them.
        logging.getLogger("paramiko").setLevel(logging.WARNING)
        path = Path(options["host_key"]) if options["host_key"] else None
        try:
            host_key = sftp_host_key_ensure(path=path)
        except ApplicationError as exc:
            raise CommandError(
                f"error: {exc.code}: {exc.message}", returncode=1
            ) from None
        server = SftpServer(
            host_key=host_key.key, bind=options["bind"], port=options["port"]
        )

        def stop(*_: Any) -> None:
            server.request_stop()

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            host, port = server.listen()
        except OSError as exc:
            raise CommandError(
                f"error: sftp_listen_failed: {exc.strerror}: "
                f"{options['bind']}:{options['port']}",
                returncode=1,
            ) from None
        self.stdout.write(
            f"SFTP server listening on {host}:{port}\n"
            f"Host key {host_key.path} ({host_key.algorithm}):\n"
            f"  {host_key.sha256}\n"
            f"  {host_key.md5}"
        )
        self.stdout.flush()
        server.serve_forever()
        self.stderr.write("SFTP server stopping…")
        server.shutdown(grace=options["grace"])
        self.stdout.write("SFTP server stopped.")
