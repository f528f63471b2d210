"""Settings for the portal: one module for every machine (STYLE.md).

Every value that differs between machines comes from an environment variable
listed in DESIGN.md; new variables carry the PORTAL_ prefix. Secrets have no
defaults outside debug mode.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


DEBUG = _env_bool("PORTAL_DEBUG")
PORTAL_DATA_DIR = Path(os.environ.get("PORTAL_DATA_DIR") or BASE_DIR / "var").resolve()
PORTAL_BASE_DOMAIN = (os.environ.get("PORTAL_BASE_DOMAIN") or "localhost").lower()
PORTAL_PUBLIC_SCHEME = os.environ.get("PORTAL_PUBLIC_SCHEME") or (
    "http" if DEBUG else "https"
)
PORTAL_PUBLIC_PORT = os.environ.get("PORTAL_PUBLIC_PORT") or ""
if PORTAL_PUBLIC_SCHEME not in {"http", "https"}:
    raise ImproperlyConfigured("PORTAL_PUBLIC_SCHEME must be http or https.")
if PORTAL_PUBLIC_PORT and not PORTAL_PUBLIC_PORT.isdigit():
    raise ImproperlyConfigured("PORTAL_PUBLIC_PORT must be a port number.")


def _secret(name: str, generate: Any) -> str:
    """Read a secret from the environment, or (debug only) from the data dir.

    In debug mode a missing secret is generated once into PORTAL_DATA_DIR so
    that sessions and encrypted data survive restarts of `make run`.
    """
    value = os.environ.get(name)
    if value:
        return value
    if not DEBUG:
        raise ImproperlyConfigured(
            f"{name} is required when PORTAL_DEBUG is off (no default outside debug)."
        )
    path = PORTAL_DATA_DIR / "secrets" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(generate())
    return path.read_text().strip()


def _new_master_key() -> str:
    import base64

    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


SECRET_KEY = _secret("SECRET_KEY", lambda: secrets.token_urlsafe(50))
PORTAL_MASTER_KEY = _secret("PORTAL_MASTER_KEY", _new_master_key)
try:
    # Fail at boot, not at the first encryption, on a malformed key list.
    from portal.crypto import parse_master_keys

    parse_master_keys(PORTAL_MASTER_KEY)
except ValueError as _error:
    raise ImproperlyConfigured(f"PORTAL_MASTER_KEY: {_error}") from None

ALLOWED_HOSTS = ["*"]  # the Domain table is the allow list (TEN-2)

SHARED_APPS = [
    "django_tenants",
    "tenants",
    "django_celery_beat",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.admin",
    "django.contrib.messages",
    "django.contrib.staticfiles",
]
TENANT_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.admin",
    "portal",
    "sso",
    "edi",
    "crm",
    "pointdrive",
]
INSTALLED_APPS = SHARED_APPS + [app for app in TENANT_APPS if app not in SHARED_APPS]

TENANT_MODEL = "tenants.Tenant"
TENANT_DOMAIN_MODEL = "tenants.Domain"
TENANT_LIMIT_SET_CALLS = True
PUBLIC_SCHEMA_URLCONF = "tenants.urls"
ROOT_URLCONF = "portal.urls"
DATABASE_ROUTERS = ["django_tenants.routers.TenantSyncRouter"]
TENANT_BASE_SCHEMA = "template_tenant"
# TEN-4: new schemas are cloned from template_tenant, which bench/tenants.py
# showed twice as fast as migrating (docs/benchmarks.md).
TENANT_CREATION_FAKES_MIGRATIONS = _env_bool("PORTAL_CLONE_TENANTS", default=True)
TENANT_MULTIPROCESSING_MAX_PROCESSES = 2

MIDDLEWARE = [
    "portal.middleware.HealthCheckMiddleware",
    # Security headers wrap every answer, including the tenant middleware's
    # own 404 and "suspended" pages.
    "django.middleware.security.SecurityMiddleware",
    "portal.middleware.ContentSecurityPolicyMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "tenants.middleware.PortalTenantMiddleware",
    "portal.middleware.RequestContextMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "portal.middleware.MemberMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "portal.middleware.ApplicationErrorMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "portal.context_processors.portal",
            ],
        },
    },
]

WSGI_APPLICATION = "portal.wsgi.application"


def _pool_reset(conn: Any) -> None:
    """Reset a pooled connection before the next borrower gets it (TEN-11).

    Without it, raw driver calls saw the previous borrower's search_path.
    psycopg's pool wants a callable, not a dotted path.
    """
    conn.execute("RESET search_path")


def _database() -> dict[str, Any]:
    url = os.environ.get("DATABASE_URL")
    if url:
        config: dict[str, Any] = dict(dj_database_url.parse(url))
    elif not DEBUG:
        raise ImproperlyConfigured(
            "DATABASE_URL is required when PORTAL_DEBUG is off: the embedded "
            "PostgreSQL is for development only."
        )
    else:
        from portal import devdb

        config = devdb.database_settings(PORTAL_DATA_DIR)
    config["ENGINE"] = "django_tenants.postgresql_backend"
    config["CONN_MAX_AGE"] = 0
    options = config.setdefault("OPTIONS", {})
    if _env_bool("PORTAL_DB_POOL"):
        # TEN-11: reset the search_path on return, cap connection lifetime.
        options["pool"] = {
            "min_size": 1,
            "max_size": 10,
            "max_lifetime": 600,
            "reset": _pool_reset,
        }
    return config


DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_VALIDATION = "django.contrib.auth.password_validation"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": f"{_VALIDATION}.UserAttributeSimilarityValidator"},
    {
        "NAME": f"{_VALIDATION}.MinimumLengthValidator",
        "OPTIONS": {"min_length": 12},
    },
    {"NAME": f"{_VALIDATION}.CommonPasswordValidator"},
    {"NAME": f"{_VALIDATION}.NumericPasswordValidator"},
]
# Argon2id first (OWASP's first choice; a third of PBKDF2's time here at
# Django's defaults); PBKDF2 stays so older hashes still verify and upgrade.
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
    "django.contrib.auth.hashers.ScryptPasswordHasher",
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"

LANGUAGE_CODE = "en-gb"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = PORTAL_DATA_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "portal" / "static"]
MEDIA_ROOT = str(PORTAL_DATA_DIR / "media")
MEDIA_URL = "/media/"  # never served directly: files go through views (TEN-13)
STORAGES = {
    "default": {"BACKEND": "django_tenants.files.storage.TenantFileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage",
    },
}
MULTITENANT_RELATIVE_MEDIA_ROOT = ""

CACHES = {
    "default": (
        {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": os.environ["PORTAL_CACHE_URL"],
            "KEY_FUNCTION": "django_tenants.cache.make_key",
        }
        if os.environ.get("PORTAL_CACHE_URL")
        else {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "KEY_FUNCTION": "django_tenants.cache.make_key",
        }
    )
}

# Sessions: host-only cookies, stored in the tenant's schema (PORTAL-05).
SESSION_ENGINE = "portal.sessions"
SESSION_COOKIE_AGE = 12 * 60 * 60
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_HTTPONLY = True
CSRF_COOKIE_SAMESITE = "Lax"
CSRF_FAILURE_VIEW = "portal.views.csrf_failure"

# Security baseline (PORTAL-27). Health endpoints stay reachable over HTTP.
SECURE_SSL_REDIRECT = not DEBUG and not _env_bool("PORTAL_NO_SSL_REDIRECT")
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SECURE_HSTS_SECONDS = 0 if DEBUG else 31536000
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
PORTAL_TRUSTED_PROXIES = [
    p.strip()
    for p in os.environ.get("PORTAL_TRUSTED_PROXIES", "").split(",")
    if p.strip()
]
if PORTAL_TRUSTED_PROXIES:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
PORTAL_CSP = (
    "default-src 'self'; object-src 'none'; base-uri 'self'; "
    "frame-ancestors 'none'; form-action 'self'"
)

# Login throttling (PORTAL-29).
PORTAL_LOGIN_MAX_FAILURES = 5
PORTAL_LOGIN_IP_MAX_FAILURES = 30
PORTAL_LOGIN_LOCK_SECONDS = 15 * 60

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "portal.api.exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Portal API",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

EMAIL_URL = os.environ.get("EMAIL_URL") or "console://"
if EMAIL_URL.startswith("console:"):
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
elif EMAIL_URL.startswith("locmem:"):
    EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
else:
    from urllib.parse import unquote, urlparse

    _mail = urlparse(EMAIL_URL)
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_HOST = _mail.hostname or "localhost"
    EMAIL_PORT = _mail.port or 25
    EMAIL_HOST_USER = unquote(_mail.username or "")
    EMAIL_HOST_PASSWORD = unquote(_mail.password or "")
    EMAIL_USE_TLS = _mail.scheme in {"smtp+tls", "submission"}
    EMAIL_USE_SSL = _mail.scheme == "smtps"
DEFAULT_FROM_EMAIL = (
    os.environ.get("PORTAL_FROM_EMAIL") or f"portal@{PORTAL_BASE_DOMAIN}"
)

# Celery (TEN-8, TEN-9).
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or "filesystem://"
_BROKER_DIR = PORTAL_DATA_DIR / "broker"
CELERY_VISIBILITY_TIMEOUT = 6 * 60 * 60
if CELERY_BROKER_URL.startswith("filesystem:"):
    # kombu's filesystem transport needs its folders to exist.
    for _folder in ("queue", "processed", "control"):
        (_BROKER_DIR / _folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {
        "data_folder_in": str(_BROKER_DIR / "queue"),
        "data_folder_out": str(_BROKER_DIR / "queue"),
        "processed_folder": str(_BROKER_DIR / "processed"),
        # Exchange tables; kombu's default is ./control in the working dir.
        "control_folder": str(_BROKER_DIR / "control"),
        "store_processed": False,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_VISIBILITY_TIMEOUT}
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_MAX_MEMORY_PER_CHILD = 512_000  # KiB
CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT = 60
CELERY_TASK_TIME_LIMIT = 4 * 60 * 60
CELERY_TASK_SOFT_TIME_LIMIT = CELERY_TASK_TIME_LIMIT - 5 * 60
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BEAT_SCHEDULE: dict[str, Any] = {
    "tenants.purge_due": {"task": "tenants.purge_due", "schedule": 6 * 60 * 60},
    "tenants.health_refresh": {"task": "tenants.health_refresh", "schedule": 15 * 60},
    "portal.jobs_reap (all tenants)": {
        "task": "portal.fan_out",
        "schedule": 5 * 60,
        "kwargs": {"task_name": "portal.jobs_reap"},
    },
    "portal.daily_upkeep (all tenants)": {
        "task": "portal.fan_out",
        "schedule": 24 * 60 * 60,
        "kwargs": {"task_name": "portal.daily_upkeep"},
    },
    # Public-schema upkeep (SFTP sign-in counters), once, not per tenant.
    "portal.platform_daily": {
        "task": "portal.platform_daily",
        "schedule": 24 * 60 * 60,
    },
}

# SSO (specs/sso.md). The drift is set on python3-saml once at startup.
SSO_CLOCK_DRIFT_SECONDS = 180
SSO_SP_KEY_BITS = 3072
SSO_ACS_IP_PER_MINUTE = 120
SSO_ACS_IP_REJECTIONS_PER_MINUTE = 20
SSO_ACS_TENANT_PER_MINUTE = 1200
CELERY_BEAT_SCHEDULE["sso.daily (all tenants)"] = {
    "task": "portal.fan_out",
    "schedule": 24 * 60 * 60,
    "kwargs": {"task_name": "sso.daily"},
}
CELERY_TASK_ALWAYS_EAGER = _env_bool("PORTAL_CELERY_EAGER")

LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "tenant_context": {"()": "django_tenants.log.TenantContextFilter"},
    },
    "formatters": {
        "portal": {
            "format": (
                "%(asctime)s %(levelname)s [%(schema_name)s] %(name)s: %(message)s"
            ),
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "filters": ["tenant_context"],
            "formatter": "portal",
        },
    },
    "root": {
        "handlers": ["console"],
        "level": os.environ.get("PORTAL_LOG_LEVEL", "INFO"),
    },
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # Its start/stop chatter is noise; warnings still show.
        "pgserver": {"level": "WARNING"},
    },
}

# EDI (edi.md §4): one size limit for every channel.
EDI_MAX_FILE_BYTES = int(os.environ.get("EDI_MAX_FILE_BYTES") or 256 * 1024 * 1024)
# The SFTP address /edi/ shows to admins (edi.selectors): the host defaults to
# the tenant's primary domain, the port to 2222 (the sftpd default).
PORTAL_SFTP_HOST = os.environ.get("PORTAL_SFTP_HOST", "")
PORTAL_SFTP_PORT = int(os.environ.get("PORTAL_SFTP_PORT") or 0)
# Test setting only (EDI-P14's crash tests): the worker SIGKILLs itself at
# this point of an import: parsing, before_commit or after_commit_before_ack.
EDI_TEST_CRASH_AT = os.environ.get("EDI_TEST_CRASH_AT", "")
