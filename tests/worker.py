"""Start a real Celery worker from tests (TEN-8, TEN-9, PORTAL-16).

Not a test module: tests use the `use_test_broker` context manager to point
this process's producer at a broker and a queue of their own, then
`running_worker` to start `celery -A portal worker` on the test database.

How the broker is chosen (`broker_url_for_tests`):

1. `CELERY_BROKER_URL` from the environment when set (CI sets Redis);
2. else Redis on 127.0.0.1:6379 when it answers PING, database 5;
3. else the filesystem broker of the settings (PORTAL_DATA_DIR/broker);
   with CI=true this case fails instead (`ci_requires("Redis")`).

Each use gets a queue named `t<hex>`: the worker consumes only that queue
(`-Q`) and the producer sends there (`task_default_queue`), so concurrent
test runs, other workers and stale messages never meet. The filesystem
broker keeps the settings' folder rather than a temporary one because the
worker must share PORTAL_DATA_DIR with this process (secrets, master key,
media for export files); its files are named after their queue, so the
unique queue isolates them just as well. Tasks the worker itself sends
still go to the settings' default queue: tests that need them re-sent
(the jobs reaper) call the service from the test process instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from django.conf import settings
from django.db import connection
from kombu import Exchange, Queue, pools

from portal.celery import app

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
REDIS_TEST_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/5"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def redis_answers(host: str = REDIS_HOST, port: int = REDIS_PORT) -> bool:
    """True when a Redis server answers PING (raw protocol: no client needed)."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def broker_url_for_tests() -> str:
    """The broker the worker and this process share (see the module doc)."""
    from tests.conftest import ci_requires

    url = os.environ.get("CELERY_BROKER_URL", "")
    if url:
        return url
    if redis_answers():
        return REDIS_TEST_URL
    if os.environ.get("CI") == "true":
        ci_requires("Redis")
    return "filesystem://"


def _transport_options(url: str) -> dict[str, Any]:
    """What the worker's settings will derive from the same URL."""
    if url == settings.CELERY_BROKER_URL:
        return dict(settings.CELERY_BROKER_TRANSPORT_OPTIONS)
    if url.startswith("filesystem:"):
        # Only reached when the settings were loaded for another broker.
        folder = Path(settings.PORTAL_DATA_DIR) / "broker"
        for name in ("queue", "processed", "control"):
            (folder / name).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
    return {"visibility_timeout": settings.CELERY_VISIBILITY_TIMEOUT}


def _reset_producer_pool() -> None:
    # The app caches its broker connection pool, and kombu keeps closed
    # pools by connection URL: drop both so the next send connects with the
    # current configuration.
    app._pool = None
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None
    pools.reset()  # type: ignore[attr-defined]


@dataclass(frozen=True)
class WorkerBroker:
    url: str
    queue: str

    @property
    def kind(self) -> str:
        return self.url.split(":", 1)[0]


def _queue_drop(broker: WorkerBroker) -> None:
    """Delete the queue, its bindings, and on Redis what a killed worker held."""
    name = broker.queue
    queue: Any = Queue(name, Exchange(name, type="direct"), routing_key=name)
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        # Declaring here records the binding in this channel, so that
        # delete() also removes the binding the worker made.
        bound = queue.bind(channel)
        bound.declare()
        bound.purge()
        bound.delete()
        if broker.kind in ("redis", "rediss"):
            client = channel.client
            for tag, raw in client.hscan_iter(channel.unacked_key):
                if json.loads(raw)[2] == name:
                    client.hdel(channel.unacked_key, tag)
                    client.zrem(channel.unacked_index_key, tag)
    control = app.conf.broker_transport_options.get("control_folder")
    if broker.kind == "filesystem" and control:
        (Path(control) / f"{name}.exchange").unlink(missing_ok=True)


@contextmanager
def use_test_broker() -> Iterator[WorkerBroker]:
    """Point this process's Celery producer at the test broker and queue.

    Restores the previous configuration afterwards and drops whatever is
    left in the queue.
    """
    url = broker_url_for_tests()
    broker = WorkerBroker(url=url, queue="t" + uuid.uuid4().hex[:12])
    keys = ("broker_url", "broker_transport_options", "task_default_queue")
    saved = {key: app.conf[key] for key in keys}
    app.conf.update(
        broker_url=url,
        broker_transport_options=_transport_options(url),
        task_default_queue=broker.queue,
    )
    _reset_producer_pool()
    try:
        yield broker
    finally:
        try:
            _queue_drop(broker)
        except Exception as exc:  # cleanup only: never hide the test's result
            print(f"could not delete test queue {broker.queue}: {exc}")
        app.conf.update(saved)
        _reset_producer_pool()


