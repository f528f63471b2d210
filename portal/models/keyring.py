"""Per-tenant data keys, stored only wrapped by the master key (PORTAL-19)."""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class DataKeyState(models.TextChoices):
    ACTIVE = "active", "Active"
    RETIRED = "retired", "Retired"
    DESTROYED = "destroyed", "Destroyed"


class DataKey(models.Model):
    purpose = models.CharField(max_length=30)
    version = models.PositiveIntegerField()
    state = models.CharField(
        max_length=10, choices=DataKeyState.choices, default=DataKeyState.ACTIVE
    )
    wrapped = models.BinaryField(null=True, blank=True)
    master_key_id = models.CharField(max_length=16)
    fingerprint = models.CharField(max_length=16)
    canary = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True)
    destroyed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["purpose", "version"], name="portal_datakey_uniq"
            ),
            models.UniqueConstraint(
                fields=["purpose"],
                condition=Q(state="active"),
                name="portal_datakey_one_active",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.purpose} v{self.version} ({self.state})"
