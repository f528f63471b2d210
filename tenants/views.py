"""The platform console on the base domain (PORTAL-24/25). Operators only.

Operator accounts live in the public schema; they fail on tenant hosts and
tenant accounts fail here. The console shows no tenant personal data.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.contrib.auth import login, logout
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from portal.errors import ApplicationError, NotFound
from portal.forms import LoginForm
from portal.permissions import mark_signed_in, public_view, recent_sign_in
from portal.views import safe_next
from tenants.forms import ReasonForm, RetireForm, SeatLimitForm, TenantCreateForm
from tenants.models import PlatformAuditEvent, Tenant, TenantStatus
from tenants.services import (
    operator_login_attempt,
    tenant_origin,
    tenant_provision,
    tenant_resume,
    tenant_retire_cancel,
    tenant_retire_request,
    tenant_seat_limit_set,
    tenant_suspend,
)

View = Callable[..., HttpResponse]


def operator_required(view: View) -> View:
    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        user = request.user
        if not user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not user.is_staff:
            return render(
                request, "403.html", {"message": "Operators only."}, status=403
            )
        return view(request, *args, **kwargs)

    wrapped.required_capability = "platform.operator"  # type: ignore[attr-defined]
    return wrapped


@public_view("operators sign in here")
@require_http_methods(["GET", "POST"])
def console_login_view(request: HttpRequest) -> HttpResponse:
    next_url = safe_next(request, request.POST.get("next") or request.GET.get("next"))
    form = LoginForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user = operator_login_attempt(
                request=request,
                username=form.cleaned_data["username"],
                password=form.cleaned_data["password"],
            )
        except ApplicationError as exc:
            form.add_error(None, exc.message)
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            mark_signed_in(request, method="password")
            return redirect(next_url)
    return render(request, "tenants/login.html", {"form": form, "next": next_url})


@public_view("signing out needs no capability")
@require_http_methods(["GET", "POST"])
def console_logout_view(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        logout(request)
        return redirect("console:login")
    return render(request, "portal/logout.html")


def _tenants() -> Any:
    return (
        Tenant.objects.exclude(status__in=[TenantStatus.PUBLIC, TenantStatus.TEMPLATE])
        .prefetch_related("domains")
        .order_by("slug")
    )


@operator_required
@require_http_methods(["GET", "POST"])
def tenant_list_view(request: HttpRequest) -> HttpResponse:
    form = TenantCreateForm(request.POST or None)
    created = None
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            created = tenant_provision(
                slug=data["slug"],
                name=data["name"],
                owner_email=data["owner_email"],
                domain=data["domain"] or None,
                seat_limit=data["seat_limit"],
            )
        except ApplicationError as exc:
            form.add_error(None, exc.message)
        else:
            form = TenantCreateForm()
    return render(
        request,
        "tenants/tenant_list.html",
        {"tenants": _tenants(), "form": form, "created": created},
    )


def _tenant(tenant_id: int) -> Tenant:
    tenant = _tenants().filter(pk=tenant_id).first()
    if tenant is None:
        raise NotFound("Tenant not found.")
    return tenant


@operator_required
def tenant_detail_view(request: HttpRequest, tenant_id: int) -> HttpResponse:
    tenant = _tenant(tenant_id)
    events = PlatformAuditEvent.objects.filter(tenant_id_value=tenant.pk).order_by(
        "-occurred_at", "-id"
    )[:50]
    return render(
        request,
        "tenants/tenant_detail.html",
        {
            "t": tenant,
            "origin": tenant_origin(tenant),
            "events": events,
            "seat_form": SeatLimitForm(initial={"seat_limit": tenant.seat_limit}),
            "reason_form": ReasonForm(),
            "retire_form": RetireForm(),
        },
    )


@operator_required
@require_POST
def tenant_action_view(
    request: HttpRequest, tenant_id: int, action: str
) -> HttpResponse:
    tenant = _tenant(tenant_id)
    try:
        if action == "suspend":
            form = ReasonForm(request.POST)
            if not form.is_valid():
                raise ApplicationError("Give a reason.")
            tenant_suspend(tenant_id=tenant.pk, reason=form.cleaned_data["reason"])
        elif action == "resume":
            tenant_resume(tenant_id=tenant.pk)
        elif action == "retire":
            retire_form = RetireForm(request.POST)
            if not retire_form.is_valid():
                raise ApplicationError("Type the slug and give a reason.")
            if not recent_sign_in(request):
                raise ApplicationError(
                    "Sign in again before retiring a tenant: your last sign-in "
                    "was more than 15 minutes ago."
                )
            tenant_retire_request(
                tenant_id=tenant.pk,
                reason=retire_form.cleaned_data["reason"],
                confirm_slug=retire_form.cleaned_data["confirm_slug"],
            )
        elif action == "cancel-retire":
            tenant_retire_cancel(tenant_id=tenant.pk)
        elif action == "seat-limit":
            seat_form = SeatLimitForm(request.POST)
            if not seat_form.is_valid():
                raise ApplicationError(
                    "Enter a whole number, or leave it empty for no limit."
                )
            tenant_seat_limit_set(
                tenant_id=tenant.pk, seat_limit=seat_form.cleaned_data["seat_limit"]
            )
        else:
            raise NotFound("Unknown action.")
    except ApplicationError as exc:
        if exc.status == 404:
            raise
        messages.error(request, exc.message)
        return render(
            request,
            "tenants/tenant_detail.html",
            {
                "t": _tenant(tenant_id),
                "origin": tenant_origin(tenant),
                "events": [],
                "seat_form": SeatLimitForm(),
                "reason_form": ReasonForm(),
                "retire_form": RetireForm(),
            },
            status=400,
        )
    messages.success(request, "Done.")
    return redirect("console:tenant-detail", tenant_id=tenant.pk)


@operator_required
def platform_audit_view(request: HttpRequest) -> HttpResponse:
    events = PlatformAuditEvent.objects.order_by("-occurred_at", "-id")[:200]
    return render(request, "tenants/audit.html", {"events": events})
