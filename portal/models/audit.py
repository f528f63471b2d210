"""The tenant's audit log (PORTAL-11..13). Append-only by trigger."""

from __future__ import annotations

from django.db import models

from tenants.models import AuditRecord


class AuditEvent(AuditRecord):
    occurred_at = models.DateTimeField()
    action = models.CharField(max_length=100)
    target_label = models.CharField(max_length=254, blank=True, default="")

    class Meta:
        indexes = [
            models.Index(fields=["-occurred_at", "-id"], name="portal_audit_keyset"),
            models.Index(fields=["action", "-occurred_at"], name="portal_audit_action"),
            models.Index(fields=["request_id"], name="portal_audit_request"),
            models.Index(fields=["actor_type", "actor_id"], name="portal_audit_actor"),
            models.Index(
                fields=["target_type", "target_id"], name="portal_audit_target"
            ),
        ]
