"""Shared fixtures: two session-scoped tenant schemas, members, clients.

TEN-7: the schemas `tenant` (tenant.localhost) and `other` (other.localhost)
are created once per database (and kept by --reuse-db); every test runs in
a transaction that is rolled back. Tests that create or drop schemas, or
need committed data (real workers), are marked and clean up after
themselves.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from django_tenants.utils import schema_context, tenant_context

from portal.db import use_public_schema
from portal.models import Member
from portal.roles import Role
from tenants.models import Tenant

TENANT_SLUG = "tenant"
OTHER_SLUG = "other"
OWNER_PASSWORD = "correct horse battery staple 9"  # noqa: S105


def pytest_configure(config: pytest.Config) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


def _ensure_tenant(slug: str) -> None:
    from tenants.services import tenant_provision

    with schema_context("public"):
        if Tenant.objects.filter(slug=slug, status="active").exists():
            return
    tenant_provision(
        slug=slug,
        name=f"{slug.title()} Ltd",
        owner_email=f"owner@{slug}.test",
        domain=f"{slug}.localhost",
        owner_password=OWNER_PASSWORD,
    )


@pytest.fixture(scope="session")
def django_db_setup(
    request: pytest.FixtureRequest,
    django_test_environment: None,
    django_db_blocker: Any,
    django_db_keepdb: bool,
    django_db_createdb: bool,
    django_db_modify_db_settings: None,
) -> Iterator[None]:
    """Set up the test database, then the two shared tenants, once.

    Replaces pytest-django's fixture, which sets up only the databases that
    the selected tests mark with `db`. A run selecting only commit-style
    tests (committed_tenant, real workers) would otherwise write to the
    real database. --reuse-db keeps the tenants between runs.
    """
    from django.test.utils import setup_databases, teardown_databases

    from tenants.services import public_tenant_ensure

    keepdb = django_db_keepdb and not django_db_createdb
    with django_db_blocker.unblock():
        db_cfg = setup_databases(
            verbosity=request.config.option.verbose,
            interactive=False,
            aliases={"default"},  # type: ignore[arg-type]
            serialized_aliases=set(),
            keepdb=keepdb,
        )
        name = str(connection.settings_dict["NAME"])
        if not name.startswith("test_"):
            pytest.exit(f"refusing to run tests against {name!r}", returncode=3)
        public_tenant_ensure()
        _ensure_tenant(TENANT_SLUG)
        _ensure_tenant(OTHER_SLUG)
        use_public_schema()
    yield
    if not django_db_keepdb:
        with django_db_blocker.unblock():
            teardown_databases(db_cfg, verbosity=request.config.option.verbose)


def _get_tenant(slug: str) -> Tenant:
    with schema_context("public"):
        return Tenant.objects.get(slug=slug)


@pytest.fixture
def tenant(db: None) -> Iterator[Tenant]:
    yield _get_tenant(TENANT_SLUG)
    use_public_schema()


@pytest.fixture
def other_tenant(db: None) -> Tenant:
    return _get_tenant(OTHER_SLUG)


MemberMaker = Callable[..., Member]


@pytest.fixture
def make_member(tenant: Tenant) -> MemberMaker:
    """Create a member (with a password login) in a tenant (default: tenant)."""
    from tests.factories import member_with_login

    def make(
        role: str = Role.MEMBER, *, in_tenant: Tenant | None = None, **kw: Any
    ) -> Member:
        with tenant_context(in_tenant or tenant):
            return member_with_login(role=role, **kw)

    return make


@pytest.fixture
def tenant_owner(tenant: Tenant) -> Member:
    with tenant_context(tenant):
        return Member.objects.get(email=f"owner@{TENANT_SLUG}.test")


@pytest.fixture
def tenant_admin(make_member: MemberMaker) -> Member:
    return make_member(Role.ADMIN)


ClientMaker = Callable[..., Client]


@pytest.fixture
def client_for(tenant: Tenant) -> ClientMaker:
    """A client on a tenant's host, signed in as `member` (or anonymous)."""

    def make(member: Member | None = None, *, on: Tenant | None = None) -> Client:
        target = on or tenant
        host = target.domains.first().domain  # type: ignore[union-attr]
        client = Client(HTTP_HOST=host)
        if member is not None:
            with tenant_context(target):
                client.force_login(member.user)  # type: ignore[arg-type]
                session = client.session
                session["auth_method"] = "password"
                session.save()
                from portal.models import MemberSession

                MemberSession.objects.get_or_create(
                    session_key=session.session_key, defaults={"member": member}
                )
        return client

    return make


@pytest.fixture
def tenant_client(client_for: ClientMaker, tenant_owner: Member) -> Client:
    """The tenant's owner, signed in, on the tenant's host."""
    return client_for(tenant_owner)


@pytest.fixture
def anon_client(client_for: ClientMaker) -> Client:
    return client_for(None)


def ci_requires(service: str) -> None:
    """Fail (not skip) when CI=true and a needed service is missing."""
    message = f"{service} is not available"
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (CI=true: services are required)")
    pytest.skip(message)


@contextmanager
def committed_tenant_provisioned(
    django_db_blocker: Any, *, name: str = "Committed Ltd"
) -> Iterator[Tenant]:
    """Provision a fresh tenant whose writes really commit; drop it after.

    The body of `committed_tenant`, for tests that need a second one.
    """
    import uuid

    from tenants.services import tenant_provision

    slug = "c" + uuid.uuid4().hex[:10]
    with django_db_blocker.unblock():
        try:
            result = tenant_provision(
                slug=slug,
                name=name,
                owner_email=f"owner@{slug}.test",
                owner_password=OWNER_PASSWORD,
            )
            use_public_schema()
            yield result.tenant
        finally:
            use_public_schema()
            with schema_context("public"):
                tenant_id = (
                    Tenant.objects.filter(slug=slug)
                    .values_list("pk", flat=True)
                    .first()
                )
            if tenant_id is not None:
                drop_tenant_now(tenant_id)


@pytest.fixture
def committed_tenant(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Tenant]:
    """A fresh tenant whose writes really commit (for real workers, races).

    Do not combine with `db`-based fixtures in one test: those wrap the
    test in a transaction other connections cannot see. The schema is
    dropped afterwards (platform audit rows stay: they are append-only).
    pytest-django's transactional flush is not used because it TRUNCATEs,
    which the append-only audit trigger refuses.
    """
    with committed_tenant_provisioned(django_db_blocker) as tenant:
        yield tenant


def drop_tenant_now(tenant_id: int) -> None:
    """Remove a test tenant's schema, media, domains and row immediately."""
    import shutil
    from pathlib import Path

    with schema_context("public"):
        tenant = Tenant.objects.filter(pk=tenant_id).first()
        if tenant is None:
            return
        with connection.cursor() as cursor:
            cursor.execute(f'DROP SCHEMA IF EXISTS "{tenant.schema_name}" CASCADE')
        shutil.rmtree(
            Path(settings.MEDIA_ROOT) / tenant.schema_name, ignore_errors=True
        )
        tenant.domains.all().delete()
        Tenant.objects.filter(pk=tenant_id).delete()


@pytest.fixture(autouse=True)
def _fresh_keyring() -> Iterator[None]:
    """Each test rolls back its data keys, so no unwrapped key may outlive it."""
    from portal.services.keyring import keyring_forget

    keyring_forget()
    yield
    keyring_forget()
