"""Employee data integration: files, settings, tokens, SFTP keys (edi.md).

Everything here lives in the tenant's schema. The SFTP account that maps a
username (the tenant's slug) to the tenant is in the public schema
(`tenants.SftpAccount`), because the SFTP server authenticates before it
knows the tenant.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q


class EdiMode(models.TextChoices):
    FULL = "full", "Full (the whole directory)"
    DELTA = "delta", "Delta (only the rows listed)"


class EdiSource(models.TextChoices):
    UI = "ui", "Browser"
    API = "api", "HTTPS"
    SFTP = "sftp", "SFTP"


class EdiStatus(models.TextChoices):
    RECEIVED = "received", "Received"
    VALIDATING = "validating", "Validating"
    VALIDATED = "validated", "Validated (preview)"
    HELD = "held", "Held for approval"
    APPLYING = "applying", "Applying"
    COMPLETED = "completed", "Completed"
    REJECTED = "rejected", "Rejected"
    DUPLICATE = "duplicate", "Duplicate"
    SUPERSEDED = "superseded", "Superseded"
    CANCELLED = "cancelled", "Cancelled"
    FAILED = "failed", "Failed"


# Statuses after which nothing more happens to a file.
FINAL_STATUSES = frozenset(
    {
        EdiStatus.COMPLETED,
        EdiStatus.REJECTED,
        EdiStatus.DUPLICATE,
        EdiStatus.SUPERSEDED,
        EdiStatus.CANCELLED,
        EdiStatus.FAILED,
    }
)
# A file "in flight" for the idempotency check (EDI-P9).
IN_FLIGHT_STATUSES = frozenset(
    {
        EdiStatus.RECEIVED,
        EdiStatus.VALIDATING,
        EdiStatus.VALIDATED,
        EdiStatus.HELD,
        EdiStatus.APPLYING,
    }
)


class EdiSettings(models.Model):
    """The tenant's one settings row (created on first use)."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    default_mode = models.CharField(
        max_length=5, choices=EdiMode.choices, default=EdiMode.DELTA
    )
    deactivation_threshold_percent = models.PositiveSmallIntegerField(default=20)
    invalid_rows_percent = models.PositiveSmallIntegerField(default=10)
    retention_days = models.PositiveIntegerField(default=90)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(id=1), name="edi_settings_single"),
            models.CheckConstraint(
                condition=Q(deactivation_threshold_percent__lte=100)
                & Q(invalid_rows_percent__lte=100),
                name="edi_settings_percentages",
            ),
        ]

    def __str__(self) -> str:
        return "EDI settings"


class AutoProvisionRule(models.Model):
    """Grant a seat to rows with a blank `seat` cell that match (edi.md §2)."""

    class Field(models.TextChoices):
        DEPARTMENT = "department", "Department is"
        GROUP = "group", "Group is"

    field = models.CharField(max_length=12, choices=Field.choices)
    value = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                "field", models.functions.Lower("value"), name="edi_rule_uniq"
            )
        ]
        ordering = ["field", "value"]

    def __str__(self) -> str:
        return f"{self.get_field_display()} {self.value}"


class EdiToken(models.Model):
    """An HTTPS bearer token; only its SHA-256 is stored (EDI-C2)."""

    SCOPES = ("edi:write", "edi:read")

    name = models.CharField(max_length=100)
    token_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=12)  # "edi_" and 4 characters, for lists
    scopes = models.JSONField(default=list)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        "portal.Member", null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class SftpKey(models.Model):
    """A public key allowed to log in to this tenant's SFTP drop box."""

    name = models.CharField(max_length=100)
    algorithm = models.CharField(max_length=40)
    bits = models.PositiveIntegerField()
    public_key = models.TextField()  # the OpenSSH one-line form, comment dropped
    fingerprint = models.CharField(max_length=64, unique=True)  # SHA256:<base64>
    created_by = models.ForeignKey(
        "portal.Member", null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    last_used_ip = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.fingerprint})"


class EdiFile(models.Model):
    """One file received on any channel, and what became of it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    source = models.CharField(max_length=4, choices=EdiSource.choices)
    original_name = models.CharField(max_length=255, blank=True, default="")
    mode = models.CharField(max_length=5, choices=EdiMode.choices)
    dry_run = models.BooleanField(default=False)
    status = models.CharField(
        max_length=10, choices=EdiStatus.choices, default=EdiStatus.RECEIVED
    )
    sha256 = models.CharField(max_length=64)
    size = models.PositiveBigIntegerField()
    uploaded_by = models.ForeignKey(
        "portal.Member",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="edi_files",
    )
    token = models.ForeignKey(
        EdiToken, null=True, blank=True, on_delete=models.SET_NULL, related_name="files"
    )
    sftp_key = models.ForeignKey(
        SftpKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="files"
    )
    idempotency_key = models.CharField(max_length=200, blank=True, default="")
    duplicate_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    job = models.ForeignKey(
        "portal.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Counts (DESIGN.md): rows, created, updated, deactivated, unchanged,
    # row_errors; plus seats_granted, seats_revoked, warnings.
    counts = models.JSONField(default=dict, blank=True)
    # File-level errors: [{"code", "message", "line"?, "details"?}].
    errors = models.JSONField(default=list, blank=True)
    # What a validated file would change: counts and samples per outcome.
    preview = models.JSONField(default=dict, blank=True)
    blob_name = models.CharField(max_length=200, blank=True, default="")
    results_name = models.CharField(max_length=200, blank=True, default="")
    purged_at = models.DateTimeField(null=True, blank=True)
    approved_by = models.ForeignKey(
        "portal.Member",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    approved_at = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["token", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="edi_file_idempotency_uniq",
            ),
        ]
        indexes = [
            models.Index(fields=["-received_at"], name="edi_file_received"),
            models.Index(fields=["sha256"], name="edi_file_sha256"),
            models.Index(fields=["status"], name="edi_file_status"),
        ]
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return self.original_name or f"EDI file {self.pk}"

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES
