"""Tenant services: provisioning, lifecycle and platform-level operations.

Public-schema code. It enters a tenant only through `tenant_context` for one
unit of work and passes ids, never instances, across the switch.
"""

from tenants.services.lifecycle import (
    DEFAULT_GRACE,
    PURGE_STEPS,
    _cache_purge,
    tenant_purge,
    tenant_purge_due,
    tenant_resume,
    tenant_retire_cancel,
    tenant_retire_request,
    tenant_seat_limit_set,
    tenant_suspend,
)
from tenants.services.platform import (
    OPERATOR_LOGIN_ERROR,
    OPERATOR_MAX_FAILURES,
    RESERVED_SLUGS,
    SLUG_RE,
    operator_login_attempt,
    platform_audit_record,
    public_tenant_ensure,
    schema_for_slug,
    tenant_health_refresh_all,
    tenant_list_active,
    tenant_origin,
    validate_domain,
    validate_slug,
)
from tenants.services.provisioning import (
    ProvisionResult,
    _schema_exists,
    template_tenant_ensure,
    tenant_provision,
    tenant_schemas_behind,
)

__all__ = [
    "DEFAULT_GRACE",
    "OPERATOR_LOGIN_ERROR",
    "OPERATOR_MAX_FAILURES",
    "PURGE_STEPS",
    "RESERVED_SLUGS",
    "SLUG_RE",
    "ProvisionResult",
    "_cache_purge",
    "_schema_exists",
    "operator_login_attempt",
    "platform_audit_record",
    "public_tenant_ensure",
    "schema_for_slug",
    "template_tenant_ensure",
    "tenant_health_refresh_all",
    "tenant_list_active",
    "tenant_origin",
    "tenant_provision",
    "tenant_purge",
    "tenant_purge_due",
    "tenant_resume",
    "tenant_retire_cancel",
    "tenant_retire_request",
    "tenant_schemas_behind",
    "tenant_seat_limit_set",
    "tenant_suspend",
    "validate_domain",
    "validate_slug",
]
