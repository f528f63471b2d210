"""Base classes and the enqueue helper for Celery tasks (TEN-8).

`TenantBoundTask` runs a task's body only when the worker's connection is on
the tenant named by the task's `schema_name` argument and that tenant is
active; otherwise it logs a `TenantContextError` and does nothing (no retry).
tenant_schemas_celery's default would otherwise run the body in public when
the tenant row is gone. `PlatformTask` asserts the public schema.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from tenant_schemas_celery.task import TenantTask

from portal.db import current_schema
from portal.errors import TenantContextError

logger = logging.getLogger(__name__)


def _check_tenant_context(schema_name: object) -> None:
    from tenants.models import Tenant, TenantStatus

    if not isinstance(schema_name, str) or not schema_name:
        raise TenantContextError("Tenant task called without schema_name.")
    if schema_name == "public":
        raise TenantContextError("Tenant task called for the public schema.")
    if current_schema() != schema_name:
        raise TenantContextError(
            f"Connection is on {current_schema()!r}, task is for {schema_name!r}."
        )
    # A fresh lookup, never a cached row: the tenant may have been retired or
    # suspended since the message was sent.
    status = (
        Tenant.objects.filter(schema_name=schema_name)
        .values_list("status", flat=True)
        .first()
    )
    if status != TenantStatus.ACTIVE:
        raise TenantContextError(f"Tenant {schema_name!r} is not active ({status}).")


class TenantBoundTask(TenantTask):
    """Base for every task that touches tenant data; takes `schema_name`."""

    abstract = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            _check_tenant_context(kwargs.get("schema_name"))
        except TenantContextError as exc:
            logger.error("Refused task %s: %s", self.name, exc)
            return None
        from portal import context

        with context.actor_context(source="celery"):
            return super().__call__(*args, **kwargs)


class PlatformTask(TenantTask):
    """Base for tasks that work on the public schema (they enter tenants)."""

    abstract = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if current_schema() != "public":
            logger.error("Refused platform task %s outside public", self.name)
            return None
        return super().__call__(*args, **kwargs)


def enqueue_for_tenant(task: Task, *, schema_name: str, **kwargs: Any) -> None:
    """Send `task` for the tenant `schema_name` with the header set explicitly.

    SFTP sessions, commands and beat start in public, so the header is never
    left to the connection's current schema.
    """
    task.apply_async(
        kwargs={"schema_name": schema_name, **kwargs},
        headers={"_schema_name": schema_name},
    )
