"""Thin Celery tasks of the SSO app: load the tenant context, call a service."""

from __future__ import annotations

from portal.celery import app
from portal.tasks_base import TenantBoundTask


@app.task(name="sso.daily", base=TenantBoundTask, bind=True)
def sso_daily_task(self: TenantBoundTask, *, schema_name: str) -> None:
    """Metadata refresh, certificate expiry warnings, housekeeping (daily)."""
    from sso.services.maintenance import (
        certificate_expiry_warn,
        idp_metadata_refresh,
        sso_housekeeping,
    )

    idp_metadata_refresh()
    certificate_expiry_warn()
    sso_housekeeping()
