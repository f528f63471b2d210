"""The EDI SFTP drop box server (EDI-C3): paramiko classes over services.

Threads, per TCP connection:

- `_Connection` (one per connection, started by `SftpServer`) owns the
  paramiko `Transport`, enforces the sign-in and idle timeouts, and at
  the end closes the transport and releases the session slots.
- paramiko's transport thread runs the SSH protocol and calls `_SshServer`
  (sign-in, channel and subsystem requests).
- paramiko's subsystem thread runs `_DropBoxSftp`, which calls `_DropBox`
  for every SFTP request. It enters the tenant's schema when the session
  starts and leaves it when the session ends.

Every rule (who may sign in, limits, paths, what an upload becomes) is in
`edi.services.sftp`. Each thread closes its own database connection when
its piece of work is done, so an idle session holds none.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import paramiko
from django.db import connections
from django_tenants.utils import schema_context, tenant_context
from paramiko.common import cMSG_DISCONNECT
from paramiko.sftp import CMD_CLOSE, CMD_EXTENDED

from edi.services.receive import EmptyFile
from edi.services.sftp import (
    DEFAULT_LIMITS,
    PathOutsideRoot,
    SessionLimitReached,
    SessionSlots,
    SftpLimits,
    SftpLogin,
    sftp_ip_banned_until,
    sftp_login_check_key,
    sftp_login_failed,
    sftp_login_succeeded,
    sftp_path_denied,
    sftp_path_resolve,
    sftp_session_open,
    sftp_upload_name_allowed,
    sftp_upload_receive,
    sftp_upload_refused,
    sftp_virtual_path,
)
from edi.services.spool import FileTooLarge, SpoolWriter, spool_dir
from portal import context
from portal.errors import ApplicationError
from tenants.models import Tenant

log = logging.getLogger("edi.sftpd")

T = TypeVar("T")

SSH_VERSION = "SSH-2.0-PortalSFTP"
DISCONNECT_TOO_MANY_CONNECTIONS = 12
DISCONNECT_BY_APPLICATION = 11
MAX_CONNECTIONS = 512


def disabled_algorithms() -> dict[str, list[str]]:
    """CBC ciphers, SHA-1 and MD5 MACs, SHA-1 key exchange and SHA-1 key
    signatures, whatever paramiko version offers them. Strict kex (the
    Terrapin fix) is paramiko's default since 3.4."""
    transport = paramiko.Transport
    return {
        "ciphers": [c for c in transport._preferred_ciphers if "cbc" in c],
        "macs": [m for m in transport._preferred_macs if "sha1" in m or "md5" in m],
        "kex": [k for k in transport._preferred_kex if k.endswith("sha1")],
        "keys": ["ssh-rsa", "ssh-dss"],
        "pubkeys": ["ssh-rsa", "ssh-dss"],
    }


def _close_db() -> None:
    """Close this thread's database connections (a unit of work ended)."""
    connections.close_all()


def _guarded(what: str, default: T, func: Callable[[], T]) -> T:
    """Run `func`; log and return `default` if it fails; close the DB."""
    try:
        return func()
    except Exception:
        log.exception("sftp: %s failed", what)
        return default
    finally:
        _close_db()


