"""Local password sign-in with lockout, and the session index (PORTAL-29).

Five failures for one account within 15 minutes lock it for 15 minutes;
30 failures from one IP block that IP. Every refusal shows the same generic
message, so known and unknown accounts are indistinguishable.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import authenticate
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.http import HttpRequest
from django.utils import timezone

from portal.db import current_schema
from portal.errors import ApplicationError
from portal.models import LoginFailure, Member, MemberSession, MemberStatus
from portal.selectors.members import member_for_user
from portal.services.audit import audit_event_record
from portal.services.registry import audit_exempt, audits

GENERIC_LOGIN_ERROR = "That email and password did not work, or sign-in is locked."


class LoginRefused(ApplicationError):
    code = "login_refused"
    status = 400


def _window_start() -> Any:
    return timezone.now() - timedelta(seconds=settings.PORTAL_LOGIN_LOCK_SECONDS)


@audit_exempt("read")
def login_is_locked(*, username: str, ip: str | None) -> bool:
    since = _window_start()
    failures = LoginFailure.objects.filter(occurred_at__gte=since)
    if failures.filter(username=username).count() >= settings.PORTAL_LOGIN_MAX_FAILURES:
        return True
    return bool(
        ip and failures.filter(ip=ip).count() >= settings.PORTAL_LOGIN_IP_MAX_FAILURES
    )


@audits("portal.login.succeeded", "portal.login.failed", "portal.login.locked")
def login_attempt(
    *, request: HttpRequest, username: str, password: str, ip: str | None
) -> AbstractBaseUser:
    """Check a local sign-in; returns the user or raises `LoginRefused`.

    Does not start the session (the view calls `django.contrib.auth.login`,
    which rotates the session key). Lockout is checked before the password,
    so the sixth attempt fails even when correct.
    """
    username = (username or "").strip().lower()[:254]
    refusal: str | None = None
    with transaction.atomic():
        # One attempt at a time per account: parallel guesses queue behind
        # this lock, so each one sees the failures recorded before it.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))",
                [f"login:{current_schema()}:{username}"],
            )
        user = None
        if login_is_locked(username=username, ip=ip):
            audit_event_record(
                action="portal.login.locked", changes={"username": username}
            )
            refusal = GENERIC_LOGIN_ERROR
        else:
            user = authenticate(request, username=username, password=password)
            member = member_for_user(user=user)
            if (
                user is None
                or member is None
                or member.status == MemberStatus.DEACTIVATED
            ):
                LoginFailure.objects.create(
                    username=username, ip=ip, occurred_at=timezone.now()
                )
                audit_event_record(
                    action="portal.login.failed",
                    target=member,
                    changes={"username": username},
                )
                if login_is_locked(username=username, ip=ip):
                    audit_event_record(
                        action="portal.login.locked",
                        target=member,
                        changes={"username": username},
                    )
                refusal = GENERIC_LOGIN_ERROR
            elif policy_error := login_policy_check(member=member, method="password"):
                audit_event_record(
                    action="portal.login.failed",
                    target=member,
                    changes={"reason": policy_error},
                )
                refusal = policy_error
            else:
                LoginFailure.objects.filter(username=username).delete()
                updates = ["last_sign_in_at", "updated_at"]
                member.last_sign_in_at = timezone.now()
                if member.status == MemberStatus.INVITED:
                    member.status = MemberStatus.ACTIVE
                    updates.append("status")
                member.save(update_fields=updates)
                audit_event_record(
                    action="portal.login.succeeded", target=member, actor=member
                )
    # Raised after the block, so the failure and its audit event commit.
    if refusal is not None or user is None:
        raise LoginRefused(refusal or GENERIC_LOGIN_ERROR)
    return user


LOGIN_POLICIES: list[Any] = []
# Called as hook(request, member) after a successful password sign-in.
PASSWORD_SIGN_IN_HOOKS: list[Any] = []
# Called as hook(request) before the local logout; may return a callable run
# after it, which may return a response (single logout at the IdP).
LOGOUT_HANDLERS: list[Any] = []
# Called with no argument; any True shows "Sign in with SSO" on the login page.
LOGIN_ALTERNATIVES: list[Any] = []


@audit_exempt("read")
def login_policy_check(*, member: Member, method: str) -> str | None:
    """Ask other apps (SSO enforcement) whether `member` may use `method`."""
    for policy in LOGIN_POLICIES:
        reason = policy(member, method)
        if reason:
            return str(reason)
    return None


@audits("portal.login.unlocked")
@transaction.atomic
def login_unlock(*, member: Member, actor: Member) -> int:
    """Clear a member's recent sign-in failures (owners and admins)."""
    from portal.roles import can

    if not can(actor, "members.unlock"):
        raise ApplicationError("Your role cannot unlock accounts.", status=403)
    deleted, _ = LoginFailure.objects.filter(username=member.email.lower()).delete()
    audit_event_record(action="portal.login.unlocked", target=member, actor=actor)
    return deleted


@audit_exempt("signal handler; the sign-in itself is audited")
def session_index_on_login(
    sender: Any, request: HttpRequest, user: Any, **kwargs: Any
) -> None:
    """Remember which session belongs to which member (to end them later)."""
    if current_schema() == "public":
        return  # an operator signing in to the console: public has no members
    # A sign-in path may name the member and method it already knows
    # (`request.signing_in = (member, method)`), saving a lookup.
    hint = getattr(request, "signing_in", None)
    member = hint[0] if hint else member_for_user(user=user)
    if member is None or not request.session.session_key:
        return
    # Not always a new key: login() keeps the session of a user signing in
    # again as themselves.
    method = hint[1] if hint else request.session.get("auth_method", "password")
    # One statement, no savepoint: an existing row is kept as it is.
    MemberSession.objects.bulk_create(
        [
            MemberSession(
                session_key=request.session.session_key,
                member=member,
                auth_method=method,
            )
        ],
        ignore_conflicts=True,
    )


@audit_exempt("housekeeping: removes expired records only")
def auth_housekeeping() -> dict[str, int]:
    """Delete expired sessions, their index rows and old login failures.

    Login failures older than a day can no longer lock anything (the window
    is 15 minutes). Runs daily per tenant; safe to run at any time.
    """
    from django.contrib.sessions.models import Session

    now = timezone.now()
    failures, _ = LoginFailure.objects.filter(
        occurred_at__lt=now - timedelta(days=1)
    ).delete()
    sessions, _ = Session.objects.filter(expire_date__lt=now).delete()
    orphans, _ = MemberSession.objects.exclude(
        session_key__in=Session.objects.values("session_key")
    ).delete()
    return {"login_failures": failures, "sessions": sessions, "session_index": orphans}
