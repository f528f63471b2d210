"""EDI reads behind the `/edi/` pages: files, progress, preview, settings.

Everything here reads the current tenant's schema only; nothing writes
(the settings row is created with its defaults on first read, as
`edi_settings_get` does for every channel).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db.models import F, Q, QuerySet
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import number_format

from edi.models import (
    FINAL_STATUSES,
    AutoProvisionRule,
    EdiFile,
    EdiMode,
    EdiSettings,
    EdiStatus,
    EdiToken,
    SftpKey,
)
from edi.services.pipeline import MESSAGES, ROW_ERRORS
from edi.services.receive import edi_settings_get, media_dir
from edi.services.sftp import HostKey, sftp_host_key_fingerprints
from portal.errors import ApplicationError, NotFound
from portal.models import JobStatus
from portal.selectors.pagination import Page, decode_cursor, encode_cursor

PAGE_SIZE = 25
DEFAULT_SFTP_PORT = 2222
# Where the progress poller stops: the file page then shows the outcome.
SETTLED_STATUSES = frozenset(FINAL_STATUSES | {EdiStatus.VALIDATED, EdiStatus.HELD})
# The phases the pipeline writes as its job's message (EDI-P13).
PHASES = {
    "queued": "Waiting for a worker",
    "starting": "Starting",
    "parsing": "Reading the file",
    "validating": "Checking the rows",
    "applying": "Applying the changes",
    "writing results": "Writing the results",
}
# File-level codes beyond the row codes of the pipeline's MESSAGES.
FILE_CODE_HINTS = {
    "ENCODING_NOT_UTF8": "In Excel: File › Save As › “CSV UTF-8 (comma delimited)”.",
    "FILE_NOT_TEXT": "Send the CSV itself, not a spreadsheet, archive or PDF.",
    "DELIMITER_UNKNOWN": "Separate the cells with commas or semicolons.",
    "HEADER_MISSING_EMAIL": "The first row must name the columns, one of them email.",
    "DUPLICATE_KEY": "Each employee_id and each email may appear on one row only.",
    "FIELD_LINE_BREAK": "Usually a quote that is opened and never closed.",
    "TOO_MANY_INVALID_ROWS": "Fix the rows listed in the results, or raise the "
    "limit in the settings.",
}


# --------------------------------------------------------------------- files


def edi_file_get(*, file_id: str | uuid.UUID) -> EdiFile:
    """The current tenant's file; `NotFound` if missing, malformed or foreign.

    Missing and foreign ids get the same answer (STYLE.md).
    """
    try:
        pk = uuid.UUID(str(file_id))
    except ValueError:
        raise NotFound("EDI file not found.") from None
    edi_file = (
        EdiFile.objects.select_related(
            "job", "uploaded_by", "token", "sftp_key", "approved_by", "duplicate_of"
        )
        .filter(pk=pk)
        .first()
    )
    if edi_file is None:
        raise NotFound("EDI file not found.")
    return edi_file


class InvalidCursor(ValueError):
    """A paging cursor that this selector did not write."""


def edi_file_page(
    *, cursor: str | None, page_size: int = PAGE_SIZE, strict: bool = False
) -> Page[EdiFile]:
    """One page of the files of every channel, newest first (keyset paged).

    A malformed cursor counts as none (the first page), or with `strict`
    (the API) raises `InvalidCursor`.
    """
    files: QuerySet[EdiFile] = EdiFile.objects.select_related(
        "uploaded_by", "token", "sftp_key"
    ).order_by("-received_at", "-id")
    if cursor:
        after = _after(cursor)
        if after is not None:
            files = files.filter(after)
        elif strict:
            raise InvalidCursor(cursor)
    rows = list(files[: page_size + 1])
    next_cursor = None
    if len(rows) > page_size:
        last = rows[page_size - 1]
        next_cursor = encode_cursor([last.received_at.isoformat(), str(last.pk)])
    return Page(items=rows[:page_size], next_cursor=next_cursor)


def _after(cursor: str) -> Q | None:
    values = decode_cursor(cursor)
    if values is None or len(values) != 2:
        return None
    try:
        received_at = datetime.fromisoformat(str(values[0]))
        pk = uuid.UUID(str(values[1]))
    except ValueError:
        return None
    if received_at.tzinfo is None:
        return None
    return Q(received_at__lt=received_at) | Q(received_at=received_at, id__lt=pk)


@dataclasses.dataclass(frozen=True)
class FileRow:
    """One line of the history: the file and what the list shows of it."""

    file: EdiFile
    source_label: str
    counts: dict[str, str]  # formatted; "—" when not known
    results_available: bool
    raw_available: bool


LIST_COUNTS = ("rows", "created", "updated", "deactivated", "row_errors")


def edi_file_rows(*, files: Sequence[EdiFile]) -> list[FileRow]:
    """History rows; a count the file does not have (yet) is None."""
    rows = []
    for edi_file in files:
        stored = edi_file.counts or {}
        counts = {
            key: grouped(value) if isinstance(value := stored.get(key), int) else "—"
            for key in LIST_COUNTS
        }
        kept = edi_file.purged_at is None
        rows.append(
            FileRow(
                file=edi_file,
                source_label=edi_file_source_label(edi_file),
                counts=counts,
                results_available=kept and bool(edi_file.results_name),
                raw_available=kept and bool(edi_file.blob_name),
            )
        )
    return rows


def edi_file_source_label(edi_file: EdiFile) -> str:
    """Who or what sent the file: the member, the token or the SFTP key."""
    if edi_file.uploaded_by is not None:
        return edi_file.uploaded_by.email
    if edi_file.token is not None:
        return f"token “{edi_file.token.name}”"
    if edi_file.sftp_key is not None:
        return f"key “{edi_file.sftp_key.name}”"
    return ""


def edi_file_progress(*, edi_file: EdiFile) -> dict[str, Any]:
    """The poller's view of a file: status, phase and percent (EDI-P13).

    `settled` is true once the file waits for an admin or is final, or
    when its job gave up (the file page then says so).
    """
    job = edi_file.job
    settled = edi_file.status in SETTLED_STATUSES
    phase_key = "queued"
    percent = 0
    if settled:
        percent = 100
    elif job is not None and job.status == JobStatus.FAILED:
        settled = True
        phase_key = "failed"
    elif job is not None and job.status == JobStatus.RUNNING:
        phase_key = job.message if job.message in PHASES else "starting"
        percent = job.percent or 0
    phase = (
        edi_file.get_status_display()
        if edi_file.status in SETTLED_STATUSES
        else "Stopped after repeated failures"
        if phase_key == "failed"
        else PHASES[phase_key]
    )
    return {
        "id": str(edi_file.pk),
        "status": edi_file.status,
        "status_label": edi_file.get_status_display(),
        "settled": settled,
        "phase": phase_key if not settled else edi_file.status,
        "phase_label": phase,
        "percent": percent,
        "url": reverse("edi:file-detail", kwargs={"file_id": str(edi_file.pk)}),
    }


def _job_gave_up(edi_file: EdiFile) -> bool:
    job = edi_file.job
    return (
        edi_file.status not in SETTLED_STATUSES
        and job is not None
        and job.status == JobStatus.FAILED
    )


def grouped(value: int) -> str:
    """10000 as "10,000" (the locale's grouping)."""
    return number_format(value, force_grouping=True)


@dataclasses.dataclass(frozen=True)
class Count:
    key: str
    label: str
    value: int | None
    tone: str = ""  # "", "good", "warn" or "bad": how the number reads

    @property
    def display(self) -> str:
        return "—" if self.value is None else grouped(self.value)


@dataclasses.dataclass(frozen=True)
class SampleSection:
    key: str
    title: str
    total: int
    rows: list[dict[str, Any]]
    with_line: bool = True
    empty: str = ""
    open: bool = False

    @property
    def total_display(self) -> str:
        return grouped(self.total)


@dataclasses.dataclass(frozen=True)
class FileProblem:
    code: str
    message: str
    line: int | None
    hint: str
    facts: list[tuple[str, str]]
    duplicates: list[dict[str, Any]]


def _codes(codes: list[str] | None) -> list[dict[str, str]]:
    return [
        {
            "code": code,
            "message": MESSAGES.get(code, ""),
            "kind": "error" if code in ROW_ERRORS else "warning",
        }
        for code in codes or []
    ]


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(_text(item) for item in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_text(v)}" for k, v in value.items())
    return str(value)


def _problem(error: dict[str, Any]) -> FileProblem:
    raw = error.get("details")
    details: dict[str, Any] = raw if isinstance(raw, dict) else {}
    duplicates = details.get("duplicates")
    facts = [
        (str(key).replace("_", " ").capitalize(), _text(value))
        for key, value in details.items()
        if key != "duplicates"
    ]
    line = error.get("line")
    code = str(error.get("code", ""))
    return FileProblem(
        code=code,
        message=str(error.get("message", "")),
        line=line if isinstance(line, int) else None,
        hint=FILE_CODE_HINTS.get(code, ""),
        facts=facts,
        duplicates=[
            {"value": d.get("value", ""), "lines": _text(d.get("lines", []))}
            for d in duplicates
            if isinstance(d, dict)
        ]
        if isinstance(duplicates, list)
        else [],
    )


def _result_counts(counts: dict[str, Any]) -> list[Count]:
    def n(key: str) -> int | None:
        value = counts.get(key)
        return value if isinstance(value, int) else None

    items = [
        Count("rows", "Rows", n("rows")),
        Count("created", "Created", n("created"), "good"),
        Count("updated", "Updated", n("updated"), "good"),
        Count("unchanged", "Unchanged", n("unchanged")),
        Count("deactivated", "Deactivated", n("deactivated"), "warn"),
        Count("row_errors", "Row errors", n("row_errors"), "bad"),
        Count("seats_granted", "Seats granted", n("seats_granted")),
        Count("seats_revoked", "Seats revoked", n("seats_revoked")),
        Count("warnings", "Warnings", n("warnings")),
    ]
    return [c for c in items if c.value is not None]


def _preview_counts(preview_counts: dict[str, Any], mode: str) -> list[Count]:
    def n(key: str) -> int:
        value = preview_counts.get(key)
        return value if isinstance(value, int) else 0

    items = [
        Count("rows", "Rows", n("rows")),
        Count("create", "New members", n("create"), "good"),
        Count("update", "Existing members", n("update")),
        Count("row_errors", "Rows with errors", n("row_errors"), "bad"),
    ]
    if mode == EdiMode.FULL:
        items.append(
            Count(
                "deactivate",
                f"To deactivate (of {grouped(n('active_members'))} active)",
                n("deactivate"),
                "warn",
            )
        )
    items.append(
        Count(
            "revoke",
            f"Seats to revoke (of {grouped(n('active_seats'))})",
            n("revoke"),
            "warn",
        )
    )
    return items


def _sections(preview: dict[str, Any], mode: str) -> list[SampleSection]:
    samples = preview.get("samples") or {}
    counts = preview.get("counts") or {}

    def rows(key: str) -> list[dict[str, Any]]:
        found = samples.get(key) or []
        return [
            {
                "line": row.get("line"),
                "employee_id": row.get("employee_id") or "",
                "email": row.get("email") or "",
                "codes": _codes(row.get("codes")),
            }
            for row in found
            if isinstance(row, dict)
        ]

    sections = [
        SampleSection(
            "create",
            "New members",
            int(counts.get("create") or 0),
            rows("create"),
            empty="Nobody new.",
        ),
        SampleSection(
            "update",
            "Existing members (changed where the file differs)",
            int(counts.get("update") or 0),
            rows("update"),
            empty="No existing member is in this file.",
        ),
        SampleSection(
            "error",
            "Rows with errors (skipped)",
            int(counts.get("row_errors") or 0),
            rows("error"),
            empty="No row has an error.",
        ),
    ]
    if mode == EdiMode.FULL:
        sections.append(
            SampleSection(
                "deactivate",
                "Members to deactivate (not in this full file)",
                int(counts.get("deactivate") or 0),
                rows("deactivate"),
                with_line=False,
                empty="Nobody is deactivated.",
            )
        )
    # Open what needs a look: deactivations and errors, else the new members.
    wanted = {s.key for s in sections if s.key in ("deactivate", "error") and s.total}
    if not wanted:
        wanted = {"create"}
    return [dataclasses.replace(s, open=s.key in wanted) for s in sections]


def edi_file_same_bytes_applied(*, edi_file: EdiFile) -> EdiFile | None:
    """Another completed file with the same bytes, the latest one."""
    return (
        EdiFile.objects.filter(sha256=edi_file.sha256, status=EdiStatus.COMPLETED)
        .exclude(pk=edi_file.pk)
        .order_by("-finished_at")
        .first()
    )


def edi_file_blob_available(*, edi_file: EdiFile, name: str) -> bool:
    """True when the file's encrypted blob `name` is still on disk."""
    if not name or edi_file.purged_at is not None:
        return False
    try:
        return (media_dir() / name).is_file()
    except (OSError, ValueError):
        return False


def edi_file_page_context(*, edi_file: EdiFile) -> dict[str, Any]:
    """Everything the file page shows, ready to display."""
    preview = edi_file.preview or {}
    status = edi_file.status
    waiting = status in (EdiStatus.VALIDATED, EdiStatus.HELD)
    # Samples tell what a file would do; once applied, the results CSV
    # tells what it did.
    show_preview = bool(preview) and status in (
        EdiStatus.VALIDATED,
        EdiStatus.HELD,
        EdiStatus.CANCELLED,
        EdiStatus.SUPERSEDED,
    )
    rows_count = (edi_file.counts or {}).get("rows")
    return {
        "file": edi_file,
        "source_label": edi_file_source_label(edi_file),
        "progress": edi_file_progress(edi_file=edi_file),
        "job_gave_up": _job_gave_up(edi_file),
        "result_counts": _result_counts(edi_file.counts or {})
        if status == EdiStatus.COMPLETED
        else [],
        "rows_count": rows_count,
        "rows_display": grouped(rows_count) if isinstance(rows_count, int) else "",
        "preview": preview if show_preview else {},
        "preview_counts": _preview_counts(preview.get("counts") or {}, edi_file.mode)
        if show_preview
        else [],
        "sections": _sections(preview, edi_file.mode) if show_preview else [],
        "hold_reasons": preview.get("hold_reasons") or [],
        "unknown_columns": preview.get("unknown_columns") or [],
        "waiting": waiting,
        "problems": [_problem(e) for e in edi_file.errors or [] if isinstance(e, dict)],
        "can_decide": waiting,
        "can_apply_anyway": status == EdiStatus.DUPLICATE,
        "same_bytes": edi_file_same_bytes_applied(edi_file=edi_file)
        if waiting
        else None,
        "results_available": edi_file_blob_available(
            edi_file=edi_file, name=edi_file.results_name
        ),
        "raw_available": edi_file_blob_available(
            edi_file=edi_file, name=edi_file.blob_name
        ),
    }


# ------------------------------------------------------------------ settings


@dataclasses.dataclass(frozen=True)
class SftpAccess:
    """How an HR system reaches the drop box (DESIGN.md: username = slug)."""

    host: str
    port: int
    username: str
    host_key: HostKey | None
    host_key_error: str


def edi_sftp_access(*, slug: str, origin: str) -> SftpAccess:
    """Host, port and username of the drop box, with the host key's prints.

    The host is `PORTAL_SFTP_HOST` when set, else the tenant's primary
    domain (from `origin`); the port `PORTAL_SFTP_PORT`, else 2222, the
    port `make run` and `sftpd` use.
    """
    host = str(getattr(settings, "PORTAL_SFTP_HOST", "") or "")
    if not host:
        host = urlsplit(origin).hostname or ""
    port = int(getattr(settings, "PORTAL_SFTP_PORT", 0) or DEFAULT_SFTP_PORT)
    host_key: HostKey | None = None
    error = ""
    try:
        host_key = sftp_host_key_fingerprints()
    except ApplicationError as exc:
        error = exc.message
    return SftpAccess(
        host=host, port=port, username=slug, host_key=host_key, host_key_error=error
    )


def edi_settings_page_context() -> dict[str, Any]:
    """Rules, keys and tokens of the settings page, with the settings row."""
    settings_row: EdiSettings = edi_settings_get()
    now = timezone.now()
    return {
        "edi_settings": settings_row,
        "rules": list(AutoProvisionRule.objects.order_by("field", "value")),
        "sftp_keys": list(
            SftpKey.objects.select_related("created_by").order_by("name")
        ),
        "tokens": [
            TokenRow(token=token, state=_token_state(token, now))
            for token in EdiToken.objects.select_related("created_by").order_by(
                F("revoked_at").asc(nulls_first=True), "-created_at"
            )
        ],
    }


@dataclasses.dataclass(frozen=True)
class TokenRow:
    token: EdiToken
    state: str  # "active", "expired" or "revoked"


def _token_state(token: EdiToken, now: datetime) -> str:
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at <= now:
        return "expired"
    return "active"


def edi_rule_get(*, rule_id: int) -> AutoProvisionRule:
    rule = AutoProvisionRule.objects.filter(pk=rule_id).first()
    if rule is None:
        raise NotFound("This rule does not exist (any more).")
    return rule


def edi_sftp_key_get(*, key_id: int) -> SftpKey:
    key = SftpKey.objects.filter(pk=key_id).first()
    if key is None:
        raise NotFound("This key does not exist (any more).")
    return key


def edi_token_get(*, token_id: int) -> EdiToken:
    token = EdiToken.objects.filter(pk=token_id).first()
    if token is None:
        raise NotFound("This token does not exist.")
    return token
