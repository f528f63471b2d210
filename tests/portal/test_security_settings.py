"""Security baseline and Celery reliability settings (PORTAL-27/28, TEN-9).

Deploy checks and the refusal to start without secrets run the real
`manage.py` in a subprocess with PORTAL_DEBUG unset; the settings module is
also executed in isolation (runpy) to inspect branches such as the Redis
transport options without disturbing the live settings.
"""

from __future__ import annotations

import base64
import inspect
import os
import runpy
import secrets
import subprocess  # noqa: S404 - runs this project's manage.py only
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.urls import URLPattern, URLResolver, get_resolver
from django_tenants.utils import tenant_context
from rest_framework.authentication import SessionAuthentication
from rest_framework.views import APIView

from portal.models import Job, Member
from portal.tasks_base import PlatformTask, TenantBoundTask
from tests.conftest import OWNER_PASSWORD

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_FILE = ROOT / "portal" / "settings.py"
CSP = (
    "default-src 'self'; object-src 'none'; base-uri 'self'; "
    "frame-ancestors 'none'; form-action 'self'"
)
FOUR_HOURS = 4 * 60 * 60
SIX_HOURS = 6 * 60 * 60
# PORTAL-28: only SAML ACS/SLS may be exempt; neither is routed yet. Add
# their URL names here when the SSO app mounts them.
# The SAML endpoints receive cross-site POSTs from identity providers; the
# message signature, the one-time RelayState token and the finish step's
# browser binding protect them instead (SSO-S12, SSO-S16).
# The EDI upload streams its body to the spool through its own upload
# handler, so Django's CSRF middleware must not read the body first; the
# view checks CSRF itself right after (Django's documented pattern for
# custom upload handlers; tests/edi/test_page.py refuses a POST without it).
ALLOWED_CSRF_EXEMPT: set[str] = {"sso:acs", "sso:sls", "edi:file-upload"}


