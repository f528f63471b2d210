"""PORTAL-03 and TEN-15: every route declares who may use it, and is tested.

The tenant URLconf (`portal.urls`) and the console's (`tenants.urls`) are
walked through the resolver. A route passes only when its view declares a
capability (`capability_required`, or `required_capability` /
`capability_map` on a DRF view) or is marked `public_view` and is on the
public list below. Every tenant route must also have a column in the
access matrix (`test_access_matrix.MATRIX`) or a written exemption.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.http import HttpResponse, HttpResponseBase
from django.urls import URLPattern, URLResolver, get_resolver, path, resolve

from portal.roles import CAPABILITIES
from tests.isolation.test_access_matrix import MATRIX

TENANT_URLCONF = "portal.urls"
CONSOLE_URLCONF = "tenants.urls"

# Routes that may be reached without a capability, with the reason. A new
# public route (SAML endpoints, /p/<token>/, the EDI token endpoint) goes
# here deliberately, never by accident.
PUBLIC_ROUTES: dict[str, str] = {
    "portal:login": "signing in is how a capability is obtained",
    "portal:logout": "signing out needs no capability",
    "console:login": "operators sign in here",
    "console:logout": "signing out needs no capability",
    "sso:metadata": "SP metadata is public; its URL is the SP entity ID",
    "sso:login": "starts an SP-initiated sign-in",
    "sso:acs": "identity providers post assertions here",
    "sso:finish": "finishes the sign-in the ACS validated",
    "sso:sls": "identity providers send logout messages here",
}

# Tenant routes with no column in the access matrix, with the reason.
MATRIX_EXEMPT: dict[str, str] = {
    # Authenticated by the message's signature, not a role, and every refusal
    # writes an audit event by design (SSO-S18), which the matrix's "refused
    # writes change nothing" rule forbids. Covered by tests/sso.
    "sso:acs": "SAML ACS: tests/sso/test_acs*.py",
    "sso:sls": "SAML single logout: tests/sso/test_slo.py",
}

# Console routes are guarded by operator status, not by a tenant role.
CONSOLE_CAPABILITIES = frozenset({"platform.operator"})

DRF_METHODS = ("get", "post", "put", "patch", "delete")


@dataclasses.dataclass(frozen=True)
class Route:
    pattern: str
    name: str
    callback: Callable[..., Any]


def walk(urlconf: Any) -> list[Route]:
    """Every URL pattern of `urlconf`, with its namespaced name."""

    def visit(resolver: URLResolver, prefix: str, namespace: str) -> Iterator[Route]:
        for entry in resolver.url_patterns:
            if isinstance(entry, URLResolver):
                inner = entry.namespace or ""
                full = (
                    f"{namespace}:{inner}"
                    if namespace and inner
                    else namespace or inner
                )
                yield from visit(entry, prefix + str(entry.pattern), full)
            elif isinstance(entry, URLPattern):
                name = f"{namespace}:{entry.name}" if namespace else str(entry.name)
                yield Route(prefix + str(entry.pattern), name, entry.callback)

    return list(visit(get_resolver(urlconf), "/", ""))


def drf_capabilities(view_class: type) -> dict[str, str | None]:
    """Capability per implemented HTTP method of a DRF view class."""
    default = getattr(view_class, "required_capability", None)
    mapping = getattr(view_class, "capability_map", {}) or {}
    return {
        method.upper(): mapping.get(method.upper(), default)
        for method in DRF_METHODS
        if hasattr(view_class, method)
    }


def undeclared(routes: list[Route], known: frozenset[str]) -> list[str]:
    """Problems: routes without a capability or an accepted public reason."""
    problems = []
    for route in routes:
        label = f"{route.pattern} ({route.name})"
        capability = getattr(route.callback, "required_capability", None)
        reason = getattr(route.callback, "public_reason", None)
        view_class = getattr(route.callback, "view_class", None)
        if capability:
            if capability not in known:
                problems.append(f"{label}: unknown capability {capability!r}")
        elif reason:
            if route.name not in PUBLIC_ROUTES:
                problems.append(f"{label}: public_view but not on the public list")
        elif view_class is not None:
            per_method = drf_capabilities(view_class)
            if not per_method:
                problems.append(f"{label}: a view class with no handler")
            for method, cap in per_method.items():
                if not cap:
                    problems.append(f"{label} {method}: no required_capability")
                elif cap not in known:
                    problems.append(f"{label} {method}: unknown capability {cap!r}")
        else:
            problems.append(f"{label}: no capability and not public_view")
    return problems


MATRIX_ROUTES = frozenset(column.route for column in MATRIX)
MATRIX_METHODS = frozenset((column.route, column.method) for column in MATRIX)


def uncovered(routes: list[Route]) -> list[str]:
    """Problems: tenant routes (or DRF methods) missing from the matrix."""
    problems = []
    for route in routes:
        if route.name in MATRIX_EXEMPT:
            continue
        if route.name not in MATRIX_ROUTES:
            problems.append(f"{route.pattern} ({route.name}): no access matrix column")
            continue
        view_class = getattr(route.callback, "view_class", None)
        if view_class is not None and not hasattr(
            route.callback, "required_capability"
        ):
            for method in drf_capabilities(view_class):
                if (route.name, method) not in MATRIX_METHODS:
                    problems.append(
                        f"{route.pattern} ({route.name}) {method}: no column"
                    )
    return problems


def test_tenant_routes_declare_a_capability():
    routes = walk(TENANT_URLCONF)
    assert routes
    assert undeclared(routes, frozenset(CAPABILITIES)) == []


def test_console_routes_declare_a_capability():
    routes = walk(CONSOLE_URLCONF)
    assert routes
    assert undeclared(routes, CONSOLE_CAPABILITIES) == []


def test_every_tenant_route_is_in_the_access_matrix():
    assert uncovered(walk(TENANT_URLCONF)) == []


def test_route_names_are_unique():
    names = [route.name for route in walk(TENANT_URLCONF)]
    assert len(names) == len(set(names))


def test_matrix_and_exemptions_name_live_routes():
    """A stale column or exemption (route renamed or removed) fails."""
    names = {route.name for route in walk(TENANT_URLCONF)}
    assert set(MATRIX_EXEMPT) <= names
    assert not set(MATRIX_EXEMPT) & MATRIX_ROUTES
    assert MATRIX_ROUTES <= names
    assert set(PUBLIC_ROUTES) <= names | {r.name for r in walk(CONSOLE_URLCONF)}
    assert all(reason.strip() for reason in [*MATRIX_EXEMPT.values()])
    assert all(reason.strip() for reason in PUBLIC_ROUTES.values())


@pytest.mark.parametrize("column", MATRIX, ids=lambda c: f"{c.method}-{c.label}")
def test_matrix_paths_resolve_to_their_route(column):
    sample = {"target": 7, "owner": 1, "job": "00000000-0000-4000-8000-000000000000"}
    match = resolve(column.path.format(**sample), urlconf=TENANT_URLCONF)
    assert match.view_name == column.route


def _synthetic_urlconf(view: Callable[..., HttpResponseBase]) -> types.ModuleType:
    """`portal.urls` plus one more route, as a new app would add it."""
    import portal.urls

    module = types.ModuleType("tests.isolation.synthetic_urls")
    module.urlpatterns = [  # type: ignore[attr-defined]
        *portal.urls.urlpatterns,
        path("reports/", view, name="reports"),
    ]
    return module


def test_a_new_route_without_capability_fails():
    def reports_view(request):
        return HttpResponse("reports")

    routes = walk(_synthetic_urlconf(reports_view))
    assert undeclared(routes, frozenset(CAPABILITIES)) == [
        "/reports/ (reports): no capability and not public_view"
    ]


def test_a_new_public_route_must_be_listed():
    from portal.permissions import public_view

    @public_view("looks harmless")
    def reports_view(request):
        return HttpResponse("reports")

    routes = walk(_synthetic_urlconf(reports_view))
    assert undeclared(routes, frozenset(CAPABILITIES)) == [
        "/reports/ (reports): public_view but not on the public list"
    ]


def test_a_new_route_outside_the_matrix_fails():
    from portal.permissions import capability_required

    @capability_required("audit.view")
    def reports_view(request):
        return HttpResponse("reports")

    routes = walk(_synthetic_urlconf(reports_view))
    assert undeclared(routes, frozenset(CAPABILITIES)) == []
    assert uncovered(routes) == ["/reports/ (reports): no access matrix column"]


def test_a_drf_view_without_capability_fails():
    from portal.api import TenantApiView

    class ReportApi(TenantApiView):
        def get(self, request):
            return HttpResponse("reports")

    routes = walk(_synthetic_urlconf(ReportApi.as_view()))
    assert undeclared(routes, frozenset(CAPABILITIES)) == [
        "/reports/ (reports) GET: no required_capability"
    ]
