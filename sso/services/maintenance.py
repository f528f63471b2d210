"""Scheduled SSO work: metadata refresh, certificate expiry, housekeeping.

Also the two hooks the portal core asks other apps for: the login policy
(enforce SSO, break-glass, SSO-F13) and the dashboard card.
"""

from __future__ import annotations

from datetime import UTC, timedelta
from typing import Any

from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from portal.models import Member, MemberStatus
from portal.roles import Role
from portal.services.audit import audit_event_record
from portal.services.registry import audit_exempt, audits
from sso.models import (
    CertificateSource,
    CertificateWarning,
    FinishTicket,
    IdentityProvider,
    PendingRequest,
    ReplayEntry,
    SpKey,
    SpKeyState,
    SsoSession,
    TestRun,
)
from sso.services.config import (
    fingerprint_display,
    idp_configure,
    idp_configure_from_metadata,
    idp_metadata_parse,
)
from sso.services.fetch import metadata_fetch
from sso.services.keys import RETIRED_KEEP

# Whole UTC days left until the expiry date: the daily run may come at any
# hour, and "on the day" means the expiry date itself, before the moment.
THRESHOLDS = (("30d", 30), ("7d", 7), ("0d", 0))


@audits("sso.idp.configured")
def idp_configure_from_url(*, url: str, actor: Member | None) -> IdentityProvider:
    """Fetch metadata under the SSRF rules and store it (the admin's action)."""
    data = metadata_fetch(url)
    return idp_configure_from_metadata(data=data, actor=actor, metadata_url=url.strip())


@audits("sso.metadata.refreshed", "sso.metadata.refresh_failed")
def idp_metadata_refresh() -> dict[str, Any]:
    """Daily: fetch the metadata URL again; add certificates, never remove.

    A certificate that disappeared from the metadata stays trusted and is
    listed in the diff for an admin to remove; the last one never goes.
    """
    idp = IdentityProvider.objects.first()
    if idp is None or not idp.metadata_url:
        return {"skipped": True}
    try:
        description = idp_metadata_parse(metadata_fetch(idp.metadata_url))
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, none raised
        IdentityProvider.objects.filter(pk=idp.pk).update(
            metadata_refresh_error=str(getattr(exc, "message", exc))[:500]
        )
        audit_event_record(
            action="sso.metadata.refresh_failed",
            target_label="IdP metadata",
            changes={"url": idp.metadata_url[:300], "error": str(exc)[:300]},
        )
        return {"error": str(exc)[:300]}
    known = set(idp.certificates.values_list("fingerprint", flat=True))
    offered = {c.fingerprint for c in description.certificates}
    diff = {
        "added": sorted(offered - known),
        "missing_from_metadata": sorted(known - offered),
        "checked_at": timezone.now().isoformat(),
    }
    if description.entity_id != idp.entity_id:
        diff["entity_id_changed"] = description.entity_id[:300]
        description = type(description)(
            entity_id=idp.entity_id,
            sso_url=idp.sso_url,
            sso_binding=idp.sso_binding,
            slo_url=idp.slo_url,
            slo_binding=idp.slo_binding,
            certificates=description.certificates,
        )
    with transaction.atomic():
        if diff["added"]:
            idp_configure(
                description=description,
                actor=None,
                source=CertificateSource.REFRESH,
                metadata_url=idp.metadata_url,
                replace_certificates=False,
            )
        IdentityProvider.objects.filter(pk=idp.pk).update(
            metadata_fetched_at=timezone.now(),
            metadata_refresh_error="",
            metadata_refresh_diff=diff,
        )
        audit_event_record(
            action="sso.metadata.refreshed", target_label="IdP metadata", changes=diff
        )
    return diff


def _admin_emails() -> list[str]:
    return list(
        Member.objects.filter(
            role__in=[Role.OWNER, Role.ADMIN], status=MemberStatus.ACTIVE
        ).values_list("email", flat=True)
    )


@audit_exempt("read: certificates with their expiry")
def certificates_expiring(
    *, within: timedelta = timedelta(days=30)
) -> list[dict[str, Any]]:
    """IdP and SP certificates that expire within `within` (dashboard banner)."""
    now = timezone.now()
    result: list[dict[str, Any]] = []
    idp = IdentityProvider.objects.first()
    if idp is not None:
        for cert in idp.certificates.filter(not_after__lte=now + within):
            result.append(
                {
                    "kind": "IdP",
                    "fingerprint": cert.fingerprint,
                    "not_after": cert.not_after,
                }
            )
    for key in SpKey.objects.filter(
        state__in=[SpKeyState.ACTIVE, SpKeyState.NEXT], not_after__lte=now + within
    ).defer("private_key"):
        result.append(
            {"kind": "SP", "fingerprint": key.fingerprint, "not_after": key.not_after}
        )
    return result


