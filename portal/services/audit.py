"""Recording and exporting the tenant's audit log (PORTAL-11..13)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.utils import timezone

from portal import context
from portal.db import current_schema
from portal.errors import ApplicationError, TenantContextError
from portal.models import AuditEvent, Job
from portal.services.registry import audit_exempt, audits

if TYPE_CHECKING:
    from portal.models import Member

MAX_CHANGES_BYTES = 8 * 1024
SECRET_FIELDS = frozenset(
    {"password", "secret", "token", "private_key", "client_secret"}
)


def _scrub_changes(changes: dict[str, Any] | None) -> dict[str, Any]:
    if not changes:
        return {}
    scrubbed: dict[str, Any] = {}
    for field, value in changes.items():
        if any(word in field.lower() for word in SECRET_FIELDS):
            scrubbed[field] = "changed"
        else:
            scrubbed[field] = value
    encoded = json.dumps(scrubbed, default=str)
    if len(encoded.encode()) > MAX_CHANGES_BYTES:
        return {"truncated": True, "fields": sorted(scrubbed)[:200]}
    result: dict[str, Any] = json.loads(encoded)
    return result


def _target_fields(target: Any) -> tuple[str, str, str]:
    if target is None:
        return "", "", ""
    meta = getattr(target, "_meta", None)
    target_type = meta.label_lower if meta is not None else type(target).__name__
    return target_type, str(getattr(target, "pk", "") or ""), str(target)[:254]


@audit_exempt("records audit events itself")
def audit_event_record(
    *,
    action: str,
    target: Any = None,
    actor: Member | None = None,
    changes: dict[str, Any] | None = None,
    target_label: str | None = None,
) -> AuditEvent:
    """Append one event to the current tenant's audit log.

    Call it inside the service's transaction so a rolled-back write leaves no
    event. Actor, IP, user agent, request id and source come from
    `portal.context` unless `actor` names a member. Refuses the public schema.
    """
    if current_schema() == "public":
        raise TenantContextError("The tenant audit log is not in the public schema.")
    ctx = context.current()
    target_type, target_id, label = _target_fields(target)
    if actor is not None:
        actor_type, actor_id, actor_label = "member", str(actor.pk), actor.email
    else:
        actor_type, actor_id, actor_label = (
            ctx.actor_type,
            ctx.actor_id,
            ctx.actor_label,
        )
    event = AuditEvent(
        occurred_at=timezone.now(),
        actor_type=actor_type,
        actor_id=actor_id,
        actor_label=actor_label[:254],
        action=action,
        target_type=target_type,
        target_id=target_id,
        target_label=(target_label if target_label is not None else label)[:254],
        changes=_scrub_changes(changes),
        ip=ctx.ip,
        user_agent=ctx.user_agent[:400],
        request_id=ctx.request_id,
        source=ctx.source,
    )
    event.save()
    return event


AUDIT_EXPORT_COLUMNS = [
    "occurred_at",
    "actor_type",
    "actor_id",
    "actor_label",
    "action",
    "target_type",
    "target_id",
    "target_label",
    "changes",
    "ip",
    "user_agent",
    "request_id",
    "source",
]


@audits("portal.audit.export_requested")
@transaction.atomic
def audit_export_request(
    *, actor: Member, filters: dict[str, str], idempotency_key: str = ""
) -> Job:
    """Queue an encrypted CSV export of the audit events matching `filters`.

    The file is readable only by `actor` for 24 hours (PORTAL-13). Returns
    the existing job when `idempotency_key` was used by the same actor.
    """
    from portal.selectors.audit import AUDIT_FILTER_KEYS
    from portal.services.jobs import job_create
    from portal.tasks import audit_export_run_task

    unknown = set(filters) - set(AUDIT_FILTER_KEYS)
    if unknown:
        raise ApplicationError(
            "Unknown audit filter.",
            details={key: ["Unknown filter."] for key in unknown},
        )
    job = job_create(
        kind="audit_export",
        actor=actor,
        params={"filters": filters},
        idempotency_key=idempotency_key,
        task=audit_export_run_task,
    )
    audit_event_record(
        action="portal.audit.export_requested",
        target=job,
        actor=actor,
        changes={"filters": filters},
    )
    return job


@audit_exempt("the export job's final event is recorded by the job service")
def audit_export_run(*, job: Job) -> None:
    """Write the export file for `job` (idempotent: rewrites from the start)."""
    from portal.selectors.audit import audit_event_list
    from portal.services.exports import export_write

    filters = dict(job.params.get("filters", {}))
    events = audit_event_list(filters=filters)

    def rows() -> Any:
        for event in events.iterator(chunk_size=2000):
            yield [
                event.occurred_at.isoformat(),
                event.actor_type,
                event.actor_id,
                event.actor_label,
                event.action,
                event.target_type,
                event.target_id,
                event.target_label,
                json.dumps(event.changes, sort_keys=True) if event.changes else "",
                event.ip or "",
                event.user_agent,
                event.request_id,
                event.source,
            ]

    export_write(
        job=job,
        filename_stem="audit-log",
        header=AUDIT_EXPORT_COLUMNS,
        rows=rows(),
        total=events.count(),
    )