def _client_ip(address: Any) -> str:
    ip = ipaddress.ip_address(str(address[0]).split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class SftpServer:
    """Listen, accept, and run one `_Connection` thread per client."""

    def __init__(
        self,
        *,
        host_key: paramiko.PKey,
        bind: str = "127.0.0.1",
        port: int = 2222,
        limits: SftpLimits = DEFAULT_LIMITS,
    ) -> None:
        self.host_key = host_key
        self.bind = bind
        self.port = port
        self.limits = limits
        self.stopping = threading.Event()
        self.stop_deadline = float("inf")
        self._listener: socket.socket | None = None
        self._connections: set[_Connection] = set()
        self._lock = threading.Lock()

    def listen(self) -> tuple[str, int]:
        """Bind and listen; returns the address (port 0 picks a free one)."""
        family, kind, proto, _, address = socket.getaddrinfo(
            self.bind, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        listener = socket.socket(family, kind, proto)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(address)
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        listener.settimeout(0.5)
        self._listener = listener
        host, port = listener.getsockname()[:2]
        self.port = port
        return host, port

    def serve_forever(self) -> None:
        """Accept until `request_stop()`; then stop listening."""
        if self._listener is None:
            self.listen()
        listener = self._listener
        assert listener is not None  # noqa: S101 - set by listen()
        try:
            while not self.stopping.is_set():
                try:
                    sock, address = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    if self.stopping.is_set():
                        break
                    raise
                self._start(sock, address)
        finally:
            listener.close()

    def _start(self, sock: socket.socket, address: Any) -> None:
        with self._lock:
            if len(self._connections) >= MAX_CONNECTIONS:
                sock.close()
                log.warning("sftp: too many connections; refused %s", address)
                return
            conn = _Connection(self, sock, _client_ip(address))
            self._connections.add(conn)
        conn.start()

    def _forget(self, conn: _Connection) -> None:
        with self._lock:
            self._connections.discard(conn)

    def request_stop(self) -> None:
        """Stop accepting (safe from a signal handler)."""
        self.stopping.set()

    def shutdown(self, *, grace: float = 30.0) -> None:
        """Stop: idle sessions close now, uploads get `grace` seconds to end
        (then they are cut off and their parts deleted)."""
        self.stop_deadline = time.monotonic() + grace
        self.request_stop()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            active = list(self._connections)
        for conn in active:
            conn.wake()
        for conn in active:
            conn.join(timeout=max(0.0, self.stop_deadline - time.monotonic()) + 5)


class _Connection(threading.Thread):
    """One client connection, from TCP accept to close."""

    def __init__(self, server: SftpServer, sock: socket.socket, ip: str) -> None:
        super().__init__(name=f"sftp-{ip}", daemon=True)
        self.server = server
        self.limits = server.limits
        self.sock = sock
        self.ip = ip
        self.transport: paramiko.Transport | None = None
        self.started_at = time.monotonic()
        self.last_activity = self.started_at
        self.failures = 0
        self.login: SftpLogin | None = None
        self.slots: SessionSlots | None = None
        self.session_open = False
        self.subsystem_started = False
        self.open_uploads = 0
        self.close_reason = ""
        self._wake = threading.Event()

    def wake(self) -> None:
        self._wake.set()

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def session_ended(self) -> None:
        """The SFTP session is over: free its slots now, not at close."""
        if self.slots is not None:
            self.slots.release()
        self.request_close("session ended")

    def request_close(self, reason: str) -> None:
        self.close_reason = self.close_reason or reason
        self._wake.set()

    def disconnect(self, code: int, message: str) -> None:
        """Tell the client why (OpenSSH prints it), then close."""
        transport = self.transport
        if transport is not None and transport.is_active():
            msg = paramiko.Message()
            msg.add_byte(cMSG_DISCONNECT)
            msg.add_int(code)
            msg.add_string(message)
            msg.add_string("en")
            with contextlib.suppress(Exception):
                transport._send_message(msg)
        self.request_close(message)

    def run(self) -> None:
        try:
            self._serve()
        except Exception:
            log.exception("sftp: connection from %s failed", self.ip)
        finally:
            if self.transport is not None:
                self.transport.close()
            else:
                self.sock.close()
            if self.slots is not None:
                self.slots.release()
            _close_db()
            self.server._forget(self)

    def _serve(self) -> None:
        banned = _guarded(
            "ban check",
            None,
            lambda: sftp_ip_banned_until(ip=self.ip, limits=self.limits),
        )
        if banned is not None:
            log.info("sftp: %s is banned until %s", self.ip, banned.isoformat())
            return
        # SFTP is request and reply: under Nagle each small status reply
        # waits for the client's ACK of the last one, and uploads often
        # stalled near 50 MB/s instead of 120 (docs/benchmarks.md).
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = paramiko.Transport(
            self.sock, disabled_algorithms=disabled_algorithms()
        )
        self.transport = transport
        transport.local_version = SSH_VERSION
        transport.add_server_key(self.server.host_key)
        transport.set_subsystem_handler("sftp", _DropBoxSftp, _DropBox)
        try:
            transport.start_server(server=_SshServer(self))
        except (paramiko.SSHException, EOFError, OSError):
            return
        auth_timeout = self.limits.auth_timeout.total_seconds()
        idle_timeout = self.limits.idle_timeout.total_seconds()
        while transport.is_active():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            now = time.monotonic()
            if self.close_reason:
                break
            if self.login is None and now - self.started_at > auth_timeout:
                self.disconnect(DISCONNECT_BY_APPLICATION, "Sign-in timed out.")
                break
            if self.login is not None and now - self.last_activity > idle_timeout:
                self.disconnect(DISCONNECT_BY_APPLICATION, "Idle timeout.")
                break
            if self.server.stopping.is_set() and (
                self.open_uploads == 0 or now >= self.server.stop_deadline
            ):
                self.disconnect(DISCONNECT_BY_APPLICATION, "The server is stopping.")
                break
        if self.close_reason:
            log.info("sftp: closing %s: %s", self.ip, self.close_reason)


class _SshServer(paramiko.ServerInterface):
    """Sign-in and channel decisions for one connection."""

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_none(self, username: str) -> int:
        return paramiko.AUTH_FAILED

    def check_auth_password(self, username: str, password: str) -> int:
        return self._refuse(username, "password")

    def check_auth_interactive(self, username: str, submethods: str) -> int:
        return self._refuse(username, "keyboard-interactive")

    def _spent(self) -> bool:
        return self.conn.failures >= self.conn.limits.failures_per_connection

    def _count_failure(self) -> None:
        self.conn.failures += 1
        if self._spent():
            self.conn.request_close("too many failed sign-ins")

    def _refuse(self, username: str, method: str) -> int:
        if self._spent():
            return paramiko.AUTH_FAILED
        _guarded(
            "audit",
            None,
            lambda: sftp_login_failed(
                username=username,
                ip=self.conn.ip,
                reason="method_refused",
                method=method,
            ),
        )
        self._count_failure()
        return paramiko.AUTH_FAILED

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        conn = self.conn
        if self._spent() or conn.login is not None:
            return paramiko.AUTH_FAILED
        login = _guarded(
            "sign-in check",
            None,
            lambda: sftp_login_check_key(
                username=username,
                ip=conn.ip,
                key_blob=key.asbytes(),
                key_type=key.get_name(),
                key_bits=key.get_bits(),
                limits=conn.limits,
            ),
        )
        if login is None:
            self._count_failure()
            return paramiko.AUTH_FAILED
        # paramiko checks the client's signature after this returns, on
        # this key object: wrap that check to learn the real outcome.
        verify = key.verify_ssh_sig

        def verify_and_record(data: bytes, msg: paramiko.Message) -> bool:
            if not verify(data, msg):
                _guarded(
                    "audit",
                    None,
                    lambda: sftp_login_failed(
                        username=username,
                        ip=conn.ip,
                        reason="bad_signature",
                        fingerprint=login.fingerprint,
                    ),
                )
                self._count_failure()
                return False

            def record() -> bool:
                sftp_login_succeeded(login=login, ip=conn.ip)
                return True

            recorded = _guarded("sign-in record", False, record)
            if recorded:
                conn.login = login
                conn.touch()
            return recorded

        setattr(key, "verify_ssh_sig", verify_and_record)  # noqa: B010
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session" and self.conn.login is not None:
            if not self.conn.session_open:
                self.conn.session_open = True
                return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(
        self, channel: paramiko.Channel, command: bytes
    ) -> bool:
        log.info("sftp: %s asked to run a command; refused", self.conn.ip)
        return False

    def check_channel_shell_request(self, channel: paramiko.Channel) -> bool:
        return False

    def check_channel_subsystem_request(
        self, channel: paramiko.Channel, name: str
    ) -> bool:
        conn = self.conn
        login = conn.login
        if name != "sftp" or login is None or conn.subsystem_started:
            return False
        try:
            conn.slots = sftp_session_open(login=login, ip=conn.ip, limits=conn.limits)
        except SessionLimitReached as exc:
            conn.disconnect(DISCONNECT_TOO_MANY_CONNECTIONS, exc.message)
            return False
        except Exception:
            log.exception("sftp: session start failed")
            return False
        finally:
            _close_db()
        conn.subsystem_started = True
        conn.touch()
        started: bool = super().check_channel_subsystem_request(channel, name)
        return started


def _dir_attributes() -> paramiko.SFTPAttributes:
    attrs = paramiko.SFTPAttributes()
    attrs.st_mode = stat.S_IFDIR | 0o700
    attrs.st_size = 0
    attrs.st_atime = attrs.st_mtime = int(time.time())
    return attrs


def _file_attributes(name: str, size: int) -> paramiko.SFTPAttributes:
    attrs = paramiko.SFTPAttributes()
    attrs.filename = name
    attrs.st_mode = stat.S_IFREG | 0o600
    attrs.st_size = size
    attrs.st_atime = attrs.st_mtime = int(time.time())
    return attrs


class _DropBox(paramiko.SFTPServerInterface):
    """The tenant's write-only drop box, as the SFTP client sees it."""

    def __init__(self, server: _SshServer, *args: Any, **kwargs: Any) -> None:
        super().__init__(server, *args, **kwargs)
        self.conn = server.conn
        login = self.conn.login
        assert login is not None  # noqa: S101 - subsystems start after sign-in
        self.login: SftpLogin = login
        self.root = ""
        self.uploads: dict[str, paramiko.SFTPAttributes] = {}
        self._stack = contextlib.ExitStack()

    def session_started(self) -> None:
        with schema_context("public"):
            tenant = Tenant.objects.get(pk=self.login.tenant_id)
        self._stack.enter_context(tenant_context(tenant))
        self._stack.enter_context(
            context.actor_context(
                actor_type="sftp_key",
                actor_id=str(self.login.key_id),
                actor_label=self.login.actor_label,
                ip=self.conn.ip,
                source="sftp",
            )
        )
        self.root = os.path.realpath(spool_dir(self.login.schema_name))
        _close_db()

    def session_ended(self) -> None:
        self._stack.close()
        _close_db()
        self.conn.session_ended()

    def _resolve(self, path: str, operation: str) -> str | int:
        self.conn.touch()
        if not self.root:
            return paramiko.SFTP_FAILURE
        try:
            return sftp_path_resolve(root=self.root, path=path)
        except PathOutsideRoot:
            _guarded(
                "audit",
                None,
                lambda: sftp_path_denied(
                    operation=operation, path=path, fingerprint=self.login.fingerprint
                ),
            )
            return paramiko.SFTP_PERMISSION_DENIED

    def _in_root(self, resolved: str) -> str | None:
        """The file name if `resolved` is directly in the root."""
        if resolved != self.root and os.path.dirname(resolved) == self.root:
            return os.path.basename(resolved)
        return None

    def canonicalize(self, path: str) -> str:
        self.conn.touch()
        return sftp_virtual_path(path)

    def open(self, path: str, flags: int, attr: paramiko.SFTPAttributes) -> Any:
        resolved = self._resolve(path, "open")
        if isinstance(resolved, int):
            return resolved
        name = self._in_root(resolved)
        writing = (flags & os.O_ACCMODE) == os.O_WRONLY
        if (
            name is None
            or not sftp_upload_name_allowed(name)
            or not writing
            or flags & os.O_APPEND
            or not flags & os.O_CREAT
        ):
            return paramiko.SFTP_PERMISSION_DENIED
        if self.conn.server.stopping.is_set():
            return paramiko.SFTP_FAILURE
        try:
            writer = SpoolWriter(self.login.schema_name)
        except OSError:
            log.exception("sftp: cannot create a spool file")
            return paramiko.SFTP_FAILURE
        return _UploadHandle(self, name, writer, flags)

    def list_folder(self, path: str) -> Any:
        resolved = self._resolve(path, "list")
        if isinstance(resolved, int):
            return resolved
        if resolved != self.root:
            return paramiko.SFTP_NO_SUCH_FILE
        return list(self.uploads.values())

    def stat(self, path: str) -> Any:
        resolved = self._resolve(path, "stat")
        if isinstance(resolved, int):
            return resolved
        if resolved == self.root:
            return _dir_attributes()
        name = self._in_root(resolved)
        if name is not None and name in self.uploads:
            return self.uploads[name]
        return paramiko.SFTP_NO_SUCH_FILE

    lstat = stat

    def chattr(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        resolved = self._resolve(path, "setstat")
        if isinstance(resolved, int):
            return resolved
        return paramiko.SFTP_OK  # accepted and ignored (put -p)

    def _denied(self, operation: str, *paths: str) -> int:
        for path in paths:
            resolved = self._resolve(path, operation)
            if isinstance(resolved, int):
                return resolved
        return paramiko.SFTP_PERMISSION_DENIED

    def remove(self, path: str) -> int:
        return self._denied("remove", path)

    def rename(self, oldpath: str, newpath: str) -> int:
        return self._denied("rename", oldpath, newpath)

    def mkdir(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        return self._denied("mkdir", path)

    def rmdir(self, path: str) -> int:
        return self._denied("rmdir", path)

    def posix_rename(self, oldpath: str, newpath: str) -> int:
        return paramiko.SFTP_OP_UNSUPPORTED

    def symlink(self, target_path: str, path: str) -> int:
        return paramiko.SFTP_OP_UNSUPPORTED

    def readlink(self, path: str) -> Any:
        return paramiko.SFTP_OP_UNSUPPORTED


class _UploadHandle(paramiko.SFTPHandle):
    """One upload: writes go to the spool part; CLOSE receives it."""

    def __init__(
        self, box: _DropBox, name: str, writer: SpoolWriter, flags: int
    ) -> None:
        super().__init__(flags)
        self.box = box
        self.name = name
        self.writer = writer
        self.failed = False
        self.settled = False
        box.conn.open_uploads += 1

    def _settle(self) -> None:
        if not self.settled:
            self.settled = True
            self.box.conn.open_uploads -= 1

    def write(self, offset: int, data: bytes) -> int:
        self.box.conn.touch()
        if self.failed or self.settled:
            return paramiko.SFTP_FAILURE
        try:
            self.writer.write_at(offset, data)
        except FileTooLarge:
            self._fail("file_too_large", offset + len(data))
            return paramiko.SFTP_FAILURE
        except OSError:
            log.exception("sftp: spool write failed")
            self._fail("write_error", self.writer.size)
            return paramiko.SFTP_FAILURE
        return paramiko.SFTP_OK

    def _fail(self, reason: str, size: int) -> None:
        self.failed = True
        self.writer.abort()
        _guarded(
            "audit",
            None,
            lambda: sftp_upload_refused(
                name=self.name,
                reason=reason,
                size=size,
                fingerprint=self.box.login.fingerprint,
            ),
        )

    def read(self, offset: int, length: int) -> int:
        return paramiko.SFTP_PERMISSION_DENIED

    def stat(self) -> paramiko.SFTPAttributes:
        return _file_attributes(self.name, self.writer.size)

    def chattr(self, attr: paramiko.SFTPAttributes) -> int:
        return paramiko.SFTP_OK  # accepted and ignored

    def close(self) -> None:
        # paramiko closes leftover handles when a session drops: an upload
        # that was never closed by the client is not imported.
        self.abort()

    def abort(self) -> None:
        self.writer.abort()
        self._settle()

    def commit(self) -> tuple[int, str]:
        """The client's CLOSE: receive the file; OK only once committed."""
        self.box.conn.touch()
        if self.failed or self.settled:
            self.abort()
            return paramiko.SFTP_FAILURE, "Upload refused; nothing was imported."
        try:
            edi_file = sftp_upload_receive(
                writer=self.writer,
                original_name=self.name,
                sftp_key_id=self.box.login.key_id,
            )
        except EmptyFile:
            return paramiko.SFTP_FAILURE, "empty_file: The file is empty; not imported."
        except ApplicationError as exc:
            return paramiko.SFTP_FAILURE, f"{exc.code}: {exc.message}"
        except Exception:
            log.exception("sftp: receiving %s failed", self.name)
            return paramiko.SFTP_FAILURE, "The file could not be stored; send it again."
        finally:
            self.abort()  # no-op after a finished upload
            _close_db()
        self.box.uploads[self.name] = _file_attributes(self.name, edi_file.size)
        return paramiko.SFTP_OK, f"Received as EDI file {edi_file.pk}."


class _DropBoxSftp(paramiko.SFTPServer):
    """paramiko's SFTP server with the two changes the drop box needs.

    CLOSE answers with the upload's real outcome (paramiko always says OK),
    and a session that ends with uploads still open deletes their parts
    instead of importing them. `check-file` would read a file: refused.
    """

    def _process(self, t: int, request_number: int, msg: paramiko.Message) -> None:
        if t == CMD_CLOSE:
            handle = msg.get_binary()
            if handle in self.folder_table:
                del self.folder_table[handle]
                self._send_status(request_number, paramiko.SFTP_OK)
            elif handle in self.file_table:
                upload = self.file_table.pop(handle)
                code, description = upload.commit()
                self._send_status(request_number, code, description)
            else:
                self._send_status(
                    request_number, paramiko.SFTP_BAD_MESSAGE, "Invalid handle"
                )
            return
        if t == CMD_EXTENDED:
            position = msg.packet.tell()
            if msg.get_text() == "check-file":
                self._send_status(request_number, paramiko.SFTP_PERMISSION_DENIED)
                return
            msg.packet.seek(position)
        super()._process(t, request_number, msg)

    def finish_subsystem(self) -> None:
        uploads: dict[bytes, _UploadHandle] = self.file_table
        for handle in list(uploads.values()):
            handle.abort()
        uploads.clear()
        super().finish_subsystem()
