"""SFTP fixtures only: a real `SftpServer` on a free port, client keys, and
helpers that drive it with OpenSSH `sftp`/`ssh` and paramiko's client.

The server runs in a thread of the test process against `committed_tenant`
(its threads use their own database connections, so the data must really
commit). PORTAL_DATA_DIR points at a temporary directory so the tests can
prove that nothing lands outside the tenant's spool.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko
import pytest
from django_tenants.utils import tenant_context

from edi.services.sftp import (
    DEFAULT_LIMITS,
    HostKey,
    SftpLimits,
    sftp_host_key_ensure,
    sftp_key_register,
)
from edi.sftpd import SftpServer
from tenants.models import SftpAuthEvent, Tenant
from tests.conftest import ci_requires


@dataclass
class ClientKey:
    path: Path
    public_line: str
    pkey: paramiko.PKey


def _keygen(directory: Path, name: str, *args: str) -> ClientKey:
    path = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-N", "", "-C", f"{name}@test", "-f", str(path), *args],
        check=True,
        capture_output=True,
    )
    return ClientKey(
        path=path,
        public_line=(directory / f"{name}.pub").read_text().strip(),
        pkey=paramiko.PKey.from_path(path),
    )


@pytest.fixture(scope="session")
def ssh_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ClientKey]:
    """Client key pairs made by ssh-keygen (as an HR system would)."""
    for tool in ("ssh-keygen", "sftp", "ssh"):
        if shutil.which(tool) is None:
            ci_requires(f"OpenSSH client ({tool})")
    directory = tmp_path_factory.mktemp("ssh-keys")
    return {
        "ed25519": _keygen(directory, "ed25519", "-t", "ed25519"),
        "ed25519_other": _keygen(directory, "ed25519_other", "-t", "ed25519"),
        "ecdsa": _keygen(directory, "ecdsa", "-t", "ecdsa", "-b", "256"),
        "rsa": _keygen(directory, "rsa", "-t", "rsa", "-b", "2048"),
        "rsa1024": _keygen(directory, "rsa1024", "-t", "rsa", "-b", "1024"),
    }


@pytest.fixture
def sftp_data_dir(settings: Any, tmp_path: Path) -> Path:
    """A private PORTAL_DATA_DIR: the spool and the host key live here."""
    data = tmp_path / "data"
    data.mkdir()
    settings.PORTAL_DATA_DIR = data
    return data


@pytest.fixture
def _clean_auth_events(committed_tenant: Tenant) -> Iterator[None]:
    """Sign-in counters are committed, public rows: start and end empty."""
    SftpAuthEvent.objects.all().delete()
    yield
    SftpAuthEvent.objects.all().delete()


@dataclass
class SftpHarness:
    """A running server and the ways to talk to it."""

    server: SftpServer
    host_key: HostKey
    tenant: Tenant
    port: int
    keys: dict[str, ClientKey]
    workdir: Path
    data_dir: Path
    known_hosts: Path
    transports: list[paramiko.Transport] = field(default_factory=list)

    @property
    def username(self) -> str:
        return self.tenant.slug

    @property
    def spool(self) -> Path:
        return self.data_dir / "edi-spool" / self.tenant.schema_name

    # -- paramiko --------------------------------------------------------

    def transport(self, *, source_ip: str = "127.0.0.1") -> paramiko.Transport:
        """A connected, unauthenticated client transport (host key checked)."""
        sock = socket.create_connection(
            ("127.0.0.1", self.port), timeout=10, source_address=(source_ip, 0)
        )
        transport = paramiko.Transport(sock)
        self.transports.append(transport)
        transport.start_client(timeout=10)
        remote = transport.get_remote_server_key()
        assert remote.asbytes() == self.host_key.key.asbytes()
        return transport

    def client(
        self,
        *,
        key: str = "ed25519",
        username: str | None = None,
        source_ip: str = "127.0.0.1",
    ) -> paramiko.SFTPClient:
        transport = self.transport(source_ip=source_ip)
        transport.auth_publickey(username or self.username, self.keys[key].pkey)
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        return sftp

    # -- OpenSSH ---------------------------------------------------------

    def _openssh_options(self, key: str, extra: tuple[str, ...]) -> list[str]:
        return [
            "-F",
            "/dev/null",
            "-i",
            str(self.keys[key].path),
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=10",
            *extra,
        ]

    def sftp_batch(
        self,
        batch: str,
        *,
        key: str = "ed25519",
        username: str | None = None,
        extra: tuple[str, ...] = (),
    ) -> subprocess.CompletedProcess[str]:
        """`sftp -b -` with `batch` on stdin, from the work directory."""
        return subprocess.run(
            [
                "sftp",
                "-b",
                "-",
                "-P",
                str(self.port),
                *self._openssh_options(key, extra),
                f"{username or self.username}@127.0.0.1",
            ],
            input=batch,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.workdir,
            check=False,
        )

    def ssh(
        self, *command: str, key: str = "ed25519", extra: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "ssh",
                "-p",
                str(self.port),
                *self._openssh_options(key, extra),
                f"{self.username}@127.0.0.1",
                *command,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def write(self, name: str, data: bytes) -> Path:
        path = self.workdir / name
        path.write_bytes(data)
        return path


SftpStarter = Callable[..., SftpHarness]


@pytest.fixture
def start_sftpd(
    committed_tenant: Tenant,
    sftp_data_dir: Path,
    ssh_keys: dict[str, ClientKey],
    tmp_path: Path,
    _clean_auth_events: None,
) -> Iterator[SftpStarter]:
    """Start a real server (own limits if given) for `committed_tenant`,
    whose ed25519, ecdsa and rsa keys are registered."""
    started: list[tuple[SftpServer, threading.Thread, SftpHarness]] = []
    with tenant_context(committed_tenant):
        for name in ("ed25519", "ecdsa", "rsa"):
            sftp_key_register(
                public_key_text=ssh_keys[name].public_line, name=name, actor=None
            )
    host_key = sftp_host_key_ensure(path=tmp_path / "host" / "ssh_host_ed25519_key")
    workdir = tmp_path / "work"
    workdir.mkdir()

    def start(limits: SftpLimits = DEFAULT_LIMITS) -> SftpHarness:
        server = SftpServer(
            host_key=host_key.key, bind="127.0.0.1", port=0, limits=limits
        )
        _, port = server.listen()
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        known_hosts = tmp_path / f"known_hosts_{port}"
        public = f"{host_key.key.get_name()} {host_key.key.get_base64()}"
        known_hosts.write_text(f"[127.0.0.1]:{port} {public}\n")
        harness = SftpHarness(
            server=server,
            host_key=host_key,
            tenant=committed_tenant,
            port=port,
            keys=ssh_keys,
            workdir=workdir,
            data_dir=sftp_data_dir,
            known_hosts=known_hosts,
        )
        started.append((server, thread, harness))
        return harness

    yield start
    for server, thread, harness in started:
        for transport in harness.transports:
            transport.close()
        server.shutdown(grace=2)
        thread.join(timeout=10)


@pytest.fixture
def sftpd(start_sftpd: SftpStarter) -> SftpHarness:
    """A server with EDI-C3's default limits."""
    return start_sftpd()
