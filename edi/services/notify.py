"""Email about a finished, rejected, failed or held EDI file (EDI-P12).

The pipeline calls `edi_file_notify` inside the transaction that sets the
file's status, so the outbox rows commit (or roll back) with it. Each
recipient gets one email per file and status: the outbox's dedupe key is
`edi:<file id>:<status>:<email>`, so a rerun after a crash, or a file held
again at apply, sends nothing new.

The email says what happened to the file and links to its page; it never
carries employee data (no emails, names or ids from the rows, and no error
samples, which quote rows). File-level error codes are fixed identifiers
such as `DUPLICATE_KEY` and are included.
"""

from __future__ import annotations

import re
from typing import Any

from django.db.models import Q

from edi.models import EdiFile, EdiStatus
from portal.db import current_schema
from portal.models import Member, MemberStatus
from portal.roles import Role
from portal.services.outbox import outbox_email_queue
from portal.services.registry import audit_exempt

# The statuses that mail; `validated` is an admin looking at a preview.
NOTIFY_STATUSES = frozenset(
    {EdiStatus.COMPLETED, EdiStatus.REJECTED, EdiStatus.FAILED, EdiStatus.HELD}
)
_HEADLINES = {
    EdiStatus.COMPLETED: "was applied",
    EdiStatus.REJECTED: "was rejected: nothing was changed",
    EdiStatus.FAILED: "failed after several attempts: nothing was changed",
    EdiStatus.HELD: "is waiting for an admin's approval",
}
_SUBJECTS = {
    EdiStatus.COMPLETED: "applied",
    EdiStatus.REJECTED: "rejected",
    EdiStatus.FAILED: "failed",
    EdiStatus.HELD: "held for approval",
}
_COUNTS = (
    ("rows", "Rows"),
    ("created", "Created"),
    ("updated", "Updated"),
    ("deactivated", "Deactivated"),
    ("unchanged", "Unchanged"),
    ("row_errors", "Row errors"),
    ("seats_granted", "Seats granted"),
    ("seats_revoked", "Seats revoked"),
    ("warnings", "Warnings"),
)
_ERROR_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


@audit_exempt("queues email only; the pipeline audits the status change")
def edi_file_notify(*, edi_file: EdiFile) -> None:
    """Queue the status email for this file in the caller's transaction.

    For `completed`, `rejected`, `failed` and `held` only: one email to
    each active owner and admin with an email address, and to the uploader
    when active (each address once). Idempotent per file and status.
    Runs in the file's tenant schema.
    """
    if edi_file.status not in NOTIFY_STATUSES:
        return
    recipients = edi_file_notify_recipients(edi_file=edi_file)
    if not recipients:
        return
    status = EdiStatus(edi_file.status)
    name = _CONTROL.sub(" ", edi_file.original_name).strip() or "(no name)"
    outbox_email_queue(
        dedupe_key=f"edi:{edi_file.pk}:{status}",
        recipients=recipients,
        subject=f"Employee data file {_SUBJECTS[status]}: {name[:80]}",
        body=_body(edi_file, name),
    )


@audit_exempt("read")
def edi_file_notify_recipients(*, edi_file: EdiFile) -> list[str]:
    """Active owners and admins, then the uploader; each address once."""
    wanted = Q(role__in=(Role.OWNER, Role.ADMIN))
    if edi_file.uploaded_by_id is not None:
        wanted |= Q(pk=edi_file.uploaded_by_id)
    emails = (
        Member.objects.filter(wanted, status=MemberStatus.ACTIVE)
        .exclude(email="")
        .order_by("pk")
        .values_list("email", flat=True)
    )
    unique: dict[str, str] = {}
    for email in emails:
        unique.setdefault(email.lower(), email)
    return list(unique.values())


def _body(edi_file: EdiFile, name: str) -> str:
    status = EdiStatus(edi_file.status)
    lines = [
        f'The employee data file "{name}" {_HEADLINES[status]}.',
        "",
        f"Status:    {status.label}",
        f"File:      {name}",
        f"Source:    {edi_file.get_source_display()}",
        f"Mode:      {edi_file.get_mode_display()}",
        f"Received:  {edi_file.received_at:%Y-%m-%d %H:%M} UTC",
        "",
    ]
    counts: dict[str, Any] = edi_file.counts or {}
    shown = [
        f"{label + ':':<15}{counts[key]:,}"
        for key, label in _COUNTS
        if isinstance(counts.get(key), int)
    ]
    lines += shown + ([""] if shown else [])
    if status == EdiStatus.HELD:
        lines += _held_lines(edi_file.preview or {})
    if status == EdiStatus.REJECTED:
        codes = sorted(
            {
                str(error.get("code"))
                for error in edi_file.errors or []
                if isinstance(error, dict)
                and _ERROR_CODE.fullmatch(str(error.get("code", "")))
            }
        )
        if codes:
            lines += ["Reasons:   " + ", ".join(codes), ""]
    lines += [
        "Details, and the per-row results where there are any:",
        f"{_origin()}/edi/files/{edi_file.pk}/",
        "",
        "For privacy this email names no employees: sign in to see the details.",
    ]
    return "\n".join(lines) + "\n"


def _held_lines(preview: dict[str, Any]) -> list[str]:
    counts = preview.get("counts") or {}

    def number(key: str) -> int:
        value = counts.get(key, 0)
        return value if isinstance(value, int) else 0

    return [
        "Applying it would:",
        f"  deactivate {number('deactivate'):,} of "
        f"{number('active_members'):,} active members",
        f"  revoke {number('revoke'):,} of {number('active_seats'):,} seats",
        f"  create {number('create'):,} members, and check "
        f"{number('update'):,} existing ones for changes",
        "An admin can approve or cancel it on the file's page.",
        "",
    ]


def _origin() -> str:
    from tenants.models import Tenant
    from tenants.services import tenant_origin

    # From the schema, not `connection.tenant`: the canonical origin of
    # the tenant whose rows these are (DESIGN.md: never request headers).
    return tenant_origin(Tenant.objects.get(schema_name=current_schema()))
