"""Job reads."""

from __future__ import annotations

from portal.errors import NotFound
from portal.models import Job, Member
from portal.roles import can


def job_get(*, job_id: str, viewer: Member) -> Job:
    """A job the viewer may see: their own, or any if they may view audit."""
    try:
        job = Job.objects.filter(pk=job_id).first()
    except (ValueError, TypeError):
        job = None
    if job is None or (job.requester_id != viewer.pk and not can(viewer, "audit.view")):
        raise NotFound("Job not found.")
    return job


def job_running(*, viewer: Member, limit: int = 10) -> list[Job]:
    jobs = Job.objects.filter(status__in=Job.ACTIVE).order_by("-created_at")
    if not can(viewer, "audit.view"):
        jobs = jobs.filter(requester=viewer)
    return list(jobs[:limit])
