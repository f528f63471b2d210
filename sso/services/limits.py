"""ACS rate limits (SSO-S3), counted in the shared cache.

Per tenant and minute: 120 requests and 20 rejections per client IP, and
1,200 requests in all. The cache key function already prefixes the tenant
schema; with `PORTAL_CACHE_URL` set every web process shares Redis.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.core.cache import cache

from portal.services.registry import audit_exempt
from sso.errors import SamlError


def _window() -> tuple[int, int]:
    now = time.time()
    minute = int(now // 60)
    return minute, 60 - int(now % 60)


def _count(key: str, *, bump: bool) -> int:
    if not bump:
        return int(cache.get(key) or 0)
    if cache.add(key, 1, timeout=120):
        return 1
    try:
        return int(cache.incr(key))
    except ValueError:  # expired between add and incr
        cache.add(key, 1, timeout=120)
        return 1


@audit_exempt("counters only; the refusal is audited by the caller")
def acs_rate_check(*, ip: str | None, endpoint: str = "acs") -> None:
    """Count one request; raise `rate_limited` (with retry-after) over a limit.

    The per-address limits are checked first, and only a request within them
    counts toward the tenant-wide limit: one address flooding the endpoint
    cannot spend the budget every other address shares.
    """
    minute, retry = _window()
    who = ip or "unknown"
    over = (
        _count(f"sso:{endpoint}:ip:{who}:{minute}", bump=True)
        > settings.SSO_ACS_IP_PER_MINUTE
    )
    over = (
        _count(f"sso:{endpoint}:rej:{who}:{minute}", bump=False)
        >= settings.SSO_ACS_IP_REJECTIONS_PER_MINUTE
        or over
    )
    if not over:
        over = (
            _count(f"sso:{endpoint}:all:{minute}", bump=True)
            > settings.SSO_ACS_TENANT_PER_MINUTE
        )
    if over:
        error = SamlError("rate_limited", expected="fewer sign-in attempts per minute")
        error.details["retry_after"] = retry
        raise error


@audit_exempt("counters only")
def acs_rejection_count(*, ip: str | None, endpoint: str = "acs") -> None:
    """Count one rejection for the client IP."""
    minute, _ = _window()
    _count(f"sso:{endpoint}:rej:{ip or 'unknown'}:{minute}", bump=True)
