"""Local sign-in: lockout, one generic answer, unlock, session rotation.

PORTAL-29 through POST /accounts/login/ on the tenant's host.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone
from django_tenants.utils import tenant_context

from portal.models import AuditEvent, LoginFailure, MemberSession, MemberStatus
from portal.roles import Role
from portal.services.auth import GENERIC_LOGIN_ERROR
from portal.services.members import member_deactivate
from tests.factories import TEST_PASSWORD

LOGIN = "/accounts/login/"
WRONG = "not the password at all"
CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken" value="[^"]*"')


def _post(client: Client, username: str, password: str):
    return client.post(LOGIN, {"username": username, "password": password})


def _signed_in(client: Client) -> bool:
    return SESSION_KEY in client.session


def _normalised(response, username: str) -> str:
    """Body without what legitimately differs: the csrf token, the echo."""
    body = CSRF_INPUT.sub("csrf", response.content.decode())
    return body.replace(username, "USERNAME")


def _fail(client: Client, username: str, times: int) -> None:
    for _ in range(times):
        response = _post(client, username, WRONG)
        assert response.status_code == 400


@pytest.fixture
def person(make_member):
    return make_member(Role.MEMBER)


def test_correct_password_signs_in(tenant, anon_client, person):
    response = _post(anon_client, person.email, TEST_PASSWORD)
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert _signed_in(anon_client)
    assert anon_client.get("/").status_code == 200


def test_success_sets_last_sign_in_and_audits(tenant, anon_client, make_member):
    person = make_member(Role.MEMBER, status=MemberStatus.INVITED)
    started = timezone.now()
    response = _post(anon_client, person.email.upper(), TEST_PASSWORD)
    assert response.status_code == 302
    with tenant_context(tenant):
        person.refresh_from_db()
        assert person.last_sign_in_at is not None
        assert person.last_sign_in_at >= started
        # The first sign-in turns an invitation into an active member.
        assert person.status == MemberStatus.ACTIVE
        event = AuditEvent.objects.get(
            action="portal.login.succeeded", target_id=str(person.pk)
        )
        assert event.actor_id == str(person.pk)
        # The new session is indexed, so deactivation can end it.
        session_key = anon_client.cookies[settings.SESSION_COOKIE_NAME].value
        assert MemberSession.objects.filter(
            member=person, session_key=session_key
        ).exists()


def test_wrong_password_gives_generic_message(tenant, anon_client, person):
    response = _post(anon_client, person.email, WRONG)
    assert response.status_code == 400
    assert GENERIC_LOGIN_ERROR in response.content.decode()
    assert not _signed_in(anon_client)
    with tenant_context(tenant):
        assert AuditEvent.objects.filter(
            action="portal.login.failed", changes__username=person.email.lower()
        ).exists()


def test_four_failures_do_not_lock(anon_client, person):
    _fail(anon_client, person.email, 4)
    assert _post(anon_client, person.email, TEST_PASSWORD).status_code == 302


def test_sixth_attempt_fails_even_when_correct(tenant, anon_client, person):
    _fail(anon_client, person.email, 5)
    response = _post(anon_client, person.email, TEST_PASSWORD)
    assert response.status_code == 400
    assert GENERIC_LOGIN_ERROR in response.content.decode()
    assert not _signed_in(anon_client)
    with tenant_context(tenant):
        assert AuditEvent.objects.filter(
            action="portal.login.locked", changes__username=person.email.lower()
        ).exists()
        person.refresh_from_db()
        assert person.last_sign_in_at is None
        assert not AuditEvent.objects.filter(action="portal.login.succeeded").exists()


def test_lock_is_per_account(anon_client, person, make_member):
    _fail(anon_client, person.email, 5)
    bystander = make_member(Role.MEMBER)
    assert (
        _post(Client(HTTP_HOST="tenant.localhost"), bystander.email, TEST_PASSWORD)[
            "Location"
        ]
        == "/"
    )


def test_lock_expires_after_the_window(tenant, anon_client, person):
    long_ago = timezone.now() - timedelta(
        seconds=settings.PORTAL_LOGIN_LOCK_SECONDS + 60
    )
    with tenant_context(tenant):
        LoginFailure.objects.bulk_create(
            [
                LoginFailure(
                    username=person.email.lower(), ip="127.0.0.1", occurred_at=long_ago
                )
                for _ in range(5)
            ]
        )
    assert _post(anon_client, person.email, TEST_PASSWORD).status_code == 302


def test_thirty_failures_block_the_ip(tenant, person):
    now = timezone.now()
    with tenant_context(tenant):
        LoginFailure.objects.bulk_create(
            [
                LoginFailure(
                    username=f"guess{i}@example.test", ip="10.9.8.7", occurred_at=now
                )
                for i in range(30)
            ]
        )
    blocked = Client(HTTP_HOST="tenant.localhost", REMOTE_ADDR="10.9.8.7")
    assert _post(blocked, person.email, TEST_PASSWORD).status_code == 400
    elsewhere = Client(HTTP_HOST="tenant.localhost", REMOTE_ADDR="10.9.8.8")
    assert _post(elsewhere, person.email, TEST_PASSWORD).status_code == 302


def test_known_and_unknown_users_get_identical_answers(anon_client, person):
    unknown = "nobody-here@example.test"
    known_response = _post(anon_client, person.email, WRONG)
    unknown_response = _post(anon_client, unknown, WRONG)
    assert known_response.status_code == unknown_response.status_code == 400
    assert _normalised(known_response, person.email) == _normalised(
        unknown_response, unknown
    )


def test_locked_and_unknown_users_get_identical_answers(anon_client, person):
    unknown = "nobody-either@example.test"
    _fail(anon_client, person.email, 5)
    _fail(anon_client, unknown, 5)
    locked_right = _post(anon_client, person.email, TEST_PASSWORD)
    unknown_again = _post(anon_client, unknown, TEST_PASSWORD)
    assert locked_right.status_code == unknown_again.status_code == 400
    assert _normalised(locked_right, person.email) == _normalised(
        unknown_again, unknown
    )


def test_deactivated_member_cannot_sign_in(tenant, anon_client, person, tenant_owner):
    with tenant_context(tenant):
        member_deactivate(member=person, actor=tenant_owner)
    response = _post(anon_client, person.email, TEST_PASSWORD)
    assert response.status_code == 400
    assert not _signed_in(anon_client)
    unknown = _post(anon_client, "ghost@example.test", TEST_PASSWORD)
    # A deactivated account looks like an unknown one.
    assert _normalised(response, person.email) == _normalised(
        unknown, "ghost@example.test"
    )


def test_session_key_rotates_at_login(tenant, anon_client, person):
    with tenant_context(tenant):
        session = anon_client.session
        session["before_login"] = "yes"
        session.save()
        before = session.session_key
    anon_client.cookies[settings.SESSION_COOKIE_NAME] = before
    response = _post(anon_client, person.email, TEST_PASSWORD)
    assert response.status_code == 302
    after = anon_client.cookies[settings.SESSION_COOKIE_NAME].value
    assert after
    assert after != before
    with tenant_context(tenant):
        assert not Session.objects.filter(session_key=before).exists()
        assert Session.objects.filter(session_key=after).exists()


def test_session_lasts_at_most_twelve_hours():
    assert settings.SESSION_COOKIE_AGE <= 12 * 60 * 60


@pytest.mark.parametrize("unlocker_role", [Role.OWNER, Role.ADMIN])
def test_owner_or_admin_unlock_clears_the_lock(
    tenant, anon_client, person, make_member, client_for, unlocker_role
):
    _fail(anon_client, person.email, 5)
    assert _post(anon_client, person.email, TEST_PASSWORD).status_code == 400
    unlocker = make_member(unlocker_role)
    response = client_for(unlocker).post(f"/members/{person.pk}/unlock/")
    assert response.status_code == 302
    with tenant_context(tenant):
        assert not LoginFailure.objects.filter(username=person.email.lower()).exists()
        event = AuditEvent.objects.get(
            action="portal.login.unlocked", target_id=str(person.pk)
        )
        assert event.actor_id == str(unlocker.pk)
    assert _post(anon_client, person.email, TEST_PASSWORD).status_code == 302


def test_user_admin_cannot_unlock(tenant, anon_client, person, make_member, client_for):
    _fail(anon_client, person.email, 5)
    response = client_for(make_member(Role.USER_ADMIN)).post(
        f"/members/{person.pk}/unlock/"
    )
    assert response.status_code == 403
    with tenant_context(tenant):
        assert LoginFailure.objects.filter(username=person.email.lower()).count() == 5
        assert not AuditEvent.objects.filter(action="portal.login.unlocked").exists()
    assert _post(anon_client, person.email, TEST_PASSWORD).status_code == 400


def test_owner_account_locks_too(tenant, anon_client, tenant_owner):
    from tests.conftest import OWNER_PASSWORD

    _fail(anon_client, tenant_owner.email, 5)
    assert _post(anon_client, tenant_owner.email, OWNER_PASSWORD).status_code == 400


def test_auth_housekeeping_removes_only_expired_records(tenant, tenant_owner):
    from datetime import timedelta

    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session
    from django.utils import timezone
    from django_tenants.utils import tenant_context

    from portal.models import LoginFailure, MemberSession
    from portal.services.auth import auth_housekeeping

    with tenant_context(tenant):
        now = timezone.now()
        LoginFailure.objects.create(
            username="old@x.test", occurred_at=now - timedelta(days=2)
        )
        LoginFailure.objects.create(username="new@x.test", occurred_at=now)
        live = SessionStore()
        live.create()
        dead = SessionStore()
        dead.create()
        Session.objects.filter(session_key=dead.session_key).update(
            expire_date=now - timedelta(seconds=1)
        )
        for key in (live.session_key, dead.session_key):
            assert key is not None
            MemberSession.objects.create(member=tenant_owner, session_key=key)

        assert auth_housekeeping() == {
            "login_failures": 1,
            "sessions": 1,
            "session_index": 1,
        }
        assert list(LoginFailure.objects.values_list("username", flat=True)) == [
            "new@x.test"
        ]
        assert list(MemberSession.objects.values_list("session_key", flat=True)) == [
            live.session_key
        ]
