"""The transactional email outbox (portal.services.outbox; edi.md EDI-P12).

Queueing happens in the caller's transaction and is deduplicated by key;
delivery goes through `django.core.mail` to a fake SMTP server on loopback
(real smtplib, real SMTP dialogue), retries after a failure with backoff,
and sends each row once even with two deliverers at the same moment.
"""

from __future__ import annotations

import datetime as dt
import socketserver
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.core import mail
from django.core.mail.backends.base import BaseEmailBackend
from django.db import connection, transaction
from django.utils import timezone
from django_tenants.utils import tenant_context

from portal.models import OutboxEmail
from portal.services.outbox import (
    MAX_ATTEMPTS,
    DeliveryResult,
    outbox_deliver,
    outbox_email_queue,
    outbox_prune,
)
from portal.tasks import jobs_reap_task
from tenants.models import Tenant


@pytest.fixture
def in_tenant(tenant: Tenant) -> Iterator[Tenant]:
    with tenant_context(tenant):
        yield tenant


class Clock:
    """A frozen `timezone.now()` for every module that calls it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = timezone.now()
        monkeypatch.setattr(timezone, "now", lambda: self.now)


def queue(key: str = "test:1", *recipients: str) -> list[OutboxEmail]:
    return outbox_email_queue(
        dedupe_key=key,
        recipients=recipients or ("ada@example.test",),
        subject="Hello",
        body="Body text\n",
    )


# --------------------------------------------------------------------------
# A fake SMTP server on loopback


class _SmtpHandler(socketserver.StreamRequestHandler):
    server: FakeSmtp

    def _reply(self, text: str) -> None:
        self.wfile.write(text.encode() + b"\r\n")

    def handle(self) -> None:
        self._reply("220 fake.test ESMTP")
        while line := self.rfile.readline():
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                self._reply("250 fake.test")
            elif verb == b"MAIL" and self.server.refuse:
                self._reply("451 4.3.0 try again later")
            elif verb == b"DATA":
                self._reply("354 go ahead")
                data = []
                while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                    data.append(chunk)
                self.server.messages.append(b"".join(data).decode())
                self._reply("250 2.0.0 queued")
            elif verb == b"QUIT":
                self._reply("221 bye")
                return
            else:  # MAIL, RCPT, RSET, NOOP
                self._reply("250 ok")


class FakeSmtp(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SmtpHandler)
        self.refuse = False
        self.messages: list[str] = []


@pytest.fixture
def smtp(settings: Any) -> Iterator[FakeSmtp]:
    server = FakeSmtp()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = server.server_address[1]
    settings.EMAIL_HOST_USER = ""
    settings.EMAIL_HOST_PASSWORD = ""
    settings.EMAIL_USE_TLS = False
    settings.EMAIL_USE_SSL = False
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


# --------------------------------------------------------------------------
# Queueing


def test_queue_writes_one_row_per_recipient_once(in_tenant):
    rows = queue("edi:f1:completed", "Ada@Example.test", "ada@example.test", "b@x.test")
    assert [r.recipient for r in rows] == ["Ada@Example.test", "b@x.test"]
    assert sorted(OutboxEmail.objects.values_list("dedupe_key", flat=True)) == [
        "edi:f1:completed:ada@example.test",
        "edi:f1:completed:b@x.test",
    ]
    assert OutboxEmail.objects.filter(sent_at__isnull=True).count() == 2


def test_the_same_key_is_queued_once_even_after_sending(in_tenant):
    queue("k", "ada@example.test")
    outbox_deliver()
    assert queue("k", "ADA@example.test", "new@example.test")[0].recipient == (
        "new@example.test"
    )
    assert OutboxEmail.objects.count() == 2
    assert outbox_deliver().sent == 1
    assert [m.to for m in mail.outbox] == [["ada@example.test"], ["new@example.test"]]


def test_invalid_addresses_are_skipped_not_raised(in_tenant):
    assert queue("k", "not an address", "ok@example.test")[0].recipient == (
        "ok@example.test"
    )
    assert OutboxEmail.objects.count() == 1


def test_the_subject_cannot_carry_header_breaks(in_tenant):
    outbox_email_queue(
        dedupe_key="k",
        recipients=["a@example.test"],
        subject="Line\r\nBcc: evil@example.test",
        body="x",
    )
    assert OutboxEmail.objects.get().subject == "Line Bcc: evil@example.test"
    assert outbox_deliver().sent == 1


def test_a_rolled_back_cause_queues_nothing(in_tenant):
    def queue_then_fail() -> None:
        with transaction.atomic():
            queue("k")
            raise RuntimeError

    with pytest.raises(RuntimeError):
        queue_then_fail()
    assert not OutboxEmail.objects.exists()


def test_delivery_task_is_sent_on_commit_only_for_new_rows(
    in_tenant, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        queue("k")
    assert len(callbacks) == 1
    with django_capture_on_commit_callbacks() as callbacks:
        queue("k")
    assert callbacks == []


# --------------------------------------------------------------------------
# Delivery


def test_deliver_sends_marks_sent_and_never_sends_again(in_tenant):
    queue("k", "a@example.test", "b@example.test")
    result = outbox_deliver()
    assert (result.sent, result.failed) == (2, 0)
    assert sorted(m.to[0] for m in mail.outbox) == ["a@example.test", "b@example.test"]
    assert mail.outbox[0].subject == "Hello"
    assert mail.outbox[0].body == "Body text\n"
    row = OutboxEmail.objects.get(recipient="a@example.test")
    assert row.sent_at is not None
    assert row.attempts == 1
    assert outbox_deliver().sent == 0
    assert len(mail.outbox) == 2


def test_smtp_failure_is_recorded_and_retried_later_with_backoff(
    in_tenant, smtp, monkeypatch
):
    queue("k", "a@example.test")
    smtp.refuse = True
    assert outbox_deliver().failed == 1
    row = OutboxEmail.objects.get()
    assert row.sent_at is None
    assert row.attempts == 1
    assert "451" in row.last_error
    first_retry = row.next_attempt_at - timezone.now()
    assert dt.timedelta(seconds=50) < first_retry <= dt.timedelta(minutes=1)

    # Not due yet: nothing is tried, even with the server back.
    smtp.refuse = False
    assert outbox_deliver() == DeliveryResult(sent=0, failed=0)
    assert smtp.messages == []

    # Fails again once due: the next wait doubles.
    clock = Clock(monkeypatch)
    clock.now += dt.timedelta(minutes=2)
    smtp.refuse = True
    assert outbox_deliver().failed == 1
    row.refresh_from_db()
    assert row.attempts == 2
    assert row.next_attempt_at - clock.now == dt.timedelta(minutes=2)

    clock.now += dt.timedelta(minutes=3)
    smtp.refuse = False
    assert outbox_deliver().sent == 1
    row.refresh_from_db()
    assert row.sent_at == clock.now
    assert row.attempts == 3
    assert row.last_error == ""
    assert len(smtp.messages) == 1
    assert "To: a@example.test" in smtp.messages[0]
    assert "Body text" in smtp.messages[0]
    clock.now += dt.timedelta(days=1)
    assert outbox_deliver().sent == 0
    assert len(smtp.messages) == 1


def test_an_unreachable_server_stops_the_run_early(in_tenant, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = _closed_port()
    for n in range(5):
        queue(f"k{n}", "a@example.test")
    result = outbox_deliver()
    assert (result.sent, result.failed) == (0, 3)
    assert OutboxEmail.objects.filter(attempts=0).count() == 2
    assert all(
        "Connection" in e or "refused" in e
        for e in OutboxEmail.objects.filter(attempts=1).values_list(
            "last_error", flat=True
        )
    )


def test_a_row_gives_up_after_max_attempts(in_tenant):
    queue("k", "a@example.test")
    OutboxEmail.objects.update(attempts=MAX_ATTEMPTS)
    assert outbox_deliver().sent == 0
    assert mail.outbox == []


def test_the_reaper_delivers_leftovers(in_tenant):
    # A row whose task was lost (broker down at commit).
    queue("k", "a@example.test")
    jobs_reap_task.run(schema_name=in_tenant.schema_name)
    assert [m.to for m in mail.outbox] == [["a@example.test"]]


def test_prune_drops_sent_rows_after_thirty_days(in_tenant, monkeypatch):
    queue("sent", "a@example.test")
    outbox_deliver()
    queue("unsent", "b@example.test")
    OutboxEmail.objects.filter(dedupe_key__startswith="unsent").update(
        attempts=MAX_ATTEMPTS
    )
    clock = Clock(monkeypatch)
    clock.now += dt.timedelta(days=29)
    assert outbox_prune() == 0
    clock.now += dt.timedelta(days=2)
    assert outbox_prune() == 1
    assert list(OutboxEmail.objects.values_list("recipient", flat=True)) == [
        "b@example.test"
    ]


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------
# Two deliverers at once (committed data, one database connection each)


class BlockingBackend(BaseEmailBackend):
    """Records sends; the very first send waits until the test releases it."""

    sent: list[str] = []  # shared by every instance on purpose
    first_started = threading.Event()
    release = threading.Event()
    _lock = threading.Lock()

    def send_messages(self, email_messages: Any) -> int:
        with self._lock:
            first = not BlockingBackend.first_started.is_set()
            BlockingBackend.first_started.set()
        if first:
            assert BlockingBackend.release.wait(20)
        with self._lock:
            BlockingBackend.sent.extend(m.to[0] for m in email_messages)
        return len(email_messages)


def _deliver_in_thread(tenant: Tenant, results: list[Any]) -> None:
    try:
        with tenant_context(tenant):
            results.append(outbox_deliver())
    finally:
        connection.close()


def test_two_deliverers_at_once_send_each_row_once(committed_tenant, settings):
    settings.EMAIL_BACKEND = "tests.portal.test_outbox.BlockingBackend"
    BlockingBackend.sent = []
    BlockingBackend.first_started.clear()
    BlockingBackend.release.clear()
    recipients = [f"r{n}@example.test" for n in range(6)]
    with tenant_context(committed_tenant), transaction.atomic():
        queue("race", *recipients)

    first: list[Any] = []
    blocked = threading.Thread(
        target=_deliver_in_thread, args=(committed_tenant, first)
    )
    blocked.start()
    try:
        # The first deliverer now holds its row locked, mid-send.
        assert BlockingBackend.first_started.wait(20)
        second: list[Any] = []
        _deliver_in_thread(committed_tenant, second)
    finally:
        BlockingBackend.release.set()
        blocked.join(timeout=30)
    assert not blocked.is_alive()

    assert sorted(BlockingBackend.sent) == sorted(recipients)
    assert second[0].sent == 5  # every row but the locked one
    assert first[0].sent == 1
    with tenant_context(committed_tenant):
        assert OutboxEmail.objects.filter(sent_at__isnull=True).count() == 0
        assert set(OutboxEmail.objects.values_list("attempts", flat=True)) == {1}


# --------------------------------------------------------------------------
# On a real worker: the task sent on commit delivers through real SMTP


@pytest.mark.worker
def test_a_real_worker_delivers_after_commit(committed_tenant, smtp, monkeypatch):
    from tests.worker import running_worker, use_test_broker, wait_until

    # The worker reads EMAIL_URL at start: the fake server of this test.
    monkeypatch.setenv("EMAIL_URL", f"smtp://127.0.0.1:{smtp.server_address[1]}")
    with use_test_broker() as broker:
        with tenant_context(committed_tenant), transaction.atomic():
            queue("worker", "a@example.test", "b@example.test")
        with running_worker(broker) as worker:
            wait_until(
                lambda: len(smtp.messages) >= 2,
                timeout=60,
                what="the worker's emails",
            )
            log = worker.log_text()
    assert "portal.outbox_deliver" in log
    assert sorted(m.split("To: ")[1].split("\r\n")[0] for m in smtp.messages) == [
        "a@example.test",
        "b@example.test",
    ]
    with tenant_context(committed_tenant):
        assert not OutboxEmail.objects.filter(sent_at__isnull=True).exists()