def database_url_for_worker() -> str:
    """DATABASE_URL of the database this test process uses (the test DB).

    A Unix-socket HOST (the embedded pgserver) is percent-encoded into the
    netloc, which dj_database_url decodes back into HOST.
    """
    db = connection.settings_dict
    user = quote(str(db.get("USER") or ""), safe="")
    password = str(db.get("PASSWORD") or "")
    auth = user + (":" + quote(password, safe="") if password else "")
    host = str(db.get("HOST") or "")
    if ":" in host and not host.startswith("/"):
        host = f"[{host}]"
    else:
        host = quote(host, safe="")
    port = f":{db['PORT']}" if db.get("PORT") else ""
    name = quote(str(db["NAME"]), safe="")
    options = {
        key: value
        for key, value in (db.get("OPTIONS") or {}).items()
        if isinstance(value, str | int) and key != "pool"
    }
    query = f"?{urlencode(options)}" if options else ""
    return f"postgresql://{auth}@{host}{port}/{name}{query}"


def worker_env(broker: WorkerBroker) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url_for_worker(),
        PORTAL_DEBUG="1",
        PORTAL_DATA_DIR=str(settings.PORTAL_DATA_DIR),
        CELERY_BROKER_URL=broker.url,
        PYTHONUNBUFFERED="1",
    )
    env.pop("PORTAL_CELERY_EAGER", None)
    env.pop("CELERY_BROKER_WRITE_URL", None)
    return env


class RealWorker:
    """A `celery -A portal worker` subprocess; its output goes to a file."""

    def __init__(self, broker: WorkerBroker, *, pool: str = "solo") -> None:
        self.broker = broker
        self.pool = pool
        self.nodename = f"{broker.queue}-{uuid.uuid4().hex[:6]}@%h"
        handle, name = tempfile.mkstemp(prefix="celery-worker-", suffix=".log")
        os.close(handle)
        self.log_path = Path(name)
        self.process: subprocess.Popen[bytes] | None = None
        self._starts = 0

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "portal",
            "worker",
            "--pool",
            self.pool,
            "--concurrency",
            "1",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "INFO",
            "-Q",
            self.broker.queue,
            "-n",
            self.nodename,
        ]

    def start(self) -> None:
        """Start the worker and wait until it consumes (or fail with its log)."""
        assert self.process is None, "worker already running"
        self._starts += 1
        marker = self.log_text().count(" ready.")
        with self.log_path.open("ab") as log:
            log.write(f"\n--- worker start #{self._starts} ---\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command(),
                cwd=settings.BASE_DIR,
                env=worker_env(self.broker),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.log_text().count(" ready.") > marker:
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"The Celery worker did not start:\n{self.log_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop with `sig` (SIGTERM: warm shutdown), SIGKILL if it hangs."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL the worker and its pool: no shutdown, no ack, no requeue."""
        process, self.process = self.process, None
        if process is None:
            return
        # The worker leads its own process group (start_new_session), so
        # this reaches a prefork child too and nothing else.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_TIMEOUT)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, needle: str, timeout: float = 30.0) -> str:
        """Wait until `needle` appears in the log; return the log."""
        wait_until(lambda: needle in self.log_text(), timeout=timeout, what=needle)
        return self.log_text()


def wait_until(
    condition: Callable[[], Any], *, timeout: float, what: str, every: float = 0.2
) -> Any:
    """Poll `condition` until it returns a truthy value; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"Timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


@contextmanager
def running_worker(
    broker: WorkerBroker, *, pool: str = "solo", start: bool = True
) -> Iterator[RealWorker]:
    """A real worker for the duration of the block; always stopped after.

    The worker's log is printed on the way out, so pytest shows it with a
    failing test (and hides it for a passing one).
    """
    worker = RealWorker(broker, pool=pool)
    try:
        if start:
            worker.start()
        yield worker
    finally:
        worker.stop()
        print(f"--- celery worker log ({worker.log_path}) ---")
        print(worker.log_text())
        worker.log_path.unlink(missing_ok=True)
