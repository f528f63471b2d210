"""Background jobs with progress, checkpoints and attempts (PORTAL-15..17)."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


class Job(models.Model):
    ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
    MAX_ATTEMPTS = 3

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=60)
    status = models.CharField(
        max_length=12, choices=JobStatus.choices, default=JobStatus.QUEUED
    )
    progress_done = models.PositiveBigIntegerField(default=0)
    progress_total = models.PositiveBigIntegerField(null=True, blank=True)
    message = models.CharField(max_length=500, blank=True, default="")
    checkpoint = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(max_length=4096, blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    requester = models.ForeignKey(
        "portal.Member",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="jobs",
    )
    idempotency_key = models.CharField(max_length=200, blank=True, default="")
    params = models.JSONField(default=dict, blank=True)
    request_id = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["requester", "kind", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="portal_job_idempotency_uniq",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "heartbeat_at"], name="portal_job_status"),
            models.Index(fields=["-created_at"], name="portal_job_created"),
        ]

    def __str__(self) -> str:
        # Audit events keep this as the target label: no status, which would
        # be stale the moment the job moves on.
        return self.kind_label

    @property
    def kind_label(self) -> str:
        """`audit_export` → "Audit export", for headings and lists."""
        return self.kind.replace("_", " ").capitalize()

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def percent(self) -> int | None:
        if not self.progress_total:
            return None
        return min(100, int(self.progress_done * 100 / self.progress_total))
