"""Public-schema models: tenants, domains, the platform audit log and jobs.

These tables exist only in the `public` schema (TEN-1). Tenant tables never
point at them with a foreign key; platform audit rows keep tenant id, slug and
schema as plain values so they outlive the tenant (TEN-5, PORTAL-14).
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models.functions import Lower
from django_tenants.models import DomainMixin, TenantMixin


class TenantStatus(models.TextChoices):
    PROVISIONING = "provisioning", "Provisioning"
    ACTIVE = "active", "Active"
    SUSPENDED = "suspended", "Suspended"
    PENDING_DELETION = "pending_deletion", "Pending deletion"
    PURGING = "purging", "Being deleted"
    TEMPLATE = "template", "Template"
    PUBLIC = "public", "Platform"


class Tenant(TenantMixin):
    slug = models.CharField(max_length=40, unique=True)
    name = models.CharField(max_length=200)
    status = models.CharField(
        max_length=20, choices=TenantStatus.choices, default=TenantStatus.PROVISIONING
    )
    # Mirror of the tenant schema's SeatPool.limit, for the console list.
    seat_limit = models.PositiveIntegerField(null=True, blank=True)
    purge_after = models.DateTimeField(null=True, blank=True)
    retire_reason = models.CharField(max_length=500, blank=True, default="")
    # Cancelling a retirement returns the tenant to the state it had.
    suspended_before_retirement = models.BooleanField(default=False)
    health = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    auto_create_schema = False
    auto_drop_schema = False

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug

    @property
    def is_active(self) -> bool:
        return self.status == TenantStatus.ACTIVE


class Domain(DomainMixin):
    class Meta:
        constraints = [
            models.UniqueConstraint(Lower("domain"), name="tenants_domain_lower_uniq"),
        ]

    def __str__(self) -> str:
        return self.domain


class ActorType(models.TextChoices):
    MEMBER = "member", "Member"
    OPERATOR = "operator", "Operator"
    SYSTEM = "system", "System"
    EDI_TOKEN = "edi_token", "EDI token"
    SFTP_KEY = "sftp_key", "SFTP key"
    VIEWER = "viewer", "Viewer"
    ANONYMOUS = "anonymous", "Anonymous"


class Source(models.TextChoices):
    WEB = "web", "Web"
    API = "api", "API"
    SFTP = "sftp", "SFTP"
    CELERY = "celery", "Background"
    CLI = "cli", "Command line"
    VIEWER = "viewer", "Viewer"


class AuditRecord(models.Model):
    """Fields shared by the tenant audit log and the platform audit log."""

    actor_type = models.CharField(max_length=20, choices=ActorType.choices)
    actor_id = models.CharField(max_length=64, blank=True, default="")
    actor_label = models.CharField(max_length=254, blank=True, default="")
    target_type = models.CharField(max_length=60, blank=True, default="")
    target_id = models.CharField(max_length=64, blank=True, default="")
    changes = models.JSONField(default=dict, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=400, blank=True, default="")
    request_id = models.CharField(max_length=64, blank=True, default="")
    source = models.CharField(max_length=10, choices=Source.choices)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        occurred_at = getattr(self, "occurred_at", None)
        action = getattr(self, "action", "")
        return f"{occurred_at:%Y-%m-%d %H:%M} {action}" if occurred_at else action


class PlatformAuditEvent(AuditRecord):
    """Append-only (a trigger rejects UPDATE, DELETE and TRUNCATE)."""

    occurred_at = models.DateTimeField(db_index=True)
    action = models.CharField(max_length=100, db_index=True)
    tenant_id_value = models.BigIntegerField(null=True, blank=True)
    tenant_slug = models.CharField(max_length=40, blank=True, default="", db_index=True)
    tenant_schema = models.CharField(max_length=63, blank=True, default="")

    class Meta:
        indexes = [
            models.Index(fields=["-occurred_at", "-id"], name="platform_audit_keyset")
        ]


class PlatformJob(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=60)
    status = models.CharField(max_length=12, default="queued")
    tenant_id_value = models.BigIntegerField(null=True, blank=True)
    tenant_slug = models.CharField(max_length=40, blank=True, default="")
    message = models.CharField(max_length=500, blank=True, default="")
    checkpoint = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.kind} {self.status}"


class SftpAccount(models.Model):
    """The SFTP username (the tenant's slug) → tenant lookup (edi.md EDI-C3).

    The keys themselves live in the tenant's schema (`edi.SftpKey`); this
    row exists while the tenant has at least one key.
    """

    tenant = models.OneToOneField(
        Tenant, on_delete=models.CASCADE, related_name="sftp_account"
    )
    username = models.CharField(max_length=40, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.username


class SftpAuthEvent(models.Model):
    """SFTP authentication outcomes, the counters every sftpd process shares.

    Failures drive the per-IP ban and the per-username block; successes
    exempt the IPs that logged in as a username in the last 30 days.
    Old rows are deleted daily.
    """

    username = models.CharField(max_length=100)
    ip = models.GenericIPAddressField()
    succeeded = models.BooleanField()
    occurred_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        indexes = [
            models.Index(fields=["ip", "occurred_at"], name="sftp_auth_ip"),
            models.Index(fields=["username", "occurred_at"], name="sftp_auth_user"),
        ]

    def __str__(self) -> str:
        outcome = "ok" if self.succeeded else "failed"
        return f"{self.username}@{self.ip} {outcome}"
