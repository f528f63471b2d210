"""Tenancy placement, host routing, caches, append-only logs and the console.

Covers TEN-1, TEN-2, TEN-13, TEN-17 and PORTAL-12/14 (specs/tenancy.md,
specs/portal.md). Every test runs inside the rolled-back `db` transaction,
so status changes made through the services vanish afterwards.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import DatabaseError, connection, transaction
from django.test import Client
from django_tenants.utils import schema_context, tenant_context

from tenants.models import PlatformAuditEvent, Tenant, TenantStatus
from tenants.services import (
    platform_audit_record,
    tenant_resume,
    tenant_retire_request,
    tenant_suspend,
)
from tests.factories import AuditEventFactory

TENANT_SCHEMAS = ("t_tenant", "t_other")
SHARED_ONLY_PREFIXES = ("tenants_", "django_celery_beat_")
TENANT_APP_PREFIXES = ("portal_", "sso_", "edi_", "crm_", "pointdrive_")
# Strings that would reveal which tenant a host belongs to.
TENANT_REVEALERS = (b"tenant ltd", b"other ltd", b"t_tenant", b"tenant", b"owner@")


def schema_of(response: Any) -> str:
    """The schema the tenant middleware chose for a test client response."""
    return str(response.wsgi_request.tenant.schema_name)


def _tables() -> dict[str, set[str]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_type = 'BASE TABLE' "
            "AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
        found: dict[str, set[str]] = {}
        for schema, table in cursor.fetchall():
            found.setdefault(schema, set()).add(table)
    return found


# TEN-1: placement -------------------------------------------------------------


def test_shared_only_tables_live_only_in_public(tenant, other_tenant):
    tables = _tables()
    assert {"tenants_tenant", "tenants_domain", "tenants_platformauditevent"} <= tables[
        "public"
    ]
    assert "django_celery_beat_periodictask" in tables["public"]
    for schema, names in tables.items():
        if schema == "public":
            continue
        misplaced = {n for n in names if n.startswith(SHARED_ONLY_PREFIXES)}
        assert not misplaced, f"shared-only tables in {schema}: {misplaced}"


def test_tenant_app_tables_live_only_in_tenant_schemas(tenant, other_tenant):
    tables = _tables()
    public_leak = {n for n in tables["public"] if n.startswith(TENANT_APP_PREFIXES)}
    assert not public_leak, f"tenant-app tables in public: {public_leak}"
    for schema in TENANT_SCHEMAS:
        assert {"portal_member", "portal_auditevent", "portal_datakey"} <= tables[
            schema
        ]


def test_auth_tables_exist_in_public_and_every_tenant(tenant, other_tenant):
    tables = _tables()
    for schema in ("public", *TENANT_SCHEMAS):
        assert {"auth_user", "django_session", "django_content_type"} <= tables[schema]


def test_no_foreign_key_leaves_a_tenant_schema(tenant, other_tenant):
    # pg_constraint sees every FK, including ones Django did not declare.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT src_ns.nspname, src.relname, dst_ns.nspname, dst.relname "
            "FROM pg_constraint c "
            "JOIN pg_class src ON src.oid = c.conrelid "
            "JOIN pg_namespace src_ns ON src_ns.oid = src.relnamespace "
            "JOIN pg_class dst ON dst.oid = c.confrelid "
            "JOIN pg_namespace dst_ns ON dst_ns.oid = dst.relnamespace "
            "WHERE c.contype = 'f' AND src_ns.nspname = ANY(%s)",
            [list(TENANT_SCHEMAS)],
        )
        fks = cursor.fetchall()
    assert fks, "expected tenant tables to have foreign keys at all"
    crossing = [fk for fk in fks if fk[0] != fk[2]]
    assert not crossing, f"foreign keys out of a tenant schema: {crossing}"
    public_only = _tables()["public"] - _tables()["t_tenant"]
    into_public = [fk for fk in fks if fk[3] in public_only]
    assert not into_public, f"foreign keys to public-only tables: {into_public}"


def test_no_referential_constraint_crosses_schemas(tenant):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT rc.constraint_schema, rc.constraint_name, tc.table_schema "
            "FROM information_schema.referential_constraints rc "
            "JOIN information_schema.table_constraints tc "
            "ON tc.constraint_schema = rc.unique_constraint_schema "
            "AND tc.constraint_name = rc.unique_constraint_name "
            "WHERE rc.constraint_schema <> rc.unique_constraint_schema"
        )
        assert cursor.fetchall() == []


# TEN-2: routing ---------------------------------------------------------------


def test_uppercase_host_with_port_reaches_the_tenant(tenant):
    response = Client(HTTP_HOST="TENANT.localhost:8000").get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert schema_of(response) == "t_tenant"


def test_www_prefix_and_trailing_dot_reach_the_tenant(tenant):
    for host in ("www.tenant.localhost", "tenant.localhost."):
        response = Client(HTTP_HOST=host).get("/")
        assert response.status_code == 302, host
        assert schema_of(response) == "t_tenant"


@pytest.mark.parametrize(
    "host",
    [
        "nobody.localhost",
        "tenant.localhost.evil.test",
        "evil.test",
        "127.0.0.1",
        "127.0.0.1:8000",
        "[::1]",
        "[::1]:8000",
    ],
)
def test_unknown_host_gets_404_naming_no_tenant(tenant, other_tenant, host):
    response = Client(HTTP_HOST=host).get("/")
    assert response.status_code == 404
    body = response.content.lower()
    for word in TENANT_REVEALERS:
        assert word not in body, (host, word)


def test_unknown_host_404_is_the_same_for_every_path(tenant):
    client = Client(HTTP_HOST="nobody.localhost")
    bodies = {
        client.get(path).content for path in ("/", "/accounts/login/", "/api/v1/me/")
    }
    assert len(bodies) == 1


def test_base_domain_serves_the_console(tenant):
    response = Client(HTTP_HOST="localhost").get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert schema_of(response) == "public"
    login_page = Client(HTTP_HOST="LOCALHOST:8000").get("/accounts/login/")
    assert login_page.status_code == 200
    assert schema_of(login_page) == "public"


@pytest.mark.parametrize(
    ("change", "text"),
    [
        ("suspend", b"suspended"),
        ("retire", b"scheduled for deletion"),
    ],
)
def test_blocked_tenant_answers_403_and_hides_everything(
    tenant, tenant_client, change, text
):
    if change == "suspend":
        tenant_suspend(tenant_id=tenant.pk, reason="unpaid invoices")
    else:
        tenant_retire_request(
            tenant_id=tenant.pk, reason="closing", confirm_slug="tenant"
        )
    anon = Client(HTTP_HOST="tenant.localhost")
    for client in (anon, tenant_client):
        for path in ("/", "/members/", "/audit/", "/accounts/login/", "/nope/"):
            response = client.get(path)
            assert response.status_code == 403, path
            assert text in response.content
            body = response.content.lower()
            assert b"tenant ltd" not in body
            assert b"owner@tenant.test" not in body
        public_link = client.get("/p/anything/")
        assert public_link.status_code == 404
        assert text not in public_link.content
        api = client.get("/api/v1/me/", HTTP_ACCEPT="application/json")
        assert api.status_code == 403
        assert b"owner@tenant.test" not in api.content
        login = client.post(
            "/accounts/login/", {"username": "owner@tenant.test", "password": "x"}
        )
        assert login.status_code == 403


def test_blocked_tenant_public_link_404_reveals_nothing(tenant):
    tenant_suspend(tenant_id=tenant.pk, reason="unpaid invoices")
    response = Client(HTTP_HOST="tenant.localhost").get("/p/abc123/")
    assert response.status_code == 404
    body = response.content.lower()
    assert b"suspended" not in body
    assert b"tenant" not in body


def test_resumed_tenant_is_served_again(tenant, tenant_client):
    tenant_suspend(tenant_id=tenant.pk, reason="check")
    assert tenant_client.get("/").status_code == 403
    tenant_resume(tenant_id=tenant.pk)
    assert tenant_client.get("/").status_code == 200


def test_other_tenant_unaffected_by_a_suspension(tenant, other_tenant, client_for):
    tenant_suspend(tenant_id=tenant.pk, reason="check")
    response = client_for(None, on=other_tenant).get("/")
    assert response.status_code == 302


@pytest.mark.parametrize(
    "host", ["localhost", "tenant.localhost", "nobody.localhost", "127.0.0.1", "[::1]"]
)
def test_healthz_answers_on_any_host(tenant, host):
    response = Client(HTTP_HOST=host).get("/healthz")
    assert response.status_code == 200
    assert response.content == b"ok"


def test_healthz_answers_for_a_suspended_tenant(tenant):
    tenant_suspend(tenant_id=tenant.pk, reason="check")
    response = Client(HTTP_HOST="tenant.localhost").get("/healthz")
    assert response.status_code == 200
    assert response.content == b"ok"


# PORTAL-12 / PORTAL-14: append-only logs ---------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE tenants_platformauditevent SET action = 'tampered' WHERE id = %s",
        "DELETE FROM tenants_platformauditevent WHERE id = %s",
    ],
)
def test_platform_audit_refuses_update_and_delete(tenant, sql):
    event = platform_audit_record(action="test.append_only.probe", tenant=tenant)
    with connection.cursor() as cursor:
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            cursor.execute(sql, [event.pk])
    with schema_context("public"):
        assert PlatformAuditEvent.objects.get(pk=event.pk).action == (
            "test.append_only.probe"
        )


def test_platform_audit_refuses_truncate(tenant):
    platform_audit_record(action="test.append_only.probe", tenant=tenant)
    with connection.cursor() as cursor:
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            cursor.execute("TRUNCATE tenants_platformauditevent")


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE portal_auditevent SET action = 'tampered' WHERE id = %s",
        "DELETE FROM portal_auditevent WHERE id = %s",
        "TRUNCATE portal_auditevent",
    ],
)
def test_tenant_audit_refuses_update_delete_and_truncate(tenant, sql):
    with tenant_context(tenant):
        event = AuditEventFactory.create()
        params = [event.pk] if "%s" in sql else []
        with connection.cursor() as cursor:
            with (
                pytest.raises(DatabaseError, match="append-only"),
                transaction.atomic(),
            ):
                cursor.execute(sql, params)
        event.refresh_from_db()
        assert event.action == "test.event.recorded"


# TEN-13: caches -----------------------------------------------------------------


def test_cache_key_set_in_one_tenant_misses_in_another(tenant, other_tenant):
    key = "ten13-probe"
    try:
        with tenant_context(tenant):
            cache.set(key, "tenant's value", 60)
            assert cache.get(key) == "tenant's value"
        with tenant_context(other_tenant):
            assert cache.get(key) is None
            cache.set(key, "other's value", 60)
        with schema_context("public"):
            assert cache.get(key) is None
        with tenant_context(tenant):
            assert cache.get(key) == "tenant's value"
    finally:
        for target in (tenant, other_tenant):
            with tenant_context(target):
                cache.delete(key)


def test_cache_keys_carry_the_schema_prefix(tenant):
    with tenant_context(tenant):
        assert cache.make_key("k").startswith("t_tenant:")


# TEN-17: no schema-qualified raw SQL ------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
APP_DIRS = ("portal", "tenants", "sso", "edi", "crm", "pointdrive")
SQL_WORD = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|FROM|JOIN|INTO|TABLE)\b")
QUALIFIED = re.compile(r'(?<![\w.])"?(public|t_[a-z0-9_]+|template_tenant)"?\."?[a-z_]')


def _string_pieces(node: ast.AST) -> list[str]:
    """The text of a string literal; interpolations become `{}`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return [
            "".join(
                str(part.value) if isinstance(part, ast.Constant) else "{}"
                for part in node.values
            )
        ]
    return []


