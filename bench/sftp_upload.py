"""EDI §5 benchmark: a 200 MB OpenSSH `sftp -b` upload to the real sftpd.

    .venv/bin/python bench/sftp_upload.py [--mb 200] [--repeats 3] [--reuse]
        [--profile]        # py-spy: PY_SPY=/path/to/py-spy if not on PATH

On its own database (`bench_sftp_upload`) and tenant `bench-sftp`, with
its own PORTAL_DATA_DIR (`var/bench/sftp_upload/`: master key, host key,
spool, media and a filesystem broker nobody consumes, so no worker ever
imports the files), the script registers an ssh-keygen Ed25519 key and
starts `python manage.py sftpd` as a subprocess on a free loopback port.
It generates a CSV of --mb megabytes (10^6 bytes; about 120 bytes per row,
the shape of bench/edi_import.py) and uploads it --repeats times with
`sftp -v -b` and the client's default settings (cipher, MAC, buffer and
request count), to a new name each time.

Each upload is timed three ways, by a thread that polls the server's spool
for the upload's `.part-` file every millisecond:

* **transfer**: from the part file's creation (the SFTP OPEN) until it has
  all its bytes (the last WRITE): the write path alone;
* **with close**: from the OPEN until `sftp` exits 0. The CLOSE fsyncs the
  part, encrypts it into the tenant's media with the keyring, commits the
  `EdiFile` and enqueues the import, and only then answers OK: this is what
  an HR system waits for, and what the target is checked on;
* **session**: from starting `sftp` until it exits (adds the SSH
  handshake and the sign-in).

It also prints the CPU seconds of the server process and of the client
(`sftp` and its `ssh`) per upload, and the negotiated cipher and MAC from
`sftp -v`'s `kex:` lines.

Baselines, measured in the same run on the same file:

* **OpenSSH**: the same `sftp -b` upload to OpenSSH's own `sshd` with its
  `sftp-server` (C, no fsync on close), started with a private config on
  another loopback port, once with the client's defaults and once forced
  to the cipher and MAC that the portal's server negotiated. Same client,
  same loopback, same disk: the gap between the two transfer columns is
  what a Python server costs (paramiko's SSH framing and SFTP parsing run
  in Python, one call into C per packet for the cipher and the MAC), not
  the network or the protocol. Skipped (with the reason) without
  /usr/sbin/sshd, or as root without its privilege-separation directory
  /run/sshd.
* **close steps**: writing the file into the spool directory, its fsync,
  and the keyring encryption into media, timed in this process, so the
  close can be read as fsync + encryption + commit.

Target (edi.md §5): at least 40 MB/s with the close. Exit status 0 only
if the median upload meets it.
"""

from __future__ import annotations

import getpass
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (  # noqa: E402 - the bench folder is not a package
    ROOT,
    base_parser,
    bench_tenant_ensure,
    django_start,
    in_bench_tenant,
    log,
    machine_report,
    median,
    table,
)

DATABASE = "bench_sftp_upload"
SLUG = "bench-sftp"
DATA_DIR = ROOT / "var" / "bench" / "sftp_upload"
TARGET_MBPS = 40.0
SSHD = Path("/usr/sbin/sshd")
SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")
POLL = 0.001  # seconds


@dataclass
class Upload:
    ok: bool
    size: int
    launched: float
    opened: float | None
    written: float | None
    ended: float
    cipher: str
    stderr: str
    server_cpu: float = float("nan")  # seconds of the server process
    client_cpu: float = float("nan")  # seconds of sftp and its ssh

    def mbps(self, start: float | None, end: float | None) -> float:
        if start is None or end is None or end <= start:
            return float("nan")
        return self.size / (end - start) / 1e6

    @property
    def transfer(self) -> float:
        return self.mbps(self.opened, self.written)

    @property
    def with_close(self) -> float:
        return self.mbps(self.opened, self.ended)

    @property
    def session(self) -> float:
        return self.mbps(self.launched, self.ended)

    @property
    def close_s(self) -> float:
        if self.written is None:
            return float("nan")
        return self.ended - self.written


# ---------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on {port}")


