"""Tenant-schema models of the SAML service provider (specs/sso.md).

One `IdentityProvider` row per tenant holds the IdP's addresses and every
policy; its certificates, the group → role mappings, the SP's own keys,
the links between members and IdP identities, and the short-lived rows that
make the ACS safe (pending requests, replay entries, finish tickets) sit in
their own tables. Nothing here points at a public-schema table.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q

from portal.roles import Role


class Binding(models.TextChoices):
    REDIRECT = "redirect", "HTTP-Redirect"
    POST = "post", "HTTP-POST"


class NameIdFormat(models.TextChoices):
    UNSPECIFIED = "unspecified", "Unspecified (the IdP chooses)"
    EMAIL = "email", "Email address"
    PERSISTENT = "persistent", "Persistent (opaque, stable)"


NAME_ID_FORMAT_URIS = {
    NameIdFormat.UNSPECIFIED: "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified",
    NameIdFormat.EMAIL: "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress",
    NameIdFormat.PERSISTENT: "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent",
}


class Preset(models.TextChoices):
    ENTRA = "entra", "Microsoft Entra ID"
    OKTA = "okta", "Okta"
    GOOGLE = "google", "Google Workspace"
    ADFS = "adfs", "ADFS"
    CUSTOM = "custom", "Custom"


class GroupMatch(models.TextChoices):
    EXACT = "exact", "Exact"
    IEXACT = "iexact", "Ignoring case"


class IdentityProvider(models.Model):
    """The tenant's identity provider and its SSO policies (one row)."""

    singleton = models.BooleanField(default=True, unique=True, editable=False)
    entity_id = models.CharField(max_length=1024)
    sso_url = models.URLField(max_length=2048)
    sso_binding = models.CharField(
        max_length=8, choices=Binding.choices, default=Binding.REDIRECT
    )
    slo_url = models.URLField(max_length=2048, blank=True, default="")
    slo_binding = models.CharField(
        max_length=8, choices=Binding.choices, default=Binding.REDIRECT
    )
    metadata_url = models.URLField(max_length=2048, blank=True, default="")
    metadata_fetched_at = models.DateTimeField(null=True, blank=True)
    metadata_refresh_error = models.CharField(max_length=500, blank=True, default="")
    metadata_refresh_diff = models.JSONField(default=dict, blank=True)

    name_id_format = models.CharField(
        max_length=12, choices=NameIdFormat.choices, default=NameIdFormat.UNSPECIFIED
    )
    preset = models.CharField(max_length=8, choices=Preset.choices, default=Preset.OKTA)
    email_attribute = models.CharField(max_length=255, blank=True, default="email")
    first_name_attribute = models.CharField(
        max_length=255, blank=True, default="firstName"
    )
    last_name_attribute = models.CharField(
        max_length=255, blank=True, default="lastName"
    )
    groups_attribute = models.CharField(max_length=255, blank=True, default="groups")
    immutable_id_attribute = models.CharField(max_length=255, blank=True, default="")
    employee_id_attribute = models.CharField(max_length=255, blank=True, default="")
    group_match = models.CharField(
        max_length=8, choices=GroupMatch.choices, default=GroupMatch.EXACT
    )
    group_required = models.BooleanField(default=False)
    role_mapping_enabled = models.BooleanField(default=False)
    default_role = models.CharField(
        max_length=20, choices=Role.choices, default=Role.MEMBER
    )

    enforce_sso = models.BooleanField(default=False)
    allow_idp_initiated = models.BooleanField(default=False)
    landing_path = models.CharField(max_length=500, default="/")
    jit_enabled = models.BooleanField(default=False)
    allowed_email_domains = models.JSONField(default=list, blank=True)
    sign_authn_requests = models.BooleanField(default=True)
    want_assertions_encrypted = models.BooleanField(default=False)
    signed_response_suffices = models.BooleanField(default=False)

    last_test_passed_at = models.DateTimeField(null=True, blank=True)
    version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.entity_id


class CertificateSource(models.TextChoices):
    METADATA = "metadata", "Metadata"
    REFRESH = "refresh", "Metadata refresh"
    MANUAL = "manual", "Entered by hand"


class IdpCertificate(models.Model):
    """One signing certificate the IdP may use; any of them verifies."""

    idp = models.ForeignKey(
        IdentityProvider, on_delete=models.CASCADE, related_name="certificates"
    )
    pem = models.TextField()
    fingerprint = models.CharField(max_length=64)  # SHA-256, lower-case hex
    subject = models.CharField(max_length=500, blank=True, default="")
    not_after = models.DateTimeField()
    source = models.CharField(max_length=8, choices=CertificateSource.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["idp", "fingerprint"], name="sso_idpcert_fingerprint_uniq"
            )
        ]

    def __str__(self) -> str:
        return self.fingerprint