def schema_qualified_sql(source: str) -> list[str]:
    """SQL-looking string literals that name a schema (TEN-17)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        for text in _string_pieces(node):
            if not SQL_WORD.search(text):
                continue
            # An interpolated schema followed by a dot is a qualified name too.
            if QUALIFIED.search(text) or re.search(r'\{\}"?\."?[a-z_]', text):
                found.append(text)
    return found


def test_schema_qualified_sql_detector_works():
    assert schema_qualified_sql('q = "SELECT * FROM t_acme.portal_member"')
    assert schema_qualified_sql("q = 'UPDATE public.tenants_tenant SET name = 1'")
    assert schema_qualified_sql('q = \'DELETE FROM "public"."tenants_domain"\'')
    assert schema_qualified_sql('q = f"SELECT id FROM {schema}.portal_member"')
    assert not schema_qualified_sql(
        'q = "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s"'
    )
    assert not schema_qualified_sql("q = f'DROP SCHEMA IF EXISTS \"{name}\" CASCADE'")
    assert not schema_qualified_sql('"""Public code. Select from the public list."""')


def test_no_raw_sql_names_a_schema():
    offenders = []
    scanned = 0
    for app in APP_DIRS:
        for path in sorted((REPO / app).rglob("*.py")):
            parts = path.relative_to(REPO).parts
            if "migrations" in parts or "tests" in parts:
                continue
            scanned += 1
            for text in schema_qualified_sql(path.read_text(encoding="utf-8")):
                offenders.append(f"{path.relative_to(REPO)}: {text.strip()[:120]}")
    assert scanned > 20, "the app folders were not found"
    assert not offenders, "schema-qualified raw SQL:\n" + "\n".join(offenders)


# Console: operators suspend and resume; sessions stay on their side -----------------


@pytest.fixture
def operator(tenant):
    with schema_context("public"):
        return get_user_model().objects.create_user(
            username="operator@platform.test",
            email="operator@platform.test",
            password="an operator password 77",  # noqa: S106
            is_staff=True,
        )


@pytest.fixture
def console_client(operator):
    client = Client(HTTP_HOST="localhost")
    with schema_context("public"):
        client.force_login(operator)
    return client


def _status(tenant: Tenant) -> str:
    with schema_context("public"):
        return Tenant.objects.get(pk=tenant.pk).status


def test_operator_suspends_and_resumes_through_the_console(tenant, console_client):
    response = console_client.post(
        f"/tenants/{tenant.pk}/suspend/", {"reason": "unpaid invoices"}
    )
    assert response.status_code == 302
    assert response["Location"] == f"/tenants/{tenant.pk}/"
    assert _status(tenant) == TenantStatus.SUSPENDED
    assert Client(HTTP_HOST="tenant.localhost").get("/").status_code == 403

    response = console_client.post(f"/tenants/{tenant.pk}/resume/")
    assert response.status_code == 302
    assert _status(tenant) == TenantStatus.ACTIVE
    assert Client(HTTP_HOST="tenant.localhost").get("/").status_code == 302

    with schema_context("public"):
        actions = list(
            PlatformAuditEvent.objects.filter(tenant_slug="tenant")
            .order_by("-id")
            .values_list("action", "actor_type")[:2]
        )
    assert actions == [("tenant.resumed", "operator"), ("tenant.suspended", "operator")]


def test_operator_signs_in_to_the_console_with_a_password(tenant, operator):
    client = Client(HTTP_HOST="localhost")
    response = client.post(
        "/accounts/login/",
        {"username": "operator@platform.test", "password": "an operator password 77"},
    )
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert client.get("/").status_code == 200


def test_tenant_owner_cannot_sign_in_to_the_console(tenant):
    from tests.conftest import OWNER_PASSWORD

    client = Client(HTTP_HOST="localhost")
    response = client.post(
        "/accounts/login/",
        {"username": "owner@tenant.test", "password": OWNER_PASSWORD},
    )
    assert response.status_code == 200
    assert client.get("/").status_code == 302


def test_console_suspend_needs_a_reason(tenant, console_client):
    response = console_client.post(f"/tenants/{tenant.pk}/suspend/", {"reason": ""})
    assert response.status_code == 400
    assert _status(tenant) == TenantStatus.ACTIVE


def test_console_refuses_non_operators(tenant):
    with schema_context("public"):
        user = get_user_model().objects.create_user(
            username="clerk@platform.test",
            password="a clerk password 77",  # noqa: S106
        )
    client = Client(HTTP_HOST="localhost")
    with schema_context("public"):
        client.force_login(user)
    response = client.post(f"/tenants/{tenant.pk}/suspend/", {"reason": "x"})
    assert response.status_code == 403
    assert _status(tenant) == TenantStatus.ACTIVE


def test_operator_session_is_anonymous_on_a_tenant_host(tenant, console_client):
    assert console_client.get("/").status_code == 200
    response = console_client.get("/", HTTP_HOST="tenant.localhost")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert not response.wsgi_request.user.is_authenticated


def test_tenant_session_is_anonymous_on_the_console(tenant, tenant_client):
    assert tenant_client.get("/").status_code == 200
    response = tenant_client.get("/", HTTP_HOST="localhost")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert not response.wsgi_request.user.is_authenticated
    response = tenant_client.post(
        f"/tenants/{tenant.pk}/suspend/", {"reason": "x"}, HTTP_HOST="localhost"
    )
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert _status(tenant) == TenantStatus.ACTIVE


def test_operator_sign_in_locks_after_five_failures(tenant):
    from django.contrib.auth import get_user_model

    with schema_context("public"):
        get_user_model().objects.create_user(
            username="lock-op@platform.test",
            password="right password 123",
            is_staff=True,
        )
    client = Client(HTTP_HOST="localhost")
    for _ in range(5):
        response = client.post(
            "/accounts/login/",
            {"username": "lock-op@platform.test", "password": "wrong"},
        )
        assert response.status_code == 200
    # The sixth attempt fails even with the right password.
    response = client.post(
        "/accounts/login/",
        {"username": "lock-op@platform.test", "password": "right password 123"},
    )
    assert response.status_code == 200
    assert b"sign-in is locked" in response.content
    other = Client(HTTP_HOST="localhost").post(
        "/accounts/login/", {"username": "nobody@platform.test", "password": "x"}
    )
    assert b"sign-in is locked" in other.content


def test_unknown_host_and_suspended_pages_carry_security_headers(tenant):
    from tenants.services import tenant_suspend

    unknown = Client(HTTP_HOST="nobody.localhost").get("/")
    tenant_suspend(tenant_id=tenant.pk, reason="headers")
    suspended = Client(HTTP_HOST="tenant.localhost").get("/")
    for response in (unknown, suspended):
        assert response["Content-Security-Policy"].startswith("default-src 'self'")
        assert response["X-Frame-Options"] == "DENY"
        assert response["X-Content-Type-Options"] == "nosniff"