def _master_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def _production_env(data_dir: Path, **overrides: str | None) -> dict[str, str]:
    """A non-debug environment with real secrets; None removes a variable."""
    from tests.worker import database_url_for_worker

    # The test database itself (embedded or not): production settings
    # refuse to start without DATABASE_URL.
    database_url = database_url_for_worker()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PORTAL_", "CELERY_"))
    }
    env.update(
        {
            "DATABASE_URL": str(database_url),
            "SECRET_KEY": secrets.token_urlsafe(64),
            "PORTAL_MASTER_KEY": _master_key(),
            "PORTAL_DATA_DIR": str(data_dir),
            "DJANGO_SETTINGS_MODULE": "portal.settings",
        }
    )
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed argv, no shell
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_deploy_check_passes_with_debug_off(tmp_path):
    result = _manage(
        "check", "--deploy", "--fail-level", "WARNING", env=_production_env(tmp_path)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize("missing", ["SECRET_KEY", "PORTAL_MASTER_KEY"])
def test_process_refuses_to_start_without_a_secret(tmp_path, missing):
    result = _manage("check", env=_production_env(tmp_path, **{missing: None}))
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert f"{missing} is required" in result.stderr
    # Nothing was generated in place of the missing secret.
    assert not (tmp_path / "secrets").exists()


def test_production_refuses_the_embedded_database(tmp_path):
    result = _manage("check", env=_production_env(tmp_path, DATABASE_URL=None))
    assert result.returncode != 0
    assert "DATABASE_URL is required when PORTAL_DEBUG is off" in result.stderr
    assert not (tmp_path / "pgdata").exists()


@pytest.fixture
def production_settings(tmp_path, monkeypatch) -> Callable[..., dict[str, Any]]:
    """Execute portal/settings.py under a given environment; return its names."""

    def load(**env: str) -> dict[str, Any]:
        for name in list(os.environ):
            if name.startswith(("PORTAL_", "CELERY_")):
                monkeypatch.delenv(name)
        for name, value in _production_env(tmp_path).items():
            monkeypatch.setenv(name, value)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return runpy.run_path(str(SETTINGS_FILE))

    return load


def test_redis_broker_gets_a_six_hour_visibility_timeout(production_settings):
    values = production_settings(CELERY_BROKER_URL="redis://127.0.0.1:6379/0")
    assert values["CELERY_VISIBILITY_TIMEOUT"] == SIX_HOURS
    assert values["CELERY_BROKER_TRANSPORT_OPTIONS"]["visibility_timeout"] == SIX_HOURS
    # Longer than any task may run, or Redis redelivers running tasks.
    assert values["CELERY_VISIBILITY_TIMEOUT"] > values["CELERY_TASK_TIME_LIMIT"]


def test_production_security_values(production_settings):
    values = production_settings()
    assert values["DEBUG"] is False
    assert values["SECURE_SSL_REDIRECT"] is True
    assert values["SECURE_REDIRECT_EXEMPT"] == [r"^healthz$", r"^readyz$"]
    assert values["SECURE_HSTS_SECONDS"] >= 31536000
    assert values["SESSION_COOKIE_SECURE"] is True
    assert values["CSRF_COOKIE_SECURE"] is True
    assert values["SESSION_COOKIE_HTTPONLY"] is True
    assert values["SESSION_COOKIE_SAMESITE"] == "Lax"
    assert values["X_FRAME_OPTIONS"] == "DENY"
    assert values["SECURE_CONTENT_TYPE_NOSNIFF"] is True
    assert values.get("SESSION_COOKIE_DOMAIN") is None


def test_celery_reliability_settings_are_pinned():
    from portal.celery import app

    assert settings.CELERY_TASK_ACKS_LATE is True
    assert settings.CELERY_WORKER_PREFETCH_MULTIPLIER == 1
    assert settings.CELERY_ACCEPT_CONTENT == ["json"]
    assert settings.CELERY_TASK_SERIALIZER == "json"
    assert settings.CELERY_RESULT_SERIALIZER == "json"
    assert settings.CELERY_TASK_TIME_LIMIT == FOUR_HOURS
    assert settings.CELERY_TASK_SOFT_TIME_LIMIT == FOUR_HOURS - 5 * 60
    assert settings.CELERY_WORKER_MAX_MEMORY_PER_CHILD
    assert settings.CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT == 60
    assert settings.CELERY_VISIBILITY_TIMEOUT == SIX_HOURS
    # Redelivery on a lost worker only per task, for idempotent job tasks.
    assert not getattr(settings, "CELERY_TASK_REJECT_ON_WORKER_LOST", False)
    # The app really reads them (namespace CELERY).
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.worker_prefetch_multiplier == 1
    assert list(conf.accept_content) == ["json"]
    assert conf.task_time_limit == FOUR_HOURS
    assert conf.task_soft_time_limit == FOUR_HOURS - 5 * 60
    assert (
        conf.worker_max_memory_per_child == settings.CELERY_WORKER_MAX_MEMORY_PER_CHILD
    )


def _registered_tasks() -> dict[str, Any]:
    from portal.celery import app

    app.loader.import_default_modules()
    return {
        name: task for name, task in app.tasks.items() if not name.startswith("celery.")
    }


def test_every_task_is_tenant_bound_with_schema_name_or_a_platform_task():
    tasks = _registered_tasks()
    assert "portal.audit_export_run" in tasks, sorted(tasks)
    wrong = []
    for name, task in sorted(tasks.items()):
        if isinstance(task, PlatformTask):
            continue
        params = inspect.signature(task.run).parameters
        if not isinstance(task, TenantBoundTask) or "schema_name" not in params:
            wrong.append(name)
    assert not wrong, "Tenant tasks need TenantBoundTask and schema_name: " + ", ".join(
        wrong
    )


def test_reject_on_worker_lost_only_on_job_tasks():
    for name, task in _registered_tasks().items():
        if getattr(task, "reject_on_worker_lost", False):
            # Such a task must be capped by its job row's attempts (TEN-9).
            params = inspect.signature(task.run).parameters
            assert "job_id" in params, name


@pytest.mark.parametrize("path", ["/", "/members/", "/audit/"])
def test_html_pages_carry_the_strict_csp(tenant_client, path):
    response = tenant_client.get(path)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert response["Content-Security-Policy"] == CSP
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"


def test_login_page_carries_the_strict_csp(anon_client):
    response = anon_client.get("/accounts/login/")
    assert response.status_code == 200
    assert response["Content-Security-Policy"] == CSP


def _walk(patterns: list[Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for entry in patterns:
        if isinstance(entry, URLResolver):
            namespace = f"{entry.namespace}:" if entry.namespace else ""
            yield from _walk(entry.url_patterns, prefix + namespace)
        elif isinstance(entry, URLPattern):
            yield prefix + (entry.name or str(entry.pattern)), entry.callback


def _is_drf(callback: Any) -> bool:
    cls = getattr(callback, "cls", None)
    return isinstance(cls, type) and issubclass(cls, APIView)


def _session_auth_enforces_csrf(callback: Any) -> bool:
    """DRF marks its views csrf_exempt and checks CSRF in SessionAuthentication."""
    view = callback.cls()
    for authenticator in view.get_authenticators():
        if isinstance(authenticator, SessionAuthentication):
            if (
                type(authenticator).enforce_csrf
                is not SessionAuthentication.enforce_csrf
            ):
                return False
    return True


@pytest.mark.parametrize("urlconf", ["portal.urls", "tenants.urls"])
def test_no_view_is_csrf_exempt(urlconf):
    routes = list(_walk(get_resolver(urlconf).url_patterns))
    assert routes
    exempt = set()
    for name, callback in routes:
        if not getattr(callback, "csrf_exempt", False):
            continue
        if _is_drf(callback) and _session_auth_enforces_csrf(callback):
            # Session callers are still CSRF-checked; bearer callers carry no cookie.
            continue
        exempt.add(name)
    assert exempt == (ALLOWED_CSRF_EXEMPT if urlconf == "portal.urls" else set())


def test_session_api_and_page_posts_without_csrf_token_are_refused(
    tenant, tenant_owner, client_for
):
    client = client_for(tenant_owner)
    client.handler.enforce_csrf_checks = True
    api = client.post("/api/v1/audit/exports/", {}, content_type="application/json")
    assert api.status_code == 403
    page = client.post(
        "/members/new/", {"email": "csrf@example.test", "role": "member"}
    )
    assert page.status_code == 403
    with tenant_context(tenant):
        assert not Member.objects.filter(email="csrf@example.test").exists()
        assert not Job.objects.filter(
            kind="audit_export", requester=tenant_owner
        ).exists()


def test_session_cookie_is_host_only(anon_client):
    assert settings.SESSION_COOKIE_DOMAIN is None
    assert settings.CSRF_COOKIE_DOMAIN is None
    response = anon_client.post(
        "/accounts/login/",
        {"username": "owner@tenant.test", "password": OWNER_PASSWORD},
    )
    assert response.status_code == 302, response.content[:300]
    cookie = response.cookies[settings.SESSION_COOKIE_NAME]
    assert cookie.value
    assert cookie["domain"] == ""
    assert cookie["httponly"]
    assert cookie["samesite"] == "Lax"


def test_pool_option_resets_the_search_path_of_a_returned_connection(
    production_settings,
):
    import psycopg

    from tests.worker import database_url_for_worker

    names = production_settings(PORTAL_DB_POOL="1")
    pool = names["DATABASES"]["default"]["OPTIONS"]["pool"]
    assert callable(pool["reset"])
    assert pool["max_lifetime"] > 0
    with psycopg.connect(database_url_for_worker(), autocommit=True) as conn:
        conn.execute("SET search_path TO t_tenant, public")
        pool["reset"](conn)
        shown = conn.execute("SHOW search_path").fetchone()
    assert shown is not None
    assert "t_tenant" not in shown[0]
