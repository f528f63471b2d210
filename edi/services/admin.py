"""What tenant admins do to EDI from the `/edi/` page (edi.md EDI-C1, P8, P9).

Deciding about a file (apply a previewed or held file, cancel it, apply a
duplicate anyway), the tenant's EDI settings and auto-provisioning rules,
and downloading a raw file. Every function runs in the current tenant's
schema and writes its audit event in the same transaction as its change.
Tokens and SFTP keys have their own services (`edi.services.tokens`,
`edi.services.sftp`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from edi.models import AutoProvisionRule, EdiFile, EdiMode, EdiSettings, EdiStatus
from edi.services.receive import (
    KEY_PURPOSE,
    edi_import_job_create,
    edi_settings_get,
    raw_blob_path,
)
from portal.errors import ApplicationError, Conflict, NotFound
from portal.models import Member
from portal.services.audit import audit_event_record
from portal.services.keyring import keyring_file_open
from portal.services.registry import audits

# Sane ranges of the settings (inclusive). A threshold of 0 % holds every
# file that deactivates anyone; 100 % never holds.
THRESHOLD_RANGE = (0, 100)
INVALID_ROWS_RANGE = (0, 100)
RETENTION_RANGE = (1, 3650)
RULE_VALUE_MAX = 200
DECIDABLE = (EdiStatus.VALIDATED, EdiStatus.HELD)


def _locked_file(edi_file_id: uuid.UUID | str) -> EdiFile:
    """The file, row-locked until the caller's transaction ends.

    The lock makes a second click wait for the first, then see the status
    the first left behind.
    """
    try:
        pk = uuid.UUID(str(edi_file_id))
    except ValueError:
        raise NotFound("EDI file not found.") from None
    edi_file = EdiFile.objects.select_for_update().filter(pk=pk).first()
    if edi_file is None:
        raise NotFound("EDI file not found.")
    return edi_file


def _not_now(edi_file: EdiFile, wanted: str) -> Conflict:
    return Conflict(
        f"This file is {edi_file.get_status_display().lower()}: only {wanted}.",
        code="edi_file_state",
        details={"status": edi_file.status},
    )


@audits("edi.file.approved")
@transaction.atomic
def edi_file_apply(*, edi_file_id: uuid.UUID | str, by: Member) -> EdiFile:
    """Apply a validated (previewed) or held file: an admin's approval.

    Turns a dry run into a real run, records who approved and when, puts
    the file back to `received` and queues a new import job with
    `approved` (sent on commit), which applies it past the
    mass-deactivation hold; the pipeline still re-holds it if the numbers
    grew since the preview (EDI-P8). The row lock and the status check
    make a double click start one run: the second gets `Conflict` (409,
    `edi_file_state`). Raises `NotFound` for an unknown id.
    """
    edi_file = _locked_file(edi_file_id)
    if edi_file.status not in DECIDABLE:
        raise _not_now(edi_file, "a previewed or held file can be applied")
    was = {"status": edi_file.status, "dry_run": edi_file.dry_run}
    edi_file.status = EdiStatus.RECEIVED
    edi_file.dry_run = False
    edi_file.approved_by = by
    edi_file.approved_at = timezone.now()
    edi_file.finished_at = None
    edi_file.job = edi_import_job_create(edi_file=edi_file, actor=by, approved=True)
    edi_file.save(
        update_fields=[
            "status",
            "dry_run",
            "approved_by",
            "approved_at",
            "finished_at",
            "job",
        ]
    )
    audit_event_record(
        action="edi.file.approved",
        target=edi_file,
        actor=by,
        changes={"was": was, "hold_reasons": edi_file.preview.get("hold_reasons", [])},
    )
    return edi_file


@audits("edi.file.cancelled")
@transaction.atomic
def edi_file_cancel(*, edi_file_id: uuid.UUID | str, by: Member) -> EdiFile:
    """Discard a validated (previewed) or held file: nothing is applied.

    The file ends `cancelled`; its row, counts, preview and raw file stay
    (until retention). Raises `Conflict` (409, `edi_file_state`) in any
    other status, so a cancel can never race an apply that has started.
    """
    edi_file = _locked_file(edi_file_id)
    if edi_file.status not in DECIDABLE:
        raise _not_now(edi_file, "a previewed or held file can be discarded")
    was = edi_file.status
    edi_file.status = EdiStatus.CANCELLED
    edi_file.finished_at = timezone.now()
    edi_file.save(update_fields=["status", "finished_at"])
    audit_event_record(
        action="edi.file.cancelled",
        target=edi_file,
        actor=by,
        changes={"was": was},
    )
    return edi_file


@audits("edi.file.duplicate_overridden")
@transaction.atomic
def edi_file_apply_anyway(*, edi_file_id: uuid.UUID | str, by: Member) -> EdiFile:
    """Import a `duplicate` file after all (EDI-P9's "apply anyway").

    Skips only the duplicate check: the file goes back to `received` with
    a new import job (sent on commit) and runs through validation and the
    mass-deactivation hold like any file. `duplicate_of` stays, for the
    record; `approved_by` names the admin. Raises `Conflict` (409,
    `edi_file_state`) unless the file is a duplicate, so a double click
    starts one run.
    """
    edi_file = _locked_file(edi_file_id)
    if edi_file.status != EdiStatus.DUPLICATE:
        raise _not_now(edi_file, "a duplicate can be applied anyway")
    edi_file.status = EdiStatus.RECEIVED
    edi_file.approved_by = by
    edi_file.approved_at = timezone.now()
    edi_file.finished_at = None
    edi_file.job = edi_import_job_create(edi_file=edi_file, actor=by)
    edi_file.save(
        update_fields=["status", "approved_by", "approved_at", "finished_at", "job"]
    )
    audit_event_record(
        action="edi.file.duplicate_overridden",
        target=edi_file,
        actor=by,
        changes={
            "duplicate_of": str(edi_file.duplicate_of_id or ""),
            "sha256": edi_file.sha256,
        },
    )
    return edi_file


def _in_range(
    errors: dict[str, list[str]], name: str, value: int, bounds: tuple[int, int]
) -> None:
    low, high = bounds
    if not low <= value <= high:
        errors.setdefault(name, []).append(f"Enter a number from {low} to {high}.")


@audits("edi.settings.updated")
@transaction.atomic
def edi_settings_update(
    *,
    by: Member,
    default_mode: str,
    deactivation_threshold_percent: int,
    invalid_rows_percent: int,
    retention_days: int,
) -> EdiSettings:
    """Change the tenant's EDI settings; returns the settings row.

    Raises `ApplicationError` (400, `invalid`) with per-field messages in
    `details` for a value out of range (thresholds 0–100 %, retention
    1–3650 days) or an unknown mode. Records `edi.settings.updated` with
    the fields that changed, and nothing when none did.
    """
    errors: dict[str, list[str]] = {}
    if default_mode not in EdiMode.values:
        errors["default_mode"] = ["Choose full or delta."]
    _in_range(
        errors,
        "deactivation_threshold_percent",
        deactivation_threshold_percent,
        THRESHOLD_RANGE,
    )
    _in_range(errors, "invalid_rows_percent", invalid_rows_percent, INVALID_ROWS_RANGE)
    _in_range(errors, "retention_days", retention_days, RETENTION_RANGE)
    if errors:
        raise ApplicationError("Check the settings.", details=errors)
    edi_settings_get()  # creates the row with its defaults on first use
    row = EdiSettings.objects.select_for_update().get(id=1)
    wanted: dict[str, Any] = {
        "default_mode": default_mode,
        "deactivation_threshold_percent": deactivation_threshold_percent,
        "invalid_rows_percent": invalid_rows_percent,
        "retention_days": retention_days,
    }
    changes = {
        name: {"from": getattr(row, name), "to": value}
        for name, value in wanted.items()
        if getattr(row, name) != value
    }
    if not changes:
        return row
    for name, value in wanted.items():
        setattr(row, name, value)
    row.full_clean()
    row.save(update_fields=[*wanted, "updated_at"])
    audit_event_record(
        action="edi.settings.updated", target=row, actor=by, changes=changes
    )
    return row


@audits("edi.rule.added")
def auto_provision_rule_add(*, field: str, value: str, by: Member) -> AutoProvisionRule:
    """Add a rule granting a seat to blank-`seat` rows that match (edi.md §2).

    `field` is `department` or `group`; `value` is trimmed and compared
    without case. Raises `ApplicationError` (400) for an unknown field or a
    blank or over-long value, `Conflict` (409, `edi_rule_exists`) when the
    same rule exists (in any case).
    """
    value = (value or "").strip()
    if field not in AutoProvisionRule.Field.values:
        raise ApplicationError(
            "Choose department or group.", details={"field": ["Unknown field."]}
        )
    if not value:
        raise ApplicationError(
            "Enter the department or group name.",
            details={"value": ["This field is required."]},
        )
    if len(value) > RULE_VALUE_MAX:
        raise ApplicationError(
            f"The name is longer than {RULE_VALUE_MAX} characters.",
            details={"value": [f"At most {RULE_VALUE_MAX} characters."]},
        )
    exists = Conflict(
        "This rule exists already.",
        code="edi_rule_exists",
        details={"value": ["This rule exists already."]},
    )
    if AutoProvisionRule.objects.filter(field=field, value__iexact=value).exists():
        raise exists
    try:
        with transaction.atomic():
            rule = AutoProvisionRule(field=field, value=value)
            rule.save()
            audit_event_record(
                action="edi.rule.added",
                target=rule,
                actor=by,
                changes={"field": field, "value": value},
            )
    except IntegrityError:  # the same rule, added a moment ago
        raise exists from None
    return rule


@audits("edi.rule.removed")
@transaction.atomic
def auto_provision_rule_remove(*, rule_id: int, by: Member) -> None:
    """Remove a rule; seats it granted stay. `NotFound` if it is gone."""
    rule = AutoProvisionRule.objects.select_for_update().filter(pk=rule_id).first()
    if rule is None:
        raise NotFound("This rule does not exist (any more).")
    audit_event_record(
        action="edi.rule.removed",
        target=rule,
        actor=by,
        changes={"field": rule.field, "value": rule.value},
    )
    rule.delete()


@audits("edi.file.raw_downloaded")
def edi_file_raw_open(*, edi_file: EdiFile, by: Member) -> Iterator[bytes]:
    """The raw file as received, decrypted (EDI-P10); the download is audited.

    Records `edi.file.raw_downloaded` before the first byte. Raises
    `ApplicationError` (410, `purged`) when retention removed the blob.
    """
    path = raw_blob_path(edi_file)
    if edi_file.purged_at is not None or not edi_file.blob_name or not path.is_file():
        raise ApplicationError(
            "The raw file was deleted after the retention period.",
            code="purged",
            status=410,
        )
    audit_event_record(
        action="edi.file.raw_downloaded",
        target=edi_file,
        actor=by,
        changes={"sha256": edi_file.sha256, "size": edi_file.size},
    )
    return keyring_file_open(purpose=KEY_PURPOSE, file_id=str(edi_file.pk), path=path)
