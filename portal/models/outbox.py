"""The transactional email outbox (edi.md EDI-P12, and any later email).

A service that wants to send mail writes `OutboxEmail` rows in its own
transaction; `portal.services.outbox.outbox_deliver` sends them after
commit. A rolled-back change therefore sends nothing, and a crash after
commit loses nothing.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone


class OutboxEmail(models.Model):
    """One email to one recipient, queued until it is sent."""

    # "edi:<file id>:<status>:<email>": the same logical email for the same
    # recipient can be queued once, however often its cause runs again.
    dedupe_key = models.CharField(max_length=400, unique=True)
    recipient = models.EmailField(max_length=254)
    subject = models.CharField(max_length=200)
    body = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    # When the next delivery attempt is due (backoff after a failure).
    next_attempt_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(sent_at__isnull=True),
                name="portal_outbox_due",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.subject} → {self.recipient}"
