"""The transactional email outbox: queue in the caller's transaction, send
after commit (edi.md EDI-P12; any service that emails can use it).

`outbox_email_queue` writes one `OutboxEmail` row per recipient inside the
caller's transaction and sends the `portal.outbox_deliver` task on commit.
`outbox_deliver` claims due rows with `SELECT … FOR UPDATE SKIP LOCKED`,
sends each with `django.core.mail` and marks it sent in the same short
transaction, so two deliverers never send one row twice. A failed send
records the error and is retried later with exponential backoff. The jobs
reaper (every few minutes) calls `outbox_deliver` too, so rows whose task
was lost (broker down at commit) still go out.

Delivery is at least once: a process that dies after the SMTP server took
the message but before its `sent_at` commits sends it again next time.
Once `sent_at` is committed the row is never sent again.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import EmailMessage, get_connection
from django.db import IntegrityError, transaction
from django.utils import timezone

from portal.db import current_schema
from portal.errors import TenantContextError
from portal.models import OutboxEmail
from portal.services.registry import audit_exempt

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 10
RETRY_FIRST = timedelta(minutes=1)  # doubled after every failure…
RETRY_CAP = timedelta(hours=6)  # …up to this
DELIVER_BATCH = 200
# A run stops after this many failures in a row: the mail server is down,
# and every further row would only wait for the same timeout.
STOP_AFTER_FAILURES = 3
SMTP_TIMEOUT = 30  # seconds, unless settings.EMAIL_TIMEOUT says otherwise
SENT_KEPT = timedelta(days=30)
MAX_ERROR_CHARS = 2000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass(frozen=True)
class DeliveryResult:
    sent: int = 0
    failed: int = 0


@audit_exempt("the caller records its own event in the same transaction")
def outbox_email_queue(
    *, dedupe_key: str, recipients: Iterable[str], subject: str, body: str
) -> list[OutboxEmail]:
    """Queue one email per recipient in the current transaction.

    Each row's key is `<dedupe_key>:<recipient, lower case>`; a key that is
    already queued (or sent) is skipped, so the same logical email reaches
    a recipient once however often its cause runs. Recipients are taken
    once each, case-insensitively; a row that fails validation (an address
    that is not an email) is skipped and logged: a notification must never
    undo its cause.
    Returns the rows created. The `portal.outbox_deliver` task is sent after
    commit; a broker outage is logged and the reaper delivers later.
    Runs in the current tenant's schema.
    """
    if current_schema() == "public":
        raise TenantContextError("The outbox lives in a tenant schema.")
    subject = _CONTROL.sub(" ", subject).strip()[:200]
    created: list[OutboxEmail] = []
    seen: set[str] = set()
    for recipient in recipients:
        address = recipient.strip()
        folded = address.lower()
        if not address or folded in seen:
            continue
        seen.add(folded)
        row = OutboxEmail(
            dedupe_key=f"{dedupe_key}:{folded}",
            recipient=address,
            subject=subject,
            body=body,
            next_attempt_at=timezone.now(),
        )
        try:
            # The key's uniqueness is left to the database (below).
            row.full_clean(validate_unique=False)
        except ValidationError as exc:
            logger.warning(
                "Outbox: skipped a recipient of %s: %s", dedupe_key, exc.message_dict
            )
            continue
        try:
            # A savepoint: a duplicate key must not abort the caller's
            # transaction. A concurrent queue of the same key waits here
            # for the other transaction, then finds the key taken.
            with transaction.atomic():
                row.save(force_insert=True)
        except IntegrityError:
            if OutboxEmail.objects.filter(dedupe_key=row.dedupe_key).exists():
                continue
            raise
        created.append(row)
    if created:
        schema_name = current_schema()
        transaction.on_commit(lambda: _send_deliver_task(schema_name))
    return created


def _send_deliver_task(schema_name: str) -> None:
    from portal.tasks import outbox_deliver_task
    from portal.tasks_base import enqueue_for_tenant

    try:
        enqueue_for_tenant(outbox_deliver_task, schema_name=schema_name)
    except Exception:
        # After commit: the rows are safe, and the reaper delivers them.
        logger.exception("Could not send the outbox task for %s", schema_name)


def _retry_delay(attempts: int) -> timedelta:
    delay: timedelta = RETRY_FIRST * (2 ** max(attempts - 1, 0))
    return min(delay, RETRY_CAP)


@audit_exempt("delivery bookkeeping; the email's cause was audited when queued")
def outbox_deliver(*, limit: int = DELIVER_BATCH) -> DeliveryResult:
    """Send due outbox rows of the current tenant; safe to run concurrently.

    Each row is claimed with `FOR UPDATE SKIP LOCKED`, sent, and marked
    sent in one transaction: a row another deliverer holds is skipped, and
    a row marked sent is never picked again. A failed send counts an
    attempt, keeps the error in `last_error` and is retried after 1, 2,
    4 … minutes (at most 6 hours apart); after `MAX_ATTEMPTS` the row stays
    unsent with its error. At most `limit` rows per call; the run stops
    early after `STOP_AFTER_FAILURES` failures in a row.
    """
    if current_schema() == "public":
        raise TenantContextError("The outbox lives in a tenant schema.")
    started = timezone.now()
    sent = failed = in_a_row = 0
    mailer: Any = None
    try:
        for _ in range(limit):
            with transaction.atomic():
                row = (
                    OutboxEmail.objects.select_for_update(skip_locked=True)
                    .filter(
                        sent_at__isnull=True,
                        attempts__lt=MAX_ATTEMPTS,
                        next_attempt_at__lte=started,
                    )
                    .order_by("next_attempt_at", "id")
                    .first()
                )
                if row is None:
                    break
                row.attempts += 1
                try:
                    if mailer is None:
                        mailer = get_connection(
                            timeout=getattr(settings, "EMAIL_TIMEOUT", None)
                            or SMTP_TIMEOUT
                        )
                        mailer.open()
                    EmailMessage(
                        subject=row.subject,
                        body=row.body,
                        to=[row.recipient],
                        connection=mailer,
                    ).send()
                except Exception as exc:
                    row.last_error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
                    row.next_attempt_at = timezone.now() + _retry_delay(row.attempts)
                    row.save(
                        update_fields=["attempts", "last_error", "next_attempt_at"]
                    )
                    logger.warning(
                        "Outbox email %s failed (attempt %s): %s",
                        row.pk,
                        row.attempts,
                        row.last_error,
                    )
                    failed += 1
                    in_a_row += 1
                    # A broken session is not reused.
                    _close_quietly(mailer)
                    mailer = None
                    if in_a_row >= STOP_AFTER_FAILURES:
                        break
                    continue
                row.sent_at = timezone.now()
                row.last_error = ""
                row.save(update_fields=["attempts", "sent_at", "last_error"])
                sent += 1
                in_a_row = 0
    finally:
        _close_quietly(mailer)
    return DeliveryResult(sent=sent, failed=failed)


def _close_quietly(mailer: Any) -> None:
    if mailer is not None:
        try:
            mailer.close()
        except Exception:
            logger.debug("Closing the mail connection failed", exc_info=True)


@audit_exempt("housekeeping: removes delivered emails only")
def outbox_prune(*, older_than: timedelta = SENT_KEPT) -> int:
    """Delete rows sent more than `older_than` ago; returns how many.

    Unsent rows stay (with their error) for an operator to look at. The
    dedupe keys go with the rows: a cause that repeats after that long (a
    file held again a month later) is news again and mails again.
    """
    deleted, _ = OutboxEmail.objects.filter(
        sent_at__lt=timezone.now() - older_than
    ).delete()
    return deleted
