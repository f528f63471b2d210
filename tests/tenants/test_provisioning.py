"""Provisioning through `provision_tenant` and `tenant_provision` (TEN-3, TEN-4).

Successful provisioning creates real schemas and commits, so those tests use
`django_db_blocker.unblock()` instead of the rolled-back `db` fixture, use
unique slugs (other test processes share the database) and drop what they
made. Input that is refused never reaches a write, so those tests run in the
rolled-back `db` transaction and check that nothing was created.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client
from django_tenants.utils import schema_context

from portal.db import use_public_schema
from portal.errors import ApplicationError, Conflict
from portal.models import Member
from tenants.models import Domain, PlatformAuditEvent, Tenant, TenantStatus
from tenants.services import schema_for_slug, tenant_provision
from tests.conftest import OWNER_PASSWORD, drop_tenant_now

STRONG_PASSWORD = "a perfectly strong passphrase 31"  # noqa: S105


def _slug(prefix: str = "p") -> str:
    return prefix + uuid.uuid4().hex[:10]


def _schema_exists(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM pg_namespace WHERE lower(nspname) = lower(%s)", [name]
        )
        return cursor.fetchone() is not None


def _provision(*args: str, stdin: str | None = None, **options: Any) -> tuple[str, str]:
    """Run the command; return (stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    call_command("provision_tenant", *args, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


def _assert_nothing_created(slug: str, domain: str | None = None) -> None:
    with schema_context("public"):
        # The platform's own row ("public") and the clone template
        # ("template") hold reserved slugs; neither is new.
        tenants = Tenant.objects.exclude(schema_name="public").exclude(
            status=TenantStatus.TEMPLATE
        )
        assert not tenants.filter(slug__iexact=slug).exists()
        assert not tenants.filter(schema_name__iexact=schema_for_slug(slug)).exists()
        assert not PlatformAuditEvent.objects.filter(
            tenant_slug__iexact=slug, action__startswith="tenant.provision"
        ).exists()
        if domain:
            assert not Domain.objects.filter(
                domain__iexact=domain, tenant__slug__iexact=slug
            ).exists()
        assert not _schema_exists(schema_for_slug(slug))


def _sign_in(host: str, email: str, password: str) -> Client:
    client = Client(HTTP_HOST=host)
    response = client.post(
        "/accounts/login/", {"username": email, "password": password}
    )
    assert response.status_code == 302, response.content[:500]
    assert response["Location"] == "/"
    assert client.get("/").status_code == 200
    return client


def _state(slug: str) -> dict[str, Any]:
    """Everything a refused rerun must leave untouched."""
    from django_tenants.utils import tenant_context

    with schema_context("public"):
        tenant = Tenant.objects.get(slug=slug)
        state: dict[str, Any] = {
            "tenant": Tenant.objects.filter(pk=tenant.pk).values().get(),
            "domains": sorted(
                Domain.objects.filter(tenant=tenant).values_list("domain")
            ),
            "audit": PlatformAuditEvent.objects.filter(tenant_slug=slug).count(),
        }
    with tenant_context(tenant):
        state["members"] = sorted(
            Member.objects.values_list("email", "role", "status", "user__password")
        )
    use_public_schema()
    return state


@pytest.fixture
def committed(
    django_db_setup: Any, django_db_blocker: Any
) -> Iterator[Callable[[str], str]]:
    """Unblock real commits; drop every tenant registered by slug afterwards."""
    slugs: list[str] = []

    def register(slug: str) -> str:
        slugs.append(slug)
        return slug

    with django_db_blocker.unblock():
        try:
            yield register
        finally:
            use_public_schema()
            for slug in slugs:
                with schema_context("public"):
                    tenant = Tenant.objects.filter(slug=slug).first()
                if tenant is not None:
                    drop_tenant_now(tenant.pk)
                with connection.cursor() as cursor:
                    cursor.execute(
                        f'DROP SCHEMA IF EXISTS "{schema_for_slug(slug)}" CASCADE'
                    )


# Successful runs (real schemas, committed) ---------------------------------------


@pytest.mark.schema
def test_command_prints_json_and_the_owner_signs_in(committed):
    slug = committed(_slug("beta"))
    email = f"Owner@{slug}.test"
    out, err = _provision(slug, name="Beta Ltd", owner_email=email)

    lines = out.splitlines()
    assert len(lines) == 1, out
    data = json.loads(lines[0])
    assert set(data) == {"slug", "url", "owner_email", "owner_password"}
    assert data["slug"] == slug
    assert data["url"].startswith(f"http://{slug}.localhost")
    assert data["owner_email"] == email
    assert len(data["owner_password"]) >= 20
    assert "provision: schema" in err
    assert "provision: done" in err
    assert data["owner_password"] not in err

    with schema_context("public"):
        tenant = Tenant.objects.get(slug=slug)
        assert tenant.status == TenantStatus.ACTIVE
        assert tenant.schema_name == schema_for_slug(slug)
        assert list(tenant.domains.values_list("domain", "is_primary")) == [
            (f"{slug}.localhost", True)
        ]
        actions = set(
            PlatformAuditEvent.objects.filter(tenant_slug=slug).values_list(
                "action", flat=True
            )
        )
    assert "tenant.provisioned" in actions
    _sign_in(f"{slug}.localhost", email.lower(), data["owner_password"])


@pytest.mark.schema
def test_rerun_for_an_active_slug_exits_1_and_changes_nothing(committed):
    slug = committed(_slug("again"))
    _provision(slug, name="Again Ltd", owner_email=f"owner@{slug}.test")
    before = _state(slug)

    with pytest.raises(CommandError, match="already exists") as excinfo:
        _provision(slug, name="Renamed Ltd", owner_email=f"someone@{slug}.test")
    assert excinfo.value.returncode == 1
    with pytest.raises(Conflict):
        tenant_provision(
            slug=slug,
            name="Renamed Ltd",
            owner_email=f"someone@{slug}.test",
            domain=f"extra-{slug}.localhost",
            owner_password=STRONG_PASSWORD,
        )
    assert _state(slug) == before


@pytest.mark.schema
def test_password_from_stdin_custom_domain_and_seat_limit(committed, monkeypatch):
    slug = committed(_slug("stdin"))
    domain = f"portal.{slug}.example.test"
    email = f"owner@{slug}.test"
    monkeypatch.setattr("sys.stdin", io.StringIO(STRONG_PASSWORD + "\n"))
    out, _ = _provision(
        slug,
        name="Stdin Ltd",
        owner_email=email,
        domain=domain.upper(),
        seat_limit=5,
        owner_password_stdin=True,
    )
    data = json.loads(out)
    assert data["owner_password"] == STRONG_PASSWORD
    assert data["url"].startswith(f"http://{domain}")
    with schema_context("public"):
        tenant = Tenant.objects.get(slug=slug)
        assert tenant.seat_limit == 5
        assert list(tenant.domains.values_list("domain", flat=True)) == [domain]
    _sign_in(domain, email, STRONG_PASSWORD)
    # The default host was not registered, so it is not a tenant host.
    assert Client(HTTP_HOST=f"{slug}.localhost").get("/").status_code == 404


@pytest.mark.schema
@pytest.mark.parametrize("killed_in", ["migration", "after_schema", "after_domain"])
def test_a_run_killed_after_the_schema_step_completes_when_rerun(committed, killed_in):
    slug = committed(_slug("kill"))
    email = f"owner@{slug}.test"
    # Recreate what the first steps of a killed run leave behind.
    with schema_context("public"):
        tenant = Tenant(
            schema_name=schema_for_slug(slug),
            slug=slug,
            name="Killed Ltd",
            status=TenantStatus.PROVISIONING,
        )
        tenant.save()
        if killed_in == "migration":
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE SCHEMA "{tenant.schema_name}"')
        else:
            tenant.create_schema(check_if_exists=True, verbosity=0)
        if killed_in == "after_domain":
            Domain.objects.create(
                domain=f"{slug}.localhost", tenant=tenant, is_primary=True
            )
    use_public_schema()
    # A half-provisioned tenant is not served.
    assert Client(HTTP_HOST=f"{slug}.localhost").get("/").status_code == 404

    out, _ = _provision(slug, name="Killed Ltd", owner_email=email)
    data = json.loads(out)

    with schema_context("public"):
        tenant = Tenant.objects.get(slug=slug)
        assert tenant.status == TenantStatus.ACTIVE
        assert tenant.domains.count() == 1
    _sign_in(f"{slug}.localhost", email, data["owner_password"])
    # A second rerun is refused now that the tenant is active.
    with pytest.raises(CommandError) as excinfo:
        _provision(slug, name="Killed Ltd", owner_email=email)
    assert excinfo.value.returncode == 1


@pytest.mark.schema
def test_service_returns_the_result_and_the_owner_signs_in(committed):
    slug = committed(_slug("svc"))
    result = tenant_provision(
        slug=slug,
        name="Service Ltd",
        owner_email=f"owner@{slug}.test",
        owner_password=OWNER_PASSWORD,
    )
    use_public_schema()
    assert result.tenant.slug == slug
    assert result.as_json()["owner_password"] == OWNER_PASSWORD
    _sign_in(f"{slug}.localhost", f"owner@{slug}.test", OWNER_PASSWORD)


# Refused input: nothing is written (rolled-back transaction) ------------------------


@pytest.mark.parametrize(
    ("slug", "message"),
    [
        ("Beta", "lowercase"),
        ("be_ta", "lowercase"),
        ("b", "2-40"),
        ("b" * 41, "2-40"),
        ("1beta", "starting with a letter"),
        ("-beta", "starting with a letter"),
        ("beta!", "lowercase"),
        ("", "2-40"),
        ("www", "reserved"),
        ("admin", "reserved"),
        ("public", "reserved"),
        ("api", "reserved"),
        ("static", "reserved"),
        ("media", "reserved"),
        ("template", "reserved"),
    ],
)
def test_bad_slug_is_refused_and_nothing_is_created(db, slug, message):
    with pytest.raises(ApplicationError, match=message):
        tenant_provision(slug=slug, name="Bad Ltd", owner_email="owner@bad.test")
    # argparse reads a leading "-" as an option, so only the service sees it.
    if not slug.startswith("-"):
        with pytest.raises(CommandError, match=message) as excinfo:
            _provision(slug, name="Bad Ltd", owner_email="owner@bad.test")
        assert excinfo.value.returncode == 1
    _assert_nothing_created(slug, f"{slug}.localhost")


@pytest.mark.parametrize(
    ("domain", "message"),
    [
        ("other.localhost", "already in use"),
        ("OTHER.localhost", "already in use"),
        ("localhost", "base domain"),
        ("LOCALHOST.", "base domain"),
        ("bad_host.test", "not a valid host"),
        ("-bad.test", "not a valid host"),
        ("bad host.test", "not a valid host"),
        ("10.0.0.1", "not a valid host"),
        ("127.0.0.1", "not a valid host"),
        ("[::1]", "not a valid host"),
    ],
)
def test_bad_or_taken_domain_is_refused_and_nothing_is_created(
    other_tenant, domain, message
):
    slug = _slug("dom")
    with pytest.raises(CommandError, match=message) as excinfo:
        _provision(slug, name="Dom Ltd", owner_email="owner@dom.test", domain=domain)
    assert excinfo.value.returncode == 1
    _assert_nothing_created(slug)
    with schema_context("public"):
        assert list(
            Domain.objects.filter(domain__iexact="other.localhost").values_list(
                "tenant__slug", flat=True
            )
        ) == ["other"]


def test_default_domain_taken_by_another_tenant_is_refused(tenant):
    # `tenant.localhost` is tenant's host; a new slug cannot claim it.
    slug = _slug("dup")
    with pytest.raises(ApplicationError, match="already in use"):
        tenant_provision(
            slug=slug,
            name="Dup Ltd",
            owner_email="o@dup.test",
            domain="tenant.localhost",
        )
    _assert_nothing_created(slug)


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ("short\n", "too weak"),
        ("password\n", "too weak"),
        ("12345678901234\n", "too weak"),
        ("\n", "No password"),
        ("", "No password"),
    ],
)
def test_weak_or_missing_stdin_password_is_refused_first(
    db, monkeypatch, stdin, message
):
    slug = _slug("weak")
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    with pytest.raises(CommandError, match=message) as excinfo:
        _provision(
            slug,
            name="Weak Ltd",
            owner_email="owner@weak.test",
            owner_password_stdin=True,
        )
    assert excinfo.value.returncode == 1
    _assert_nothing_created(slug, f"{slug}.localhost")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"owner_email": "not-an-email"}, "valid email"),
        ({"name": "   "}, "name"),
        ({"seat_limit": -1}, "negative"),
    ],
)
def test_other_bad_input_is_refused_and_nothing_is_created(db, fields, message):
    slug = _slug("inp")
    kwargs = {
        "slug": slug,
        "name": "Input Ltd",
        "owner_email": "owner@inp.test",
    } | fields
    with pytest.raises(ApplicationError, match=message):
        tenant_provision(**kwargs)
    _assert_nothing_created(slug)