class GroupRoleMapping(models.Model):
    """A group name or ID that gives a portal role (never owner)."""

    idp = models.ForeignKey(
        IdentityProvider, on_delete=models.CASCADE, related_name="group_mappings"
    )
    group = models.CharField(max_length=512)
    role = models.CharField(max_length=20, choices=Role.choices)

    class Meta:
        ordering = ["group"]
        constraints = [
            models.UniqueConstraint(fields=["idp", "group"], name="sso_group_uniq"),
            models.CheckConstraint(
                condition=~Q(role="owner"), name="sso_group_never_owner"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.group} → {self.role}"


class SpKeyState(models.TextChoices):
    ACTIVE = "active", "Active"
    NEXT = "next", "Prepared (published as next)"
    RETIRED = "retired", "Retired (decrypts for 30 days)"


class SpKey(models.Model):
    """The SP's own RSA key and self-signed certificate.

    The private key is stored encrypted under the tenant's keyring (purpose
    `sso`) and never leaves the server.
    """

    state = models.CharField(max_length=8, choices=SpKeyState.choices)
    private_key = models.BinaryField()
    certificate = models.TextField()
    fingerprint = models.CharField(max_length=64)
    not_after = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    activated_at = models.DateTimeField(null=True, blank=True)
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["state"],
                condition=~Q(state="retired"),
                name="sso_spkey_one_per_state",
            )
        ]

    def __str__(self) -> str:
        return f"{self.state} {self.fingerprint[:16]}"


class SsoLink(models.Model):
    """A member's identity at the IdP: (IdP entityID, NameID) or immutable ID."""

    member = models.OneToOneField(
        "portal.Member", on_delete=models.CASCADE, related_name="sso_link"
    )
    idp_entity_id = models.CharField(max_length=1024)
    name_id = models.CharField(max_length=1024)
    name_id_format = models.CharField(max_length=256, blank=True, default="")
    immutable_id = models.CharField(max_length=256, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["idp_entity_id", "name_id"], name="sso_link_nameid_uniq"
            ),
            models.UniqueConstraint(
                fields=["idp_entity_id", "immutable_id"],
                condition=~Q(immutable_id=""),
                name="sso_link_immutable_uniq",
            ),
        ]

    def __str__(self) -> str:
        return self.name_id


class PendingRequest(models.Model):
    """An AuthnRequest or LogoutRequest we sent, under a one-time token.

    The RelayState carries the random token; only its SHA-256 is stored.
    """

    class Kind(models.TextChoices):
        LOGIN = "login"
        TEST = "test"
        LOGOUT = "logout"

    token_hash = models.CharField(max_length=64, unique=True)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    request_id = models.CharField(max_length=128)
    next_path = models.CharField(max_length=2048, default="/")
    session_nonce = models.CharField(max_length=64, blank=True, default="")
    member_id = models.BigIntegerField(null=True, blank=True)  # test runs
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"{self.kind} {self.request_id}"


class ReplayEntry(models.Model):
    """A Response or Assertion ID already accepted; unique until it expires."""

    message_id = models.CharField(max_length=256, unique=True)
    expires_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return self.message_id


class FinishTicket(models.Model):
    """The verified outcome of an ACS POST, claimed once by the finish GET."""

    token_hash = models.CharField(max_length=64, unique=True)
    payload = models.BinaryField()  # JSON sealed under a key derived from the token
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return self.token_hash[:12]


class TestRun(models.Model):
    """The result of a "test connection" run, shown to its admin for 15 min."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    member_id = models.BigIntegerField()
    passed = models.BooleanField(default=False)
    reason = models.CharField(max_length=40, blank=True, default="")
    report = models.BinaryField()  # keyring-encrypted JSON
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return str(self.id)


class SsoSession(models.Model):
    """Which Django session belongs to which IdP session (for SLO)."""

    session_key = models.CharField(max_length=40, unique=True)
    member = models.ForeignKey(
        "portal.Member", on_delete=models.CASCADE, related_name="sso_sessions"
    )
    idp_entity_id = models.CharField(max_length=1024)
    name_id = models.CharField(max_length=1024)
    name_id_format = models.CharField(max_length=256, blank=True, default="")
    name_qualifier = models.CharField(max_length=1024, blank=True, default="")
    sp_name_qualifier = models.CharField(max_length=1024, blank=True, default="")
    session_index = models.CharField(max_length=256, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["name_id"], name="sso_session_nameid")]

    def __str__(self) -> str:
        return self.session_key[:8]


class CertificateWarning(models.Model):
    """A certificate expiry warning already sent (each is sent once)."""

    fingerprint = models.CharField(max_length=64)
    threshold = models.CharField(max_length=8)  # "30d", "7d", "0d"
    sent_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["fingerprint", "threshold"], name="sso_certwarn_uniq"
            )
        ]

    def __str__(self) -> str:
        return f"{self.fingerprint[:12]} {self.threshold}"
