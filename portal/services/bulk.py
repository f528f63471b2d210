"""Bulk actions on members (PORTAL-07).

Up to 200 rows apply at once; more run as a `member_bulk` job with a
per-row results CSV. Rows the actor may not touch are skipped with a reason.
Seat grants are whole or nothing. Deactivating more than 50 members, or more
than 10% of the active ones, needs the tenant's slug typed as confirmation.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from django.db import connection, transaction

from portal.errors import ApplicationError
from portal.models import Job, Member, MemberStatus
from portal.roles import Role, may_assign_role, may_manage_member
from portal.services.registry import audit_exempt, audits

if TYPE_CHECKING:
    from collections.abc import Iterator

SYNC_LIMIT = 200
CHECKPOINT_EVERY = 100
CONFIRM_COUNT = 50
CONFIRM_SHARE = 0.10
ACTIONS = (
    "grant_seat",
    "revoke_seat",
    "deactivate",
    "reactivate",
    "change_role",
    "add_group",
    "remove_group",
)


@dataclasses.dataclass
class BulkOutcome:
    applied: int = 0
    skipped: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    job: Job | None = None


def _needs_confirmation(action: str, count: int) -> bool:
    if action != "deactivate":
        return False
    active = Member.objects.exclude(status=MemberStatus.DEACTIVATED).count()
    return count > CONFIRM_COUNT or (active > 0 and count > active * CONFIRM_SHARE)


def _validate(action: str, params: dict[str, Any]) -> None:
    if action not in ACTIONS:
        raise ApplicationError("Unknown bulk action.", details={"action": ["Unknown."]})
    if action == "change_role" and params.get("role") not in Role.values:
        raise ApplicationError("Choose a role.", details={"role": ["Choose a role."]})
    if (
        action in ("add_group", "remove_group")
        and not str(params.get("group", "")).strip()
    ):
        raise ApplicationError("Enter a group name.", details={"group": ["Required."]})


@audits("portal.member.bulk_requested")
def member_bulk_request(
    *,
    actor: Member,
    action: str,
    member_ids: list[int],
    params: dict[str, Any],
    confirm_slug: str = "",
    recent_sign_in: bool = False,
    idempotency_key: str = "",
) -> BulkOutcome:
    """Apply `action` to `member_ids` now, or queue a job past 200 rows.

    A large deactivation needs the tenant's slug typed in `confirm_slug` and
    a sign-in within the last 15 minutes (`recent_sign_in`, PORTAL-22).
    """
    from portal.services.audit import audit_event_record
    from portal.services.jobs import job_create
    from portal.tasks import member_bulk_run_task

    _validate(action, params)
    if not member_ids:
        raise ApplicationError("Tick at least one member.", code="empty_selection")
    if _needs_confirmation(action, len(member_ids)):
        slug = getattr(getattr(connection, "tenant", None), "slug", "")
        if confirm_slug != slug:
            raise ApplicationError(
                f"Deactivating {len(member_ids)} members needs confirmation: "
                "type the organisation's slug exactly.",
                code="confirmation_required",
                details={"confirm": ["Type the slug to confirm."]},
            )
        if not recent_sign_in:
            raise ApplicationError(
                "For your protection, sign in again before deactivating this many "
                "members (your last sign-in was more than 15 minutes ago).",
                code="reauthentication_required",
            )
    if len(member_ids) <= SYNC_LIMIT:
        return member_bulk_apply(
            actor=actor, action=action, member_ids=member_ids, params=params
        )
    with transaction.atomic():
        job = job_create(
            kind="member_bulk",
            actor=actor,
            params={"action": action, "member_ids": member_ids, "params": params},
            idempotency_key=idempotency_key,
            task=member_bulk_run_task,
            total=len(member_ids),
        )
        audit_event_record(
            action="portal.member.bulk_requested",
            target=job,
            actor=actor,
            changes={"action": action, "count": len(member_ids)},
        )
    return BulkOutcome(job=job)


def _skip_reason(
    actor: Member, member: Member, action: str, params: dict[str, Any]
) -> str:
    if not may_manage_member(actor, member):
        return "Your role cannot change this member."
    if action == "change_role":
        return may_assign_role(actor, member, str(params.get("role"))) or ""
    if action == "deactivate" and member.pk == actor.pk:
        return "You cannot deactivate yourself."
    return ""


@audit_exempt("each member service audits its own change")
def member_bulk_apply(
    *, actor: Member, action: str, member_ids: list[int], params: dict[str, Any]
) -> BulkOutcome:
    """Apply one action to the given members, skipping those out of reach."""
    outcome = BulkOutcome()
    for _member_id, error in member_bulk_iter(
        actor=actor, action=action, member_ids=member_ids, params=params
    ):
        if error:
            outcome.skipped.append((_member_id, error))
        else:
            outcome.applied += 1
    return outcome


@audit_exempt("each member service audits its own change")
def member_bulk_iter(
    *, actor: Member, action: str, member_ids: list[int], params: dict[str, Any]
) -> Iterator[tuple[int, str]]:
    """Yield (member id, error or "") per row; seat grants all-or-nothing."""
    from portal.services import members as member_services

    _validate(action, params)
    actor = Member.objects.get(pk=actor.pk)
    by_id = {m.pk: m for m in Member.objects.filter(pk__in=member_ids)}
    allowed: list[Member] = []
    for member_id in member_ids:
        member = by_id.get(member_id)
        if member is None:
            yield member_id, "Not found."
            continue
        reason = _skip_reason(actor, member, action, params)
        if reason:
            yield member_id, reason
        else:
            allowed.append(member)
    if action == "grant_seat":
        ids = [m.pk for m in allowed]
        try:
            member_services.seat_grant(member_ids=ids, actor=actor)
        except ApplicationError as exc:
            for member_id in ids:
                yield member_id, exc.message
            return
        for member_id in ids:
            yield member_id, ""
        return
    for member in allowed:
        try:
            if action == "revoke_seat":
                member_services.seat_revoke(member_ids=[member.pk], actor=actor)
            elif action == "deactivate":
                member_services.member_deactivate(
                    member=member, actor=actor, reason="bulk"
                )
            elif action == "reactivate":
                member_services.member_reactivate(member=member, actor=actor)
            elif action == "change_role":
                member_services.member_role_set(
                    member=member, role=str(params["role"]), actor=actor
                )
            else:
                member_services.member_groups_change(
                    member_ids=[member.pk],
                    group_name=str(params["group"]),
                    add=action == "add_group",
                    actor=actor,
                )
        except ApplicationError as exc:
            yield member.pk, exc.message
        else:
            yield member.pk, ""


@audit_exempt("the member services audit; the job records its results")
def member_bulk_run(*, job: Job) -> None:
    """Run a queued bulk job and store its per-row results CSV."""
    from portal.services.exports import export_write
    from portal.services.jobs import job_progress

    actor = job.requester
    if actor is None:
        raise ApplicationError("The member who started this job no longer exists.")
    action = str(job.params["action"])
    member_ids = [int(i) for i in job.params["member_ids"]]
    params = dict(job.params.get("params", {}))
    emails = dict(Member.objects.filter(pk__in=member_ids).values_list("pk", "email"))
    # Resume after the last checkpoint: ids before it are done, and their
    # skip reasons were saved with it. A batch cut short by a crash is
    # redone, which the member services make harmless (each is idempotent).
    done = int(job.checkpoint.get("index", 0))
    skipped: dict[str, str] = dict(job.checkpoint.get("skipped", {}))
    remaining = member_ids[done:]
    if action == "grant_seat":
        batches = [remaining]  # seat grants are whole or nothing
    else:
        batches = [
            remaining[i : i + CHECKPOINT_EVERY]
            for i in range(0, len(remaining), CHECKPOINT_EVERY)
        ]
    for batch in batches:
        for member_id, error in member_bulk_iter(
            actor=actor, action=action, member_ids=batch, params=params
        ):
            if error:
                skipped[str(member_id)] = error
        done += len(batch)
        job_progress(
            job=job,
            done=done,
            total=len(member_ids),
            checkpoint={"index": done, "skipped": skipped},
        )
    results: list[list[Any]] = [
        [
            member_id,
            emails.get(member_id, ""),
            "skipped" if str(member_id) in skipped else "ok",
            skipped.get(str(member_id), ""),
        ]
        for member_id in member_ids
    ]
    job.kind = "member_bulk"
    export_write(
        job=job,
        filename_stem=f"bulk-{action}-results",
        header=["member_id", "email", "result", "reason"],
        rows=results,
        total=len(results),
    )