def generate(path: Path, megabytes: int) -> int:
    """A CSV of `megabytes` * 10^6 bytes (rounded to whole rows)."""
    target = megabytes * 1_000_000
    header = (
        "employee_id,email,first_name,last_name,job_title,department,location,"
        "manager_employee_id,seat,groups\n"
    )
    size = 0
    with open(path, "w") as out:
        out.write(header)
        size += len(header)
        i = 0
        while size < target:
            rows = []
            for j in range(i, i + 10_000):
                mgr = f"E{j // 10}" if j >= 10 else ""
                rows.append(
                    f"E{j},person{j}@corp.test,First{j},Last{j},Engineer,"
                    f"Dept{j % 50},City{j % 20},{mgr},active,G{j % 7};G{j % 11}\n"
                )
            chunk = "".join(rows)
            if size + len(chunk) > target:
                # Whole rows only, stopping at the size asked for.
                chunk = chunk[: chunk.rfind("\n", 0, target - size) + 1]
                if not chunk:
                    break
            out.write(chunk)
            size += len(chunk)
            i += 10_000
    return path.stat().st_size


def keygen(path: Path) -> str:
    if not path.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", str(path)],
            check=True,
            capture_output=True,
        )
    return path.with_suffix(".pub").read_text().strip()


def sftp_command(
    *, port: int, user: str, key: Path, known_hosts: Path, extra: tuple[str, ...]
) -> list[str]:
    return [
        "sftp",
        "-v",
        "-b",
        "-",
        "-P",
        str(port),
        "-F",
        "/dev/null",
        "-i",
        str(key),
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        *extra,
        f"{user}@127.0.0.1",
    ]


_KEX = re.compile(r"kex: client->server cipher: (\S+) MAC: (\S+)")


def negotiated(stderr: str) -> str:
    found = _KEX.search(stderr)
    if found is None:
        return "?"
    cipher, mac = found.groups()
    return cipher if mac == "<implicit>" else f"{cipher} + {mac}"


def upload(
    command: list[str],
    batch: str,
    *,
    size: int,
    find_part: Callable[[], Path | None],
    server_pid: int | None = None,
) -> Upload:
    """Run `sftp -b`; a thread watches the file the server writes."""
    marks: dict[str, float] = {}
    done = threading.Event()

    def watch() -> None:
        path: Path | None = None
        while not done.is_set():
            if path is None:
                path = find_part()
                if path is not None:
                    marks["opened"] = time.perf_counter()
            if path is not None:
                try:
                    if path.stat().st_size >= size:
                        marks["written"] = time.perf_counter()
                        return
                except FileNotFoundError:
                    return  # closed and renamed before the last poll
            time.sleep(POLL)

    watcher = threading.Thread(target=watch, daemon=True)
    cpu_before = _cpu(server_pid)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    launched = time.perf_counter()
    watcher.start()
    process = subprocess.run(
        command, input=batch, capture_output=True, text=True, check=False
    )
    ended = time.perf_counter()
    cpu_used = _cpu(server_pid) - cpu_before
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (after.ru_utime + after.ru_stime) - (
        children.ru_utime + children.ru_stime
    )
    done.set()
    watcher.join()
    return Upload(
        server_cpu=cpu_used,
        client_cpu=client_cpu,
        ok=process.returncode == 0,
        size=size,
        launched=launched,
        opened=marks.get("opened"),
        written=marks.get("written"),
        ended=ended,
        cipher=negotiated(process.stderr),
        stderr=process.stderr,
    )


