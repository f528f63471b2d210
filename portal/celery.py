"""The Celery app. It carries the sender's tenant schema (TEN-8).

tenant_schemas_celery's CeleryApp puts the current schema into the
`_schema_name` header and switches to it before each task. Tenant tasks also
subclass `portal.tasks_base.TenantBoundTask`, which refuses to run when that
switch did not happen or the tenant is gone.
"""

from __future__ import annotations

import os

from tenant_schemas_celery.app import CeleryApp

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = CeleryApp("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
