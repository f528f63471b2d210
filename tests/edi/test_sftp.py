"""EDI-C3: the SFTP drop box, driven by OpenSSH `sftp`/`ssh` and paramiko
against the real server (tests/edi/conftest.py), plus key registration,
the host key and the `sftpd` / `edi_sftp_key` commands."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ed25519, rsa
from django.conf import settings as django_settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django_tenants.utils import schema_context, tenant_context
from paramiko.sftp import CMD_CLOSE, CMD_EXTENDED

from edi.models import EdiFile, EdiSettings, SftpKey
from edi.services.sftp import (
    DEFAULT_LIMITS,
    SftpKeyError,
    SftpLimits,
    sftp_host_key_ensure,
    sftp_key_parse,
    sftp_key_register,
    sftp_key_remove,
    sftp_path_resolve,
    sftp_upload_mode,
)
from edi.sftpd import disabled_algorithms
from portal.errors import ApplicationError
from portal.models import AuditEvent
from tenants.models import PlatformAuditEvent, SftpAccount, SftpAuthEvent, Tenant
from tests.edi.conftest import SftpHarness, SftpStarter

CSV = b"email,first_name\nada@example.com,Ada\nbob@example.com,Bob\n"


def _files(tenant: Tenant) -> list[EdiFile]:
    with tenant_context(tenant):
        return list(EdiFile.objects.select_related("sftp_key").order_by("received_at"))


def _audit(tenant: Tenant, action: str) -> list[AuditEvent]:
    with tenant_context(tenant):
        return list(AuditEvent.objects.filter(action=action).order_by("id"))


def _spool_entries(harness: SftpHarness) -> list[str]:
    return (
        sorted(p.name for p in harness.spool.iterdir())
        if harness.spool.exists()
        else []
    )


def _all_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() or p.is_symlink()]


# -- uploads: the table of EDI-C3 ---------------------------------------------


def test_openssh_put_is_received_before_sftp_exits_0(sftpd: SftpHarness):
    sftpd.write("people.csv", CSV)

    result = sftpd.sftp_batch("put people.csv\nls -l\n")

    assert result.returncode == 0, result.stderr
    assert "people.csv" in result.stdout
    [edi_file] = _files(sftpd.tenant)  # committed before sftp exited
    assert edi_file.source == "sftp"
    assert edi_file.original_name == "people.csv"
    assert edi_file.status in {"received", "duplicate"}
    assert edi_file.mode == "delta"  # the tenant's default
    assert edi_file.sha256 == hashlib.sha256(CSV).hexdigest()
    assert edi_file.size == len(CSV)
    assert edi_file.sftp_key is not None
    assert edi_file.sftp_key.name == "ed25519"
    # Nothing is left in the spool: the receive service encrypted it away.
    assert _spool_entries(sftpd) == []
    [login] = _audit(sftpd.tenant, "edi.sftp.login_succeeded")
    assert login.ip == "127.0.0.1"
    assert login.source == "sftp"
    assert login.actor_type == "sftp_key"
    assert login.changes["fingerprint"] == edi_file.sftp_key.fingerprint
    [received] = _audit(sftpd.tenant, "edi.file.received")
    assert received.ip == "127.0.0.1"
    assert received.changes["sftp_key"] == edi_file.sftp_key.fingerprint
    with tenant_context(sftpd.tenant):
        key = SftpKey.objects.get(name="ed25519")
    assert key.last_used_ip == "127.0.0.1"
    assert key.last_used_at is not None


@pytest.mark.parametrize("key", ["ecdsa", "rsa"])
def test_ecdsa_and_rsa_keys_sign_in(sftpd: SftpHarness, key: str):
    sftpd.write("people.csv", CSV)
    result = sftpd.sftp_batch("put people.csv\n", key=key)
    assert result.returncode == 0, result.stderr
    [edi_file] = _files(sftpd.tenant)
    assert edi_file.sftp_key is not None
    assert edi_file.sftp_key.name == key


def test_file_name_sets_the_mode(sftpd: SftpHarness):
    with tenant_context(sftpd.tenant):
        EdiSettings.objects.update_or_create(id=1, defaults={"default_mode": "full"})
    sftp = sftpd.client()
    uploads = {
        "full_2024.csv": b"email\na@x.io\n",
        "Full-upper.CSV": b"email\nb@x.io\n",
        "delta_2024.csv": b"email\nc@x.io\n",
        "DELTA.csv": b"email\nd@x.io\n",
        "people.csv": b"email\ne@x.io\n",
    }
    for name, data in uploads.items():
        with sftp.open(name, "w") as handle:
            handle.write(data)

    modes = {f.original_name: f.mode for f in _files(sftpd.tenant)}
    assert modes == {
        "full_2024.csv": "full",
        "Full-upper.CSV": "full",
        "delta_2024.csv": "delta",
        "DELTA.csv": "delta",
        "people.csv": "full",  # the tenant's default
    }
    assert sftp_upload_mode("fullness.csv") == "full"  # DESIGN.md: "starts with"
    assert sftp_upload_mode("x-full.csv") is None


def test_read_append_other_names_and_subdirectories_are_denied(sftpd: SftpHarness):
    sftp = sftpd.client()
    with sftp.open("up.csv", "w") as handle:
        handle.write(CSV)
    refused = [
        ("up.csv", "r"),  # read
        ("up.csv", "r+"),  # read and write
        ("up.csv", "a"),  # append
        ("notes.txt", "w"),  # another name
        ("people", "w"),
        (".hidden.csv", "w"),
        (".part-0123.csv", "w"),
        ("sub/people.csv", "w"),  # a sub-directory
        ("/", "w"),
    ]
    for name, mode in refused:
        with pytest.raises(PermissionError):
            sftp.open(name, mode)
    assert [f.original_name for f in _files(sftpd.tenant)] == ["up.csv"]
    # OpenSSH: get is a read.
    assert sftpd.sftp_batch("get up.csv\n").returncode != 0
    assert not (sftpd.workdir / "up.csv").exists()
    assert _spool_entries(sftpd) == []


def test_upload_past_the_limit_fails_and_leaves_nothing(
    sftpd: SftpHarness, settings: Any
):
    settings.EDI_MAX_FILE_BYTES = 4096
    sftpd.write("big.csv", b"email\n" + b"someone@example.com\n" * 1000)

    result = sftpd.sftp_batch("put big.csv\n")

    assert result.returncode != 0
    assert _files(sftpd.tenant) == []
    assert _spool_entries(sftpd) == []  # the part is deleted
    [refused] = _audit(sftpd.tenant, "edi.sftp.upload_refused")
    assert refused.changes["reason"] == "file_too_large"
    assert refused.changes["name"] == "big.csv"
    assert refused.ip == "127.0.0.1"
    # A file at the limit is fine.
    sftpd.write("limit.csv", b"email\n" + b"x" * (4096 - 7) + b"\n")
    assert sftpd.sftp_batch("put limit.csv\n").returncode == 0
    assert [f.size for f in _files(sftpd.tenant)] == [4096]


def test_sparse_write_beyond_the_limit_fails(sftpd: SftpHarness, settings: Any):
    settings.EDI_MAX_FILE_BYTES = 4096
    sftp = sftpd.client()
    handle = sftp.open("sparse.csv", "w")
    handle.write(b"email\n")
    handle.seek(10 * 1024 * 1024)
    with pytest.raises(OSError, match="Failure"):
        handle.write(b"x@example.com\n")
    # paramiko's close() swallows errors: send the CLOSE and read the answer.
    with pytest.raises(OSError, match="refused"):
        sftp._request(CMD_CLOSE, handle.handle)
    handle._closed = True

    assert _files(sftpd.tenant) == []
    assert _spool_entries(sftpd) == []
    [refused] = _audit(sftpd.tenant, "edi.sftp.upload_refused")
    assert refused.changes["size"] == 10 * 1024 * 1024 + 14


def test_zero_byte_upload_is_only_audited(sftpd: SftpHarness):
    sftpd.write("empty.csv", b"")

    result = sftpd.sftp_batch("put empty.csv\n")

    assert result.returncode != 0  # not accepted: nothing will be imported
    assert "Failure" in result.stderr
    assert _files(sftpd.tenant) == []
    assert _spool_entries(sftpd) == []
    [event] = _audit(sftpd.tenant, "edi.sftp.upload_empty")
    assert event.changes["name"] == "empty.csv"
    assert event.changes["fingerprint"].startswith("SHA256:")
    assert event.ip == "127.0.0.1"


def test_list_and_stat_show_only_this_sessions_uploads(sftpd: SftpHarness):
    # Someone else's upload in flight and an unimported leftover.
    sftpd.spool.mkdir(parents=True, exist_ok=True)
    (sftpd.spool / ".part-abc").write_bytes(b"x")
    (sftpd.spool / "0123abcd.csv").write_bytes(b"x")
    sftp = sftpd.client()
    assert sftp.listdir("/") == []
    assert sftp.normalize(".") == "/"
    assert sftp.stat("/").st_mode is not None
    with sftp.open("mine.csv", "w") as handle:
        handle.write(CSV)

    assert sftp.listdir("/") == ["mine.csv"]
    assert sftp.listdir(".") == ["mine.csv"]
    assert sftp.stat("mine.csv").st_size == len(CSV)
    assert sftp.lstat("/mine.csv").st_size == len(CSV)
    for missing in ("other.csv", "0123abcd.csv", ".part-abc", "sub", "sub/x.csv"):
        with pytest.raises(FileNotFoundError):
            sftp.stat(missing)
    with pytest.raises(FileNotFoundError):
        sftp.listdir("/sub")
    # A new session starts empty.
    assert sftpd.client().listdir("/") == []


def test_remove_rename_mkdir_rmdir_are_denied(sftpd: SftpHarness):
    sftp = sftpd.client()
    with sftp.open("mine.csv", "w") as handle:
        handle.write(CSV)
    calls = [
        lambda: sftp.remove("mine.csv"),
        lambda: sftp.rename("mine.csv", "other.csv"),
        lambda: sftp.mkdir("sub"),
        lambda: sftp.rmdir("sub"),
        lambda: sftp.rmdir("/"),
    ]
    for call in calls:
        with pytest.raises(PermissionError):
            call()
    result = sftpd.sftp_batch("rm mine.csv\n")
    assert result.returncode != 0
    assert "Permission denied" in result.stderr
    assert sftpd.sftp_batch("mkdir sub\n").returncode != 0
    assert sftpd.sftp_batch("rename a.csv b.csv\n").returncode != 0
    assert _spool_entries(sftpd) == []


def test_links_and_posix_rename_are_unsupported(sftpd: SftpHarness):
    sftp = sftpd.client()
    with sftp.open("mine.csv", "w") as handle:
        handle.write(CSV)
    calls = [
        lambda: sftp.symlink("mine.csv", "link.csv"),
        lambda: sftp.readlink("mine.csv"),
        lambda: sftp.posix_rename("mine.csv", "other.csv"),
        # No client method for OpenSSH's hard link extension: send it raw.
        lambda: sftp._request(
            CMD_EXTENDED, "hardlink@openssh.com", "mine.csv", "other.csv"
        ),
    ]
    for call in calls:
        with pytest.raises(OSError, match="Operation unsupported"):
            call()
    result = sftpd.sftp_batch("symlink mine.csv link.csv\n")
    assert result.returncode != 0
    assert _spool_entries(sftpd) == []


def test_setstat_is_accepted_and_ignored(sftpd: SftpHarness):
    path = sftpd.write("kept.csv", CSV)
    path.chmod(0o644)
    os.utime(path, (1_000_000_000, 1_000_000_000))

    result = sftpd.sftp_batch("put -p kept.csv\n")

    assert result.returncode == 0, result.stderr
    sftp = sftpd.client()
    with sftp.open("again.csv", "w") as handle:
        handle.write(b"email\nz@x.io\n")
        handle.chmod(0o777)
    sftp.chmod("/", 0o777)
    sftp.utime("again.csv", (1, 1))
    assert len(_files(sftpd.tenant)) == 2


# -- the virtual root ---------------------------------------------------------


def test_paths_outside_the_root_are_denied_and_audited(
    sftpd: SftpHarness, tmp_path: Path
):
    outside = tmp_path / "outside"
    outside.mkdir()
    sftpd.spool.mkdir(parents=True, exist_ok=True)
    # A bare prefix check would let /t_x match /t_x0: make that neighbour.
    neighbour = sftpd.spool.parent / (sftpd.tenant.schema_name + "0")
    neighbour.mkdir()
    other_slug = sftpd.spool.parent / "t_other"
    other_slug.mkdir(exist_ok=True)
    (sftpd.spool / "linkdir").symlink_to(outside, target_is_directory=True)
    (sftpd.spool / "link.csv").symlink_to(outside / "target.csv")
    sftpd.write("x.csv", CSV)

    for target in ("../../x.csv", "/etc/x.csv", "/../x.csv", "../t_other/x.csv"):
        result = sftpd.sftp_batch(f"put x.csv {target}\n")
        assert result.returncode != 0, target
    sftp = sftpd.client()
    denied = [
        f"../{neighbour.name}/x.csv",
        "/../../../../../../tmp/x.csv",
        "linkdir/x.csv",
        "link.csv",
        "/../" + sftpd.tenant.schema_name + "/../t_other/x.csv",
    ]
    for target in denied:
        with pytest.raises(PermissionError):
            sftp.open(target, "w")
    with pytest.raises(PermissionError):
        sftp.listdir("..")
    with pytest.raises(PermissionError):
        sftp.stat("../../")
    with pytest.raises(PermissionError):
        sftp.stat("linkdir")

    assert not Path("/etc/x.csv").exists()
    landed = [p for p in _all_files(sftpd.data_dir) if p.name == "x.csv"]
    assert landed == []
    assert list(outside.iterdir()) == []
    assert list(neighbour.iterdir()) == []
    assert list(other_slug.iterdir()) == []
    assert _files(sftpd.tenant) == []
    events = _audit(sftpd.tenant, "edi.sftp.path_denied")
    paths = {e.changes["path"] for e in events}
    assert "/etc/x.csv" not in paths  # inside the root: just a sub-directory
    assert any(p.endswith("../../x.csv") for p in paths)
    assert "link.csv" in paths
    assert "linkdir/x.csv" in paths
    assert all(e.ip == "127.0.0.1" and e.changes["fingerprint"] for e in events)


def test_path_resolution_rules(tmp_path: Path):
    root = str(tmp_path / "t_acme")
    os.mkdir(root)
    os.mkdir(str(tmp_path / "t_acme1"))
    assert sftp_path_resolve(root=root, path="/") == root
    assert sftp_path_resolve(root=root, path="") == root
    assert sftp_path_resolve(root=root, path="a/../x.csv") == f"{root}/x.csv"
    assert sftp_path_resolve(root=root, path="//x.csv") == f"{root}/x.csv"
    for bad in ("..", "../t_acme1/x.csv", "/../t_acme1", "x\x00.csv", "../t_acme"):
        if bad == "../t_acme":
            # Back into the root itself is fine: it is the root.
            assert sftp_path_resolve(root=root, path=bad) == root
            continue
        with pytest.raises(ApplicationError):
            sftp_path_resolve(root=root, path=bad)


# -- who may sign in ----------------------------------------------------------


def test_password_login_is_refused(sftpd: SftpHarness):
    transport = sftpd.transport()
    with pytest.raises(paramiko.BadAuthenticationType) as caught:
        transport.auth_password(sftpd.username, "correct horse battery staple 9")
    assert caught.value.allowed_types == ["publickey"]
    result = sftpd.sftp_batch(
        "ls\n",
        extra=("-o", "PreferredAuthentications=password,keyboard-interactive"),
    )
    assert result.returncode != 0
    [failed] = _audit(sftpd.tenant, "edi.sftp.login_failed")
    assert failed.changes["method"] == "password"
    assert failed.changes["reason"] == "method_refused"
    assert failed.ip == "127.0.0.1"


def test_shell_and_commands_are_refused(sftpd: SftpHarness):
    result = sftpd.ssh("id")
    assert result.returncode != 0
    assert "uid=" not in result.stdout
    shell = sftpd.ssh(extra=("-T",))
    assert shell.returncode != 0
    transport = sftpd.transport()
    transport.auth_publickey(sftpd.username, sftpd.keys["ed25519"].pkey)
    channel = transport.open_session()
    with pytest.raises(paramiko.SSHException):
        channel.exec_command("id")
    # One session per connection; another subsystem is not offered either.
    transport2 = sftpd.transport()
    transport2.auth_publickey(sftpd.username, sftpd.keys["ed25519"].pkey)
    with pytest.raises(paramiko.SSHException):
        transport2.open_session().invoke_subsystem("netconf")
    # Port forwarding is refused.
    with pytest.raises(paramiko.ChannelException):
        transport2.open_channel("direct-tcpip", ("127.0.0.1", 22), ("127.0.0.1", 0))


def test_unknown_user_and_wrong_key_fail_identically(sftpd: SftpHarness):
    started = django_now()  # platform audit rows are append-only: they stay
    outcomes = []
    for username, key in (
        ("nosuchtenant", "ed25519"),
        (sftpd.username, "ed25519_other"),
    ):
        transport = sftpd.transport()
        with pytest.raises(paramiko.AuthenticationException) as caught:
            transport.auth_publickey(username, sftpd.keys[key].pkey)
        outcomes.append((type(caught.value), str(caught.value)))
        transport.close()
    assert outcomes[0] == outcomes[1]
    openssh = [
        sftpd.sftp_batch("ls\n", username="nosuchtenant"),
        sftpd.sftp_batch("ls\n", key="ed25519_other"),
    ]
    assert [r.returncode for r in openssh] == [255, 255]
    assert openssh[0].stderr.replace("nosuchtenant", "U") == openssh[1].stderr.replace(
        sftpd.username, "U"
    )

    [wrong_key, _] = _audit(sftpd.tenant, "edi.sftp.login_failed")
    other_fp = paramiko_fingerprint(sftpd.keys["ed25519_other"].pkey)
    assert wrong_key.changes["reason"] == "unknown_key"
    assert wrong_key.changes["fingerprint"] == other_fp
    with schema_context("public"):
        unknown = PlatformAuditEvent.objects.filter(
            action="platform.sftp.login_failed",
            changes__username="nosuchtenant",
            occurred_at__gte=started,
        )
        assert unknown.count() == 2
        assert {e.ip for e in unknown} == {"127.0.0.1"}
        assert unknown.first().changes["reason"] == "unknown_username"  # type: ignore[union-attr]


def paramiko_fingerprint(key: paramiko.PKey) -> str:
    import base64

    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode()
    return "SHA256:" + digest.rstrip("=")


def test_inactive_tenant_cannot_sign_in(sftpd: SftpHarness):
    Tenant.objects.filter(pk=sftpd.tenant.pk).update(status="suspended")
    try:
        result = sftpd.sftp_batch("ls\n")
    finally:
        Tenant.objects.filter(pk=sftpd.tenant.pk).update(status="active")
    assert result.returncode == 255
    with schema_context("public"):
        event = PlatformAuditEvent.objects.get(
            action="platform.sftp.login_failed", tenant_slug=sftpd.username
        )
    assert event.changes["reason"] == "tenant_inactive"


def test_three_failures_end_the_connection(sftpd: SftpHarness):
    transport = sftpd.transport()
    for _ in range(3):
        with pytest.raises(paramiko.AuthenticationException):
            transport.auth_publickey(sftpd.username, sftpd.keys["ed25519_other"].pkey)
    deadline = time.monotonic() + 5
    while transport.is_active() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not transport.is_active()
    with pytest.raises((paramiko.SSHException, EOFError, OSError)):
        transport.auth_publickey(sftpd.username, sftpd.keys["ed25519"].pkey)
    assert SftpAuthEvent.objects.filter(succeeded=False).count() == 3


def _fail_signins(harness: SftpHarness, *, source_ip: str, count: int) -> None:
    for _ in range(count):
        transport = harness.transport(source_ip=source_ip)
        with pytest.raises(paramiko.AuthenticationException):
            transport.auth_publickey(
                harness.username, harness.keys["ed25519_other"].pkey
            )
        transport.close()


def test_ten_failures_ban_the_ip(sftpd: SftpHarness):
    _fail_signins(sftpd, source_ip="127.0.0.5", count=9)
    sftpd.client(source_ip="127.0.0.5").listdir("/")  # not banned yet
    _fail_signins(sftpd, source_ip="127.0.0.5", count=1)

    # The ban drops the connection before the SSH handshake.
    with pytest.raises((paramiko.SSHException, EOFError, OSError)):
        sftpd.client(source_ip="127.0.0.5")
    result = sftpd.sftp_batch("ls\n", extra=("-o", "BindAddress=127.0.0.5"))
    assert result.returncode == 255
    # Other addresses are unaffected, the right key included.
    assert sftpd.client(source_ip="127.0.0.1").listdir("/") == []
    assert sftpd.sftp_batch("ls\n").returncode == 0
    # The ban lasts 30 minutes from the tenth failure.
    SftpAuthEvent.objects.filter(ip="127.0.0.5").update(
        occurred_at=django_now() - timedelta(minutes=29)
    )
    with pytest.raises((paramiko.SSHException, EOFError, OSError)):
        sftpd.client(source_ip="127.0.0.5")
    SftpAuthEvent.objects.filter(ip="127.0.0.5").update(
        occurred_at=django_now() - timedelta(minutes=31)
    )
    assert sftpd.client(source_ip="127.0.0.5").listdir("/") == []


def django_now() -> Any:
    from django.utils import timezone

    return timezone.now()


def test_failures_spread_over_more_than_ten_minutes_do_not_ban(sftpd: SftpHarness):
    old = django_now() - timedelta(minutes=12)
    SftpAuthEvent.objects.bulk_create(
        SftpAuthEvent(username="x", ip="127.0.0.6", succeeded=False) for _ in range(5)
    )
    SftpAuthEvent.objects.filter(ip="127.0.0.6").update(occurred_at=old)
    _fail_signins(sftpd, source_ip="127.0.0.6", count=4)
    assert sftpd.client(source_ip="127.0.0.6").listdir("/") == []


def test_thirty_failures_block_the_username_except_for_known_ips(sftpd: SftpHarness):
    # 127.0.0.1 signed in as the tenant 20 days ago; 127.0.0.8 never did.
    SftpAuthEvent.objects.create(
        username=sftpd.username, ip="127.0.0.1", succeeded=True
    )
    SftpAuthEvent.objects.filter(succeeded=True).update(
        occurred_at=django_now() - timedelta(days=20)
    )
    SftpAuthEvent.objects.bulk_create(
        SftpAuthEvent(username=sftpd.username, ip=f"10.0.0.{n}", succeeded=False)
        for n in range(30)
    )

    with pytest.raises(paramiko.AuthenticationException):
        sftpd.client(source_ip="127.0.0.8")
    assert sftpd.client(source_ip="127.0.0.1").listdir("/") == []
    assert sftpd.sftp_batch("ls\n").returncode == 0
    reasons = [
        e.changes["reason"] for e in _audit(sftpd.tenant, "edi.sftp.login_failed")
    ]
    assert reasons == ["username_blocked"]
    # The block ends 15 minutes after the thirtieth failure.
    SftpAuthEvent.objects.filter(succeeded=False).update(
        occurred_at=django_now() - timedelta(minutes=16)
    )
    assert sftpd.client(source_ip="127.0.0.8").listdir("/") == []


def test_sessions_per_tenant_are_limited(start_sftpd: SftpStarter):
    harness = start_sftpd(SftpLimits(sessions_per_tenant=2))
    first, second = harness.client(), harness.client()
    with pytest.raises(paramiko.SSHException):
        harness.client()
    result = harness.sftp_batch("ls\n")
    assert result.returncode != 0
    assert "Too many SFTP sessions" in result.stderr
    [refused, *_] = _audit(harness.tenant, "edi.sftp.session_refused")
    assert refused.changes["scope"] == "tenant"
    assert refused.changes["limit"] == 2
    # Closing a session frees its slot.
    first.get_channel().get_transport().close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            third = harness.client()
            break
        except paramiko.SSHException:
            time.sleep(0.1)
    assert third.listdir("/") == []
    assert second.listdir("/") == []


def test_sessions_per_ip_are_limited_across_servers(start_sftpd: SftpStarter):
    limits = SftpLimits(sessions_per_ip=1)
    one, two = start_sftpd(limits), start_sftpd(limits)
    one.client(source_ip="127.0.0.9")
    # A second process sees the slot that the first one holds.
    with pytest.raises(paramiko.SSHException):
        two.client(source_ip="127.0.0.9")
    assert two.client(source_ip="127.0.0.10").listdir("/") == []
    [refused] = _audit(one.tenant, "edi.sftp.session_refused")
    assert refused.changes["scope"] == "ip"


def test_idle_sessions_are_closed(start_sftpd: SftpStarter):
    harness = start_sftpd(SftpLimits(idle_timeout=timedelta(seconds=1)))
    sftp = harness.client()
    assert sftp.listdir("/") == []
    time.sleep(3)
    with pytest.raises((OSError, EOFError, paramiko.SSHException)):
        sftp.listdir("/")
    assert DEFAULT_LIMITS.idle_timeout == timedelta(minutes=15)
    assert (DEFAULT_LIMITS.sessions_per_tenant, DEFAULT_LIMITS.sessions_per_ip) == (
        4,
        20,
    )


def test_dropped_connection_mid_upload_imports_nothing(sftpd: SftpHarness):
    sftp = sftpd.client()
    handle = sftp.open("half.csv", "w")
    handle.write(CSV)
    handle.flush()
    assert any(n.startswith(".part-") for n in _spool_entries(sftpd))
    sftp.get_channel().get_transport().close()  # no CLOSE for the file
    deadline = time.monotonic() + 5
    while _spool_entries(sftpd) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _spool_entries(sftpd) == []
    assert _files(sftpd.tenant) == []


def test_weak_algorithms_are_refused(sftpd: SftpHarness):
    disabled = disabled_algorithms()
    assert "aes128-cbc" in disabled["ciphers"]
    assert "hmac-sha1" in disabled["macs"]
    for option in (
        "Ciphers=aes128-cbc,aes256-cbc",
        "MACs=hmac-sha1,hmac-sha1-etm@openssh.com",
        "KexAlgorithms=diffie-hellman-group14-sha1,diffie-hellman-group1-sha1",
        "HostKeyAlgorithms=ssh-rsa",
    ):
        result = sftpd.sftp_batch("ls\n", extra=("-o", option))
        assert result.returncode == 255, option
    # The defaults negotiate a strict kex (Terrapin, CVE-2023-48795).
    transport = sftpd.transport()
    assert transport.agreed_on_strict_kex
    assert "cbc" not in transport.remote_cipher
    assert "sha1" not in transport.remote_mac
    verbose = sftpd.sftp_batch("ls\n", extra=("-v",))
    assert verbose.returncode == 0
    assert re.search(r"cipher: (aes\d+-(ctr|gcm)|chacha20)", verbose.stderr)
    assert "cbc" not in verbose.stderr
    assert "MAC: hmac-sha1" not in verbose.stderr


# -- keys and host key --------------------------------------------------------


def _weak_dsa() -> Any:
    return dsa.generate_private_key(key_size=1024)  # noqa: S505 - must be refused


def _weak_rsa() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505


def _openssh_public(key: Any) -> str:
    return (
        key.public_key()
        .public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        .decode()
    )


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("", "sftp_key_invalid"),
        ("hello world", "sftp_key_invalid"),
        ("ssh-ed25519 !!!notbase64", "sftp_key_invalid"),
        ("ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ", "sftp_key_invalid"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA==", "sftp_key_invalid"),
        ("sk-ssh-ed25519@openssh.com AAAA", "sftp_key_algorithm_refused"),
        ("ssh-ed25519-cert-v01@openssh.com AAAA", "sftp_key_algorithm_refused"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n", "sftp_key_private"),
    ],
)
def test_key_parse_refuses_garbage(text: str, code: str):
    with pytest.raises(SftpKeyError) as caught:
        sftp_key_parse(public_key_text=text)
    assert caught.value.code == code


@pytest.mark.filterwarnings("ignore:SSH DSA key support is deprecated")
def test_key_parse_refuses_dsa_and_short_rsa():
    dsa_line = _openssh_public(_weak_dsa())
    with pytest.raises(SftpKeyError) as caught:
        sftp_key_parse(public_key_text=dsa_line)
    assert caught.value.code == "sftp_key_algorithm_refused"
    assert "DSA" in caught.value.message
    short = _openssh_public(_weak_rsa())
    with pytest.raises(SftpKeyError) as caught:
        sftp_key_parse(public_key_text=short)
    assert caught.value.code == "sftp_key_too_short"
    assert caught.value.details == {"bits": 1024, "min_bits": 2048}
    two = _openssh_public(ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(SftpKeyError):
        sftp_key_parse(public_key_text=f"{two}\n{two}")


def test_key_parse_matches_ssh_keygen(ssh_keys: Any):
    for name in ("ed25519", "ecdsa", "rsa"):
        key = ssh_keys[name]
        parsed = sftp_key_parse(public_key_text=key.public_line)
        listing = subprocess.run(
            ["ssh-keygen", "-l", "-E", "sha256", "-f", str(key.path) + ".pub"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert parsed.fingerprint == listing[1]
        assert parsed.bits == int(listing[0])
        assert parsed.comment == f"{name}@test"
        assert parsed.public_key == " ".join(key.public_line.split()[:2])
    # PuTTYgen / WinSCP export (RFC 4716).
    rfc4716 = subprocess.run(
        ["ssh-keygen", "-e", "-f", str(ssh_keys["ed25519"].path) + ".pub"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert (
        sftp_key_parse(public_key_text=rfc4716).fingerprint
        == sftp_key_parse(public_key_text=ssh_keys["ed25519"].public_line).fingerprint
    )


def test_key_register_and_remove(tenant: Tenant, ssh_keys: Any):
    with tenant_context(tenant):
        SftpKey.objects.all().delete()
        SftpAccount.objects.filter(tenant_id=tenant.pk).delete()
        first = sftp_key_register(
            public_key_text=ssh_keys["ed25519"].public_line, name="HR", actor=None
        )
        second = sftp_key_register(
            public_key_text=ssh_keys["rsa"].public_line, name="", actor=None
        )
        assert second.name == "rsa@test"  # the comment
        assert (second.algorithm, second.bits) == ("ssh-rsa", 2048)
        assert SftpAccount.objects.get(tenant_id=tenant.pk).username == tenant.slug
        with pytest.raises(ApplicationError) as caught:
            sftp_key_register(
                public_key_text=ssh_keys["ed25519"].public_line, name="x", actor=None
            )
        assert caught.value.code == "sftp_key_duplicate"
        assert caught.value.status == 409
        [registered, *_] = AuditEvent.objects.filter(
            action="edi.sftp_key.registered"
        ).order_by("id")
        assert registered.changes["fingerprint"] == first.fingerprint

        sftp_key_remove(sftp_key=first, actor=None)
        assert SftpAccount.objects.filter(tenant_id=tenant.pk).exists()
        sftp_key_remove(sftp_key=second, actor=None)
        assert not SftpAccount.objects.filter(tenant_id=tenant.pk).exists()
        assert AuditEvent.objects.filter(action="edi.sftp_key.removed").count() == 2


@pytest.mark.filterwarnings("ignore:SSH DSA key support is deprecated")
def test_edi_sftp_key_command(tenant: Tenant, ssh_keys: Any, tmp_path: Path, capsys):
    with tenant_context(tenant):
        SftpKey.objects.all().delete()
    call_command(
        "edi_sftp_key",
        tenant.slug,
        "--public-key",
        str(ssh_keys["ecdsa"].path) + ".pub",
    )
    out = json.loads(capsys.readouterr().out)
    assert out["slug"] == out["username"] == tenant.slug
    assert out["name"] == "ecdsa@test"
    assert out["algorithm"] == "ecdsa-sha2-nistp256"
    assert out["fingerprint"].startswith("SHA256:")
    dsa_file = tmp_path / "id_dsa.pub"
    dsa_file.write_text(_openssh_public(_weak_dsa()))
    with pytest.raises(CommandError, match="error: sftp_key_algorithm_refused: DSA"):
        call_command("edi_sftp_key", tenant.slug, "--public-key", str(dsa_file))
    with pytest.raises(CommandError, match="error: public_key_unreadable"):
        call_command("edi_sftp_key", tenant.slug, "--public-key", str(tmp_path / "no"))
    with pytest.raises(CommandError, match="tenant_unknown"):
        call_command("edi_sftp_key", "nosuch", "--public-key", str(dsa_file))


def test_host_key_is_created_once_and_never_replaced(tmp_path: Path):
    path = tmp_path / "sftp" / "ssh_host_ed25519_key"
    first = sftp_host_key_ensure(path=path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert first.algorithm == "ssh-ed25519"
    assert first.sha256.startswith("SHA256:")
    assert first.md5.startswith("MD5:")
    again = sftp_host_key_ensure(path=path)
    assert again.key.asbytes() == first.key.asbytes()
    listing = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(path) + ".pub"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert listing[1] == first.sha256
    path.chmod(0o644)
    with pytest.raises(ApplicationError) as caught:
        sftp_host_key_ensure(path=path)
    assert caught.value.code == "sftp_host_key_insecure"
    path.chmod(0o600)
    path.write_bytes(b"garbage")
    with pytest.raises(ApplicationError) as caught:
        sftp_host_key_ensure(path=path)
    assert caught.value.code == "sftp_host_key_invalid"
    assert path.read_bytes() == b"garbage"  # never regenerated


# -- the command --------------------------------------------------------------


def _start_command(
    env: dict[str, str], host_key: Path
) -> tuple[subprocess.Popen[str], int, str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "sftpd",
            "--port",
            "0",
            "--host-key",
            str(host_key),
            "--grace",
            "2",
        ],
        cwd=django_settings.BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines = [proc.stdout.readline() for _ in range(4)]
    match = re.search(r"listening on 127\.0\.0\.1:(\d+)", lines[0])
    assert match, lines
    return proc, int(match.group(1)), lines[2].strip()


def test_sftpd_command_serves_prints_fingerprints_and_stops_on_sigterm(
    sftpd: SftpHarness, tmp_path: Path
):
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "PORTAL_DATA_DIR": str(sftpd.data_dir),
        "PORTAL_DEBUG": "1",
    }
    host_key = tmp_path / "cmd" / "ssh_host_ed25519_key"
    proc, port, fingerprint = _start_command(env, host_key)
    try:
        assert fingerprint.startswith("SHA256:")
        assert host_key.stat().st_mode & 0o777 == 0o600
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        transport = paramiko.Transport(sock)
        transport.start_client(timeout=10)
        assert paramiko_fingerprint(transport.get_remote_server_key()) == fingerprint
        transport.close()
        known = tmp_path / "known_cmd"
        public = Path(str(host_key) + ".pub").read_text().split()[:2]
        known.write_text(f"[127.0.0.1]:{port} {' '.join(public)}\n")
        sftpd.write("cmd.csv", CSV)
        result = subprocess.run(
            [
                "sftp",
                "-b",
                "-",
                "-P",
                str(port),
                "-F",
                "/dev/null",
                "-i",
                str(sftpd.keys["ed25519"].path),
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                f"UserKnownHostsFile={known}",
                f"{sftpd.username}@127.0.0.1",
            ],
            input="put cmd.csv\n",
            capture_output=True,
            text=True,
            cwd=sftpd.workdir,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert [f.original_name for f in _files(sftpd.tenant)] == ["cmd.csv"]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "stopped" in out
    # A restart keeps the same key.
    proc, _, again = _start_command(env, host_key)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=20)
    assert again == fingerprint
    assert proc.returncode == 0


def _database_url() -> str:
    db = connection.settings_dict
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


def test_sftpd_command_refuses_a_taken_port(tmp_path: Path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        with pytest.raises(CommandError, match="error: sftp_listen_failed"):
            call_command(
                "sftpd",
                "--port",
                str(busy.getsockname()[1]),
                "--host-key",
                str(tmp_path / "k"),
            )
    finally:
        busy.close()
