"""Tenant-schema models of the portal core."""

from portal.models.audit import AuditEvent
from portal.models.auth import LoginFailure, MemberSession
from portal.models.jobs import Job, JobStatus
from portal.models.keyring import DataKey, DataKeyState
from portal.models.members import (
    Member,
    MemberGroup,
    MemberSource,
    MemberStatus,
    SeatPool,
    SeatSnapshot,
)
from portal.models.outbox import OutboxEmail

__all__ = [
    "AuditEvent",
    "DataKey",
    "DataKeyState",
    "Job",
    "JobStatus",
    "LoginFailure",
    "Member",
    "MemberGroup",
    "MemberSession",
    "MemberSource",
    "MemberStatus",
    "OutboxEmail",
    "SeatPool",
    "SeatSnapshot",
]
