"""Thin platform tasks (public schema)."""

from __future__ import annotations

from portal.celery import app
from portal.tasks_base import PlatformTask


@app.task(name="tenants.purge_due", base=PlatformTask, bind=True)
def tenants_purge_due_task(self: PlatformTask) -> list[str]:
    """Purge tenants whose retirement grace has passed (TEN-5); re-runnable."""
    from portal import context
    from tenants.services import tenant_purge_due

    with context.actor_context(actor_type="system", source="celery"):
        return tenant_purge_due()


@app.task(name="tenants.health_refresh", base=PlatformTask, bind=True)
def tenants_health_refresh_task(self: PlatformTask) -> int:
    """Recompute every tenant's health summary for the console (PORTAL-26)."""
    from tenants.services import tenant_health_refresh_all

    return tenant_health_refresh_all()
