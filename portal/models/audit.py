"""The tenant's audit log (PORTAL-11..13). Append-only by trigger."""

from __future__ import annotations

from django.db import models

from tenants.models import ActorType, Source


class AuditEvent(models.Model):
    occurred_at = models.DateTimeField()
    actor_type = models.CharField(max_length=20, choices=ActorType.choices)
    actor_id = models.CharField(max_length=64, blank=True, default="")
    actor_label = models.CharField(max_length=254, blank=True, default="")
    action = models.CharField(max_length=100)
    target_type = models.CharField(max_length=60, blank=True, default="")
    target_id = models.CharField(max_length=64, blank=True, default="")
    target_label = models.CharField(max_length=254, blank=True, default="")
    changes = models.JSONField(default=dict, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=400, blank=True, default="")
    request_id = models.CharField(max_length=64, blank=True, default="")
    source = models.CharField(max_length=10, choices=Source.choices)

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

    def __str__(self) -> str:
        return f"{self.occurred_at:%Y-%m-%d %H:%M} {self.action}"