def _cpu(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def newest_part(directory: Path, before: set[str]) -> Path | None:
    try:
        names = [
            e.name
            for e in os.scandir(directory)
            if e.name.startswith(".part-") and e.name not in before
        ]
    except FileNotFoundError:
        return None
    return directory / names[0] if names else None


def profile_upload(pid: int, command: list[str], batch: str, workdir: Path) -> str:
    """Upload once with py-spy sampling the server; a summary of its time.

    Only the connection's threads are counted (the accept loop and idle
    threads sleep); "self" is where a sample's innermost Python frame was.
    """
    output = workdir / "sftpd.pyspy.txt"
    spy = subprocess.Popen(
        [
            os.environ.get("PY_SPY", "py-spy"),
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            "200",
            "--nonblocking",
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # attached
    log("profiled upload")
    subprocess.run(command, input=batch, capture_output=True, text=True, check=True)
    spy.send_signal(2)  # SIGINT: stop and write
    spy.wait(timeout=60)
    return profile_summary(output)


def _frame(frame: str) -> str:
    """`read_all (paramiko/packet.py:322)` -> `read_all (paramiko/packet.py)`."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({'/'.join(Path(path).parts[-2:])})"


def profile_summary(output: Path) -> str:
    """Self and inclusive shares of the busy samples of the server's
    connection threads (idle threads are not sampled without --idle)."""
    self_time: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in output.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = [_frame(f) for f in stack.split(";")[1:]]  # [0] is the thread
        if not frames or not any("paramiko" in f or "sftp" in f for f in frames):
            continue
        count = int(count_text)
        total += count
        self_time[frames[-1]] = self_time.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    if not total:
        return "py-spy recorded nothing (is it installed? root or ptrace needed)"
    wanted = (
        "read_message (paramiko/packet.py)",
        "compute_hmac (paramiko/packet.py)",
        "feed (paramiko/buffered_pipe.py)",
        "start_subsystem (paramiko/sftp_server.py)",
        "write (edi/sftpd.py)",
        "write_at (services/spool.py)",
        "_send_status (paramiko/sftp_server.py)",
        "write_all (paramiko/packet.py)",
        "commit (edi/sftpd.py)",
        "finish (services/spool.py)",
        "keyring_file_store (services/keyring.py)",
        "edi_file_receive (services/receive.py)",
    )

    def share(n: int) -> str:
        return f"{100 * n / total:.1f}"

    return "\n".join(
        [
            f"\n== py-spy on sftpd, one upload: {total} busy samples at 200 Hz ==",
            table(
                ["function (self time)", "%"],
                [
                    [name, share(n)]
                    for name, n in sorted(self_time.items(), key=lambda kv: -kv[1])[:12]
                ],
            ),
            "",
            table(
                ["function (with what it calls)", "%"],
                [
                    [
                        name,
                        share(
                            max(
                                (n for k, n in inclusive.items() if name in k),
                                default=0,
                            )
                        ),
                    ]
                    for name in wanted
                ],
            ),
        ]
    )


# ---------------------------------------------------------------- servers


def start_portal_sftpd(
    port: int,
    host_key: Path,
    env: dict[str, str],
    log_path: Path,
) -> tuple[subprocess.Popen[bytes], Any]:
    command = [
        sys.executable,
        "manage.py",
        "sftpd",
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--host-key",
        str(host_key),
    ]
    handle = open(log_path, "ab")  # closed by the caller, after the process
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT
    )
    wait_for_port(port, process, "manage.py sftpd")
    return process, handle


def start_openssh(
    workdir: Path, public_key: str
) -> tuple[subprocess.Popen[bytes], int, Path] | str:
    """OpenSSH's sshd on a free port, or the reason it cannot run."""
    if not SSHD.exists():
        return f"{SSHD} not found"
    if os.geteuid() == 0 and not Path("/run/sshd").is_dir():
        return "sshd as root needs /run/sshd (mkdir -p /run/sshd)"
    host_key = workdir / "sshd_host_ed25519"
    if not host_key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", str(host_key)],
            check=True,
        )
    authorized = workdir / "authorized_keys"
    authorized.write_text(public_key + "\n")
    authorized.chmod(0o600)
    port = free_port()
    subsystem = str(SFTP_SERVER) if SFTP_SERVER.exists() else "internal-sftp"
    config = workdir / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {authorized}\nPidFile {workdir / 'sshd.pid'}\n"
        "UsePAM no\nStrictModes no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        f"Subsystem sftp {subsystem}\nLogLevel ERROR\n"
    )
    process = subprocess.Popen(
        [str(SSHD), "-D", "-e", "-f", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, process, "sshd")
    known = workdir / "known_hosts_openssh"
    public = host_key.with_suffix(".pub").read_text().split()
    known.write_text(f"[127.0.0.1]:{port} {public[0]} {public[1]}\n")
    return process, port, known


# ---------------------------------------------------------------- main


@dataclass
class Setup:
    workdir: Path
    csv_path: Path
    size: int
    client_key: Path
    public_key: str
    spool: Path
    media: Path


def prepare(megabytes: int) -> Setup:
    """The bench tenant, its registered key, and the file to upload."""
    from django.conf import settings

    from edi.services.sftp import sftp_key_register
    from edi.services.spool import spool_dir
    from portal.errors import ApplicationError

    bench_tenant_ensure(slug=SLUG, name="Bench SFTP")
    workdir = DATA_DIR / "work"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    client_key = DATA_DIR / "client_ed25519"
    public_key = keygen(client_key)
    with in_bench_tenant(SLUG) as tenant:
        try:
            sftp_key_register(public_key_text=public_key, name="bench", actor=None)
        except ApplicationError as exc:
            if exc.code != "sftp_key_duplicate":  # registered by an earlier run
                raise
        spool = spool_dir(tenant.schema_name)
        media = Path(settings.MEDIA_ROOT) / tenant.schema_name / "edi"
    csv_path = workdir / "employees.csv"
    log(f"generating {megabytes} MB")
    size = generate(csv_path, megabytes)
    return Setup(workdir, csv_path, size, client_key, public_key, spool, media)


def portal_uploads(
    setup: Setup, *, url: str, repeats: int, profile: bool
) -> tuple[list[Upload], str]:
    """--repeats uploads to `manage.py sftpd`; the py-spy summary if asked."""
    from edi.services.sftp import sftp_host_key_ensure

    host_key = sftp_host_key_ensure(path=DATA_DIR / "ssh_host_ed25519_key")
    port = free_port()
    known_hosts = setup.workdir / "known_hosts_portal"
    known_hosts.write_text(
        f"[127.0.0.1]:{port} {host_key.key.get_name()} {host_key.key.get_base64()}\n"
    )
    env = dict(os.environ, DATABASE_URL=url, PORTAL_DEBUG="1")
    sftpd, sftpd_log = start_portal_sftpd(
        port, host_key.path, env, setup.workdir / "sftpd.log"
    )
    command = sftp_command(
        port=port,
        user=SLUG,
        key=setup.client_key,
        known_hosts=known_hosts,
        extra=(),
    )
    results: list[Upload] = []
    summary = ""
    try:
        for n in range(repeats):
            before = {p.name for p in setup.spool.iterdir()}
            log(f"portal sftpd upload {n + 1}/{repeats}")
            result = upload(
                command,
                f"put {setup.csv_path} bench-{int(time.time())}-{n}.csv\n",
                size=setup.size,
                find_part=lambda before=before: newest_part(setup.spool, before),
                server_pid=sftpd.pid,
            )
            if not result.ok:
                raise SystemExit("sftp failed:\n" + result.stderr[-2000:])
            results.append(result)
        if profile:
            summary = profile_upload(
                sftpd.pid,
                command,
                f"put {setup.csv_path} bench-{int(time.time())}-profile.csv\n",
                setup.workdir,
            )
    finally:
        sftpd.terminate()
        sftpd.wait(timeout=60)
        sftpd_log.close()
    return results, summary


def openssh_baselines(
    setup: Setup, *, repeats: int, portal_cipher: str
) -> list[list[str]]:
    """The same uploads to OpenSSH's sshd: client defaults, portal's cipher."""
    started = start_openssh(setup.workdir, setup.public_key)
    if isinstance(started, str):
        return [["OpenSSH sshd + sftp-server", "skipped: " + started, "", "", ""]]
    process, ssh_port, ssh_known = started
    sink = setup.workdir / "sink"
    sink.mkdir(exist_ok=True)
    cipher, _, mac = portal_cipher.partition(" + ")
    same = ("-c", cipher) + (("-o", f"MACs={mac}") if mac else ())
    rows = []
    try:
        for label, extra in (("client defaults", ()), ("portal's cipher", same)):
            runs = []
            for n in range(repeats):
                target = sink / f"x{n}.csv"
                target.unlink(missing_ok=True)
                log(f"OpenSSH upload, {label}, {n + 1}/{repeats}")
                run = upload(
                    sftp_command(
                        port=ssh_port,
                        user=getpass.getuser(),
                        key=setup.client_key,
                        known_hosts=ssh_known,
                        extra=extra,
                    ),
                    f"put {setup.csv_path} {target}\n",
                    size=setup.size,
                    find_part=lambda target=target: target if target.exists() else None,
                )
                if not run.ok:
                    raise SystemExit("sftp to sshd failed:\n" + run.stderr[-2000:])
                runs.append(run)
                target.unlink(missing_ok=True)
            rows.append(
                [
                    f"OpenSSH sshd + sftp-server, {label}",
                    runs[0].cipher,
                    f"{median([r.transfer for r in runs]):.1f}",
                    f"{median([r.with_close for r in runs]):.1f}",
                    f"{median([r.session for r in runs]):.1f}",
                ]
            )
    finally:
        process.terminate()
        process.wait(timeout=10)
    return rows


def close_parts(setup: Setup) -> list[tuple[str, float]]:
    """What the CLOSE does to the file, step by step, timed in this process."""
    from portal.services.keyring import keyring_file_store

    copy_path = setup.spool / ".bench-copy"
    began = time.perf_counter()
    with open(setup.csv_path, "rb") as src, open(copy_path, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        written = time.perf_counter()
        os.fsync(dst.fileno())
    synced = time.perf_counter()
    copy_path.unlink()
    with in_bench_tenant(SLUG):
        encrypted = setup.media / "bench-encrypt"
        with open(setup.csv_path, "rb") as src:
            keyring_file_store(purpose="edi", file_id="bench", src=src, path=encrypted)
        encrypt_s = time.perf_counter() - synced
        encrypted.unlink()
    return [
        ("write into the spool (page cache)", written - began),
        ("fsync", synced - written),
        ("keyring encryption into media (with its fsync)", encrypt_s),
    ]


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="one more upload with py-spy attached to sftpd (py-spy on PATH "
        "or in $PY_SPY); prints where the server's time goes",
    )
    args = parser.parse_args()

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    os.environ["PORTAL_DATA_DIR"] = str(DATA_DIR)
    # A broker of its own that nobody consumes: the import is not measured.
    os.environ["CELERY_BROKER_URL"] = "filesystem://"
    url = django_start(database=DATABASE, reuse=args.reuse)
    ssh_version = subprocess.run(["ssh", "-V"], capture_output=True, text=True)
    print("== Machine ==")
    print(machine_report())
    print(f"ssh       {ssh_version.stderr.strip()}")

    setup = prepare(args.mb)
    results, profile = portal_uploads(
        setup, url=url, repeats=args.repeats, profile=args.profile
    )
    portal_cipher = results[0].cipher
    baselines = openssh_baselines(
        setup, repeats=args.repeats, portal_cipher=portal_cipher
    )
    parts = close_parts(setup)
    # The uploads' encrypted blobs are not needed (the rows stay), and
    # nobody will consume the import messages.
    for blob in setup.media.glob("*.raw"):
        blob.unlink()
    for message in (DATA_DIR / "broker" / "queue").glob("*"):
        message.unlink()

    mb = setup.size / 1e6
    with_close = median([r.with_close for r in results])
    met = with_close >= TARGET_MBPS
    print(
        f"\n== {mb:.0f} MB, OpenSSH sftp -b over loopback, median of {args.repeats} =="
    )
    print(f"negotiated (client->server): {portal_cipher}")
    portal_row = [
        "portal sftpd (paramiko)",
        portal_cipher,
        f"{median([r.transfer for r in results]):.1f}",
        f"{with_close:.1f}",
        f"{median([r.session for r in results]):.1f}",
    ]
    print(
        table(
            ["server", "cipher", "transfer MB/s", "with close MB/s", "session MB/s"],
            [portal_row, *baselines],
        )
    )
    print(f"\n== Each upload to the portal ({mb:.0f} MB) ==")
    print(
        table(
            [
                "run",
                "transfer MB/s",
                "with close MB/s",
                "close s",
                "server CPU s",
                "client CPU s",
            ],
            [
                [
                    str(n + 1),
                    f"{r.transfer:.1f}",
                    f"{r.with_close:.1f}",
                    f"{r.close_s:.2f}",
                    f"{r.server_cpu:.2f}",
                    f"{r.client_cpu:.2f}",
                ]
                for n, r in enumerate(results)
            ],
        )
    )
    print(f"\n== The close's steps on {mb:.0f} MB, timed in this process ==")
    print(
        table(
            ["step", "s", "MB/s"],
            [[name, f"{s:.2f}", f"{mb / s:.0f}" if s else "-"] for name, s in parts],
        )
    )
    if profile:
        print(profile)
    print(
        f"\nTarget: >= {TARGET_MBPS:.0f} MB/s with the close (median). "
        f"SFTP §5 check: {'PASS' if met else 'FAIL'}"
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
