"""Tenant routing by host (TEN-2).

Lowercases the host and drops the port; the Domain table is the allow list.
Unknown hosts get a plain 404 that names no tenant. A suspended or retiring
tenant answers every page with one plain 403 page, and its public
PointDrive links with 404, so outside viewers learn nothing.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseNotFound
from django.template.loader import render_to_string
from django_tenants.middleware.main import TenantMainMiddleware
from django_tenants.utils import remove_www

from portal.db import row_first, use_public_schema
from tenants.models import Domain, Tenant, TenantStatus

_BLOCKED_MESSAGES = {
    TenantStatus.SUSPENDED: (
        "This organisation's portal is suspended — contact your administrator."
    ),
    TenantStatus.PENDING_DELETION: (
        "This organisation's portal is scheduled for deletion — contact your "
        "administrator."
    ),
    TenantStatus.PURGING: (
        "This organisation's portal is scheduled for deletion — contact your "
        "administrator."
    ),
}


DOMAINS = Domain._meta.db_table


class PortalTenantMiddleware(TenantMainMiddleware):
    @staticmethod
    def hostname_from_request(request: HttpRequest) -> str:
        host = request.META.get("HTTP_HOST") or request.META.get("SERVER_NAME", "")
        host = host.strip().lower()
        if host.startswith("["):
            return host  # an IPv6 literal never names a tenant
        return remove_www(host.split(":", 1)[0].rstrip("."))

    def get_tenant(self, domain_model: Any, hostname: str) -> Tenant:
        # One query per request, without the ORM's query compiler (about
        # 1 ms of CPU saved on every request, see docs/benchmarks.md).
        tenant = row_first(
            Tenant,
            f"id = (SELECT tenant_id FROM {DOMAINS} WHERE domain = %s)",  # noqa: S608
            [hostname],
        )
        if tenant is None:
            raise domain_model.DoesNotExist
        return tenant

    def no_tenant_found(self, request: HttpRequest, hostname: str) -> HttpResponse:
        return HttpResponseNotFound(
            render_to_string(
                "plain.html", {"title": "Not found", "message": "Not found."}
            ),
        )

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        response = super().process_request(request)
        if response is not None:
            return response
        tenant = request.tenant  # type: ignore[attr-defined]
        status = tenant.status
        if status in (TenantStatus.ACTIVE, TenantStatus.PUBLIC):
            return None
        if request.path.startswith("/p/"):
            return HttpResponseNotFound(
                render_to_string(
                    "plain.html", {"title": "Not found", "message": "Not found."}
                )
            )
        message = _BLOCKED_MESSAGES.get(status)
        if message is None:
            # Provisioning or template tenants are not served at all.
            use_public_schema()
            return self.no_tenant_found(request, "")
        return HttpResponse(
            render_to_string(
                "plain.html", {"title": "Unavailable", "message": message}
            ),
            status=403,
        )
