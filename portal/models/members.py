"""Members, groups and the seat pool (PORTAL-06..09, edi.md §2)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q, Value
from django.db.models.functions import Concat, Lower

from portal.roles import Role


class MemberStatus(models.TextChoices):
    INVITED = "invited", "Invited"
    ACTIVE = "active", "Active"
    DEACTIVATED = "deactivated", "Deactivated"


class MemberSource(models.TextChoices):
    MANUAL = "manual", "Added by an admin"
    EDI = "edi", "Employee data file"
    SSO = "sso", "SSO (just in time)"
    PROVISION = "provision", "Provisioning"
    API = "api", "API"


class MemberGroup(models.Model):
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(Lower("name"), name="portal_group_name_lower_uniq")
        ]
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Member(models.Model):
    """A person of the tenant. Deactivation keeps the row.

    `user` is set once the person has credentials (a password or a SAML
    login); 100,000 imported employees need no auth rows.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="member",
    )
    email = models.EmailField(max_length=254)
    employee_id = models.CharField(max_length=128, blank=True, default="")
    first_name = models.CharField(max_length=150, blank=True, default="")
    last_name = models.CharField(max_length=150, blank=True, default="")
    job_title = models.CharField(max_length=200, blank=True, default="")
    department = models.CharField(max_length=200, blank=True, default="")
    location = models.CharField(max_length=200, blank=True, default="")
    manager = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="reports"
    )
    status = models.CharField(
        max_length=12, choices=MemberStatus.choices, default=MemberStatus.INVITED
    )
    has_seat = models.BooleanField(default=False)
    seat_granted_at = models.DateTimeField(null=True, blank=True)
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.MEMBER)
    source = models.CharField(
        max_length=12, choices=MemberSource.choices, default=MemberSource.MANUAL
    )
    managed_by_edi = models.BooleanField(default=True)
    groups = models.ManyToManyField(MemberGroup, blank=True, related_name="members")
    last_sign_in_at = models.DateTimeField(null=True, blank=True)
    deactivated_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    search_text = models.GeneratedField(
        expression=Lower(
            Concat(
                "email",
                Value(" "),
                "first_name",
                Value(" "),
                "last_name",
                Value(" "),
                "employee_id",
                output_field=models.TextField(),
            )
        ),
        output_field=models.TextField(),
        db_persist=True,
    )

    class Meta:
        # The pg_trgm GIN index on search_text is created by migration 0002
        # where the server has the extension (the embedded dev server does
        # not ship it).
        constraints = [
            models.UniqueConstraint(
                Lower("email"), name="portal_member_email_lower_uniq"
            ),
            models.UniqueConstraint(
                fields=["employee_id"],
                condition=~Q(employee_id=""),
                name="portal_member_employee_id_uniq",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "-id"], name="portal_member_status"),
            models.Index(fields=["role", "-id"], name="portal_member_role"),
            models.Index(fields=["department"], name="portal_member_department"),
            models.Index(fields=["location"], name="portal_member_location"),
            models.Index(
                fields=["has_seat"],
                condition=Q(has_seat=True),
                name="portal_member_seated",
            ),
        ]

    def __str__(self) -> str:
        return self.email

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()

    @property
    def display_name(self) -> str:
        return self.name or self.email

    @property
    def is_active_member(self) -> bool:
        return self.status == MemberStatus.ACTIVE


class SeatPool(models.Model):
    """The tenant's one seat-pool row: every grant locks it (PORTAL-08)."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    limit = models.PositiveIntegerField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(id=1), name="portal_seatpool_single")
        ]

    def __str__(self) -> str:
        if self.limit is None:
            return "seats (no limit)"
        return f"seats (limit {self.limit})"


class SeatSnapshot(models.Model):
    day = models.DateField(unique=True)
    used = models.PositiveIntegerField()
    limit = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["day"]

    def __str__(self) -> str:
        return f"{self.day}: {self.used}"