@audits("sso.certificate.expiring")
def certificate_expiry_warn() -> int:
    """Daily: warn at 30 and 7 days and on the day, each warning once.

    Expiry alone never blocks sign-in (SSO-F15): trust is in the key.
    """
    now = timezone.now()
    today = now.astimezone(UTC).date()
    sent = 0
    for cert in certificates_expiring(within=timedelta(days=31)):
        days_left = (cert["not_after"].astimezone(UTC).date() - today).days
        due = [label for label, days in THRESHOLDS if days_left <= days]
        if not due:
            continue
        label = due[-1]  # the most urgent threshold reached
        try:
            with transaction.atomic():
                CertificateWarning.objects.create(
                    fingerprint=cert["fingerprint"], threshold=label, sent_at=now
                )
                audit_event_record(
                    action="sso.certificate.expiring",
                    target_label=f"{cert['kind']} certificate",
                    changes={
                        "kind": cert["kind"],
                        "fingerprint": cert["fingerprint"],
                        "not_after": cert["not_after"].isoformat(),
                        "threshold": label,
                    },
                )
        except IntegrityError:
            continue
        sent += 1
        send_mail(
            subject=f"SSO: the {cert['kind']} certificate expires "
            f"{cert['not_after']:%Y-%m-%d}",
            message=(
                f"The {cert['kind']} certificate "
                f"{fingerprint_display(cert['fingerprint'])} "
                f"of your portal's single sign-on expires on "
                f"{cert['not_after']:%Y-%m-%d %H:%M} UTC. "
                + (
                    "Upload the IdP's new certificate (or fresh metadata) on the "
                    "SSO page."
                    if cert["kind"] == "IdP"
                    else "Prepare and activate a new SP key on the SSO page, and give "
                    "the new SP metadata to your identity provider."
                )
            ),
            from_email=None,
            recipient_list=_admin_emails(),
            fail_silently=True,
        )
    return sent


@audit_exempt("housekeeping: removes expired records only")
def sso_housekeeping() -> dict[str, int]:
    """Delete expired pending requests, replay entries, tickets, test runs.

    Also erases the private key of SP keys retired more than 30 days ago:
    they no longer decrypt anything (SSO-F4); the row stays as history.
    """
    now = timezone.now()
    counts: dict[str, int] = {}
    for name, model in (
        ("pending", PendingRequest),
        ("replay", ReplayEntry),
        ("tickets", FinishTicket),
        ("tests", TestRun),
        ("sessions", SsoSession),
    ):
        counts[name], _ = model.objects.filter(expires_at__lt=now).delete()  # type: ignore[attr-defined]
    counts["retired_keys"] = (
        SpKey.objects.filter(
            state=SpKeyState.RETIRED, retired_at__lt=now - RETIRED_KEEP
        )
        .exclude(private_key=b"")
        .update(private_key=b"")
    )
    return counts


# --- hooks for the portal core ----------------------------------------------


@audit_exempt("read: a login policy")
def sso_login_policy(member: Member, method: str) -> str | None:
    """Enforce SSO: password sign-in refused for non-owners (SSO-F13)."""
    if method != "password":
        return None
    idp = IdentityProvider.objects.only("enforce_sso").first()
    if idp is None or not idp.enforce_sso or member.role == Role.OWNER:
        return None
    return (
        "This portal uses single sign-on. Use “Sign in with SSO” instead of a password."
    )


@audits("sso.break_glass.used")
def sso_break_glass_check(*, member: Member) -> bool:
    """An owner's password sign-in while SSO is enforced: audited, owners emailed."""
    idp = IdentityProvider.objects.only("enforce_sso").first()
    if idp is None or not idp.enforce_sso or member.role != Role.OWNER:
        return False
    audit_event_record(
        action="sso.break_glass.used",
        target=member,
        actor=member,
        changes={"method": "password"},
    )
    owners = list(
        Member.objects.filter(role=Role.OWNER, status=MemberStatus.ACTIVE).values_list(
            "email", flat=True
        )
    )
    send_mail(
        subject="Break-glass sign-in to your portal",
        message=(
            f"{member.email} signed in with a password while single sign-on is "
            f"enforced, at {timezone.now():%Y-%m-%d %H:%M} UTC. If this was not "
            "expected, review the audit log."
        ),
        from_email=None,
        recipient_list=owners,
        fail_silently=True,
    )
    return True