def test_active_slug_via_command_exits_1(tenant):
    with pytest.raises(CommandError, match="already exists") as excinfo:
        _provision("tenant", name="Tenant Ltd", owner_email="owner@tenant.test")
    assert excinfo.value.returncode == 1


# TEN-4: a cloned schema equals a migrated one ------------------------------------


def _catalog(schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """The schema's structure, with the schema name itself left out."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_name, column_name, data_type, is_nullable, "
            "coalesce(character_maximum_length, -1) "
            "FROM information_schema.columns WHERE table_schema = %s",
            [schema],
        )
        columns = cursor.fetchall()
        cursor.execute(
            f'SELECT app, name FROM "{schema}".django_migrations'  # noqa: S608 - ours
        )
        migrations = cursor.fetchall()
        cursor.execute(
            "SELECT trigger_name, event_manipulation, event_object_table, "
            "action_statement FROM information_schema.triggers "
            "WHERE trigger_schema = %s",
            [schema],
        )
        triggers = [(*row[:3], row[3].replace(f"{schema}.", "")) for row in cursor]
        cursor.execute(
            "SELECT conrelid::regclass::text, contype, pg_get_constraintdef(oid) "
            "FROM pg_constraint WHERE connamespace = %s::regnamespace",
            [schema],
        )
        constraints = [
            (row[0].replace(f"{schema}.", ""), row[1], row[2].replace(f"{schema}.", ""))
            for row in cursor
        ]
        cursor.execute(
            "SELECT conname FROM pg_constraint WHERE connamespace = %s::regnamespace",
            [schema],
        )
        constraint_names = cursor.fetchall()
        cursor.execute(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = %s", [schema]
        )
        index_count = cursor.fetchall()
        cursor.execute(
            "SELECT tablename, indexname FROM pg_indexes WHERE schemaname = %s "
            "ORDER BY 1, 2",
            [schema],
        )
        index_names = cursor.fetchall()
        cursor.execute(
            "SELECT table_name, column_name, coalesce(column_default, ''), "
            "is_identity, coalesce(identity_generation, ''), is_generated, "
            "coalesce(generation_expression, '') "
            "FROM information_schema.columns WHERE table_schema = %s",
            [schema],
        )
        column_details = [
            tuple(str(v).replace(f"{schema}.", "") for v in row) for row in cursor
        ]
        cursor.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = %s", [schema]
        )
        index_defs = [(row[0].replace(f"{schema}.", ""),) for row in cursor]
        cursor.execute(
            "SELECT pg_get_functiondef(oid) FROM pg_proc "
            "WHERE pronamespace = %s::regnamespace",
            [schema],
        )
        functions = [(row[0].replace(f"{schema}.", ""),) for row in cursor]
        cursor.execute(
            f'SELECT ct.app_label, ct.model, p.codename FROM "{schema}".auth_permission p '  # noqa: S608, E501
            f'JOIN "{schema}".django_content_type ct ON ct.id = p.content_type_id'
        )
        permissions = cursor.fetchall()
    parts = {
        "columns": columns,
        "migrations": migrations,
        "triggers": triggers,
        "constraints": constraints,
        "constraint_names": constraint_names,
        "index_count": index_count,
        "index_names": index_names,
        "column_details": column_details,
        "index_defs": index_defs,
        "functions": functions,
        "permissions": permissions,
    }
    return {name: sorted(rows) for name, rows in parts.items()}


@pytest.fixture(scope="module")
def migrated_and_cloned(
    django_db_setup: Any, django_db_blocker: Any
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Catalogs of a migrated tenant and of one cloned from a fresh template."""
    from django.test import override_settings

    # A private template: a shared one could be stale under --reuse-db.
    slugs = {
        "template": _slug("tmpl"),
        "migrated": _slug("mig"),
        "cloned": _slug("cln"),
    }
    with django_db_blocker.unblock():
        try:
            with schema_context("public"):
                template = Tenant(
                    schema_name=schema_for_slug(slugs["template"]),
                    slug=slugs["template"],
                    name="Template",
                    status=TenantStatus.TEMPLATE,
                )
                template.save()
                with override_settings(TENANT_CREATION_FAKES_MIGRATIONS=False):
                    template.create_schema(check_if_exists=True, verbosity=0)
            with override_settings(TENANT_CREATION_FAKES_MIGRATIONS=False):
                tenant_provision(
                    slug=slugs["migrated"], name="Migrated", owner_email="o@mig.test"
                )
            with override_settings(
                TENANT_CREATION_FAKES_MIGRATIONS=True,
                TENANT_BASE_SCHEMA=template.schema_name,
            ):
                result = tenant_provision(
                    slug=slugs["cloned"], name="Cloned", owner_email="o@cln.test"
                )
            use_public_schema()
            # The clone is a working tenant, not just a matching catalog.
            _sign_in(
                f"{slugs['cloned']}.localhost", "o@cln.test", result.owner_password
            )
            use_public_schema()
            yield (
                _catalog(schema_for_slug(slugs["migrated"])),
                _catalog(schema_for_slug(slugs["cloned"])),
            )
        finally:
            use_public_schema()
            for slug in slugs.values():
                with schema_context("public"):
                    tenant = Tenant.objects.filter(slug=slug).first()
                if tenant is not None:
                    drop_tenant_now(tenant.pk)


@pytest.mark.schema
@pytest.mark.parametrize(
    "part",
    [
        "columns",
        "migrations",
        "triggers",
        "constraints",
        "index_count",
        "column_details",
        "index_defs",
        "functions",
        "permissions",
    ],
)
def test_cloned_tenant_matches_a_migrated_tenant(migrated_and_cloned, part):
    migrated, cloned = migrated_and_cloned
    assert migrated["migrations"], "the migrated tenant recorded no migrations"
    assert cloned[part] == migrated[part]


@pytest.mark.schema
def test_cloned_tenant_keeps_constraint_names(migrated_and_cloned):
    migrated, cloned = migrated_and_cloned
    assert cloned["constraint_names"] == migrated["constraint_names"]
    assert cloned["index_names"] == migrated["index_names"]


def test_copied_schema_continues_its_sequences_after_the_seeded_rows(tenant):
    """Session tenants are made from the template snapshot (the default)."""
    from django.conf import settings
    from django.contrib.auth.models import Permission
    from django.contrib.contenttypes.models import ContentType
    from django_tenants.utils import tenant_context

    assert settings.TENANT_CREATION_FAKES_MIGRATIONS
    with tenant_context(tenant):
        highest = max(ContentType.objects.values_list("pk", flat=True))
        probe = ContentType.objects.create(app_label="zz_probe", model="probe")
        assert probe.pk > highest
        permission = Permission.objects.create(
            name="probe", codename="probe", content_type=probe
        )
        assert permission.pk > 0


@pytest.mark.schema
def test_a_leftover_schema_is_never_adopted(committed):
    slug = committed(_slug("left"))
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE SCHEMA "{schema_for_slug(slug)}"')
    with pytest.raises(Conflict, match="already exists without a tenant"):
        tenant_provision(slug=slug, name="Left Ltd", owner_email="o@left.test")
    with schema_context("public"):
        assert not Tenant.objects.filter(slug=slug).exists()
