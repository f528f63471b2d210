"""portal.sessions: Django's database sessions, written once per sign-in."""

from __future__ import annotations

import pytest
from django.contrib.auth import SESSION_KEY
from django.contrib.sessions.backends.base import CreateError
from django.contrib.sessions.models import Session
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django_tenants.utils import tenant_context

from portal import sessions
from portal.sessions import SessionStore
from tests.factories import TEST_PASSWORD


@pytest.fixture(autouse=True)
def _in_tenant(tenant):
    with tenant_context(tenant):
        yield


def _writes(captured: CaptureQueriesContext) -> list[str]:
    return [
        q["sql"]
        for q in captured.captured_queries
        if "django_session" in q["sql"]
        and q["sql"].split(None, 1)[0] in {"INSERT", "UPDATE", "DELETE", "SELECT"}
    ]


def test_new_session_is_inserted_once_on_save(tenant):
    store = SessionStore()
    store["a"] = 1
    with CaptureQueriesContext(connection) as captured:
        store.save()
    statements = _writes(captured)
    assert len(statements) == 1
    assert statements[0].startswith("INSERT")
    assert SessionStore(store.session_key)["a"] == 1


def test_create_defers_the_insert_and_unchanged_saves_write_nothing(tenant):
    store = SessionStore()
    store.create()
    key = store.session_key
    assert key
    assert len(key) == 32
    assert not Session.objects.filter(session_key=key).exists()
    store["x"] = "y"
    store.save()
    assert Session.objects.filter(session_key=key).exists()
    with CaptureQueriesContext(connection) as captured:
        store.save()  # nothing changed since
    assert _writes(captured) == []
    store["x"] = "z"
    with CaptureQueriesContext(connection) as captured:
        store.save()
    assert [s.split(None, 1)[0] for s in _writes(captured)] == ["UPDATE"]
    assert SessionStore(key)["x"] == "z"


def test_cycle_key_keeps_data_and_drops_the_old_row(tenant):
    store = SessionStore()
    store["keep"] = True
    store.save()
    old = store.session_key
    store.cycle_key()
    store.save()
    assert store.session_key != old
    assert not Session.objects.filter(session_key=old).exists()
    assert SessionStore(store.session_key)["keep"] is True


def test_flush_of_an_unsaved_session_writes_nothing(tenant):
    store = SessionStore()
    store.create()
    with CaptureQueriesContext(connection) as captured:
        store.flush()
    assert _writes(captured) == []
    assert store.session_key is None


def test_a_key_collision_draws_a_new_key(tenant, monkeypatch):
    taken = SessionStore()
    taken["who"] = "someone else"
    taken.save()
    keys = iter([taken.session_key, taken.session_key, "b" * 32])
    monkeypatch.setattr(sessions, "get_random_string", lambda *_a: next(keys))
    store = SessionStore()
    store["who"] = "me"
    store.save()
    assert store.session_key == "b" * 32
    assert SessionStore(taken.session_key)["who"] == "someone else"
    assert SessionStore("b" * 32)["who"] == "me"


def test_inside_a_transaction_the_insert_takes_no_savepoint():
    store = SessionStore()
    store.create()
    store["in"] = "transaction"
    with transaction.atomic(), CaptureQueriesContext(connection) as captured:
        store.save()
    sql = [q["sql"].split(None, 1)[0] for q in captured.captured_queries]
    assert sql.count("INSERT") == 1
    assert "SAVEPOINT" not in sql
    assert SessionStore(store.session_key)["in"] == "transaction"


def test_explicit_must_create_on_a_stored_key_still_refuses(tenant):
    store = SessionStore()
    store["a"] = 1
    store.save()
    again = SessionStore(store.session_key)
    again["a"] = 2
    with pytest.raises(CreateError):
        again.save(must_create=True)


def test_password_sign_in_writes_the_session_row_once(anon_client, make_member):
    from portal.roles import Role

    person = make_member(Role.MEMBER)
    with CaptureQueriesContext(connection) as captured:
        response = anon_client.post(
            "/accounts/login/", {"username": person.email, "password": TEST_PASSWORD}
        )
    assert response.status_code == 302
    assert SESSION_KEY in anon_client.session
    statements = [s.split(None, 1)[0] for s in _writes(captured)]
    assert statements.count("INSERT") == 1
    assert "UPDATE" not in statements
