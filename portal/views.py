"""Server-rendered pages of the portal core. Thin: parse, call, render."""

from __future__ import annotations

import secrets

from django.contrib import messages
from django.contrib.auth import login, logout
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    StreamingHttpResponse,
)
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods, require_POST

from portal.errors import ApplicationError, NotFound
from portal.forms import BulkForm, LoginForm, MemberCreateForm, MemberEditForm, RoleForm
from portal.http import request_member
from portal.middleware import client_ip
from portal.models import Member
from portal.permissions import (
    capability_required,
    mark_signed_in,
    public_view,
    recent_sign_in,
)
from portal.roles import Role, can, may_manage_member
from portal.selectors.audit import audit_event_page, audit_filters_from_query
from portal.selectors.dashboard import dashboard_context
from portal.selectors.jobs import job_get
from portal.selectors.members import (
    MemberFilters,
    member_count,
    member_filter_choices,
    member_for_user,
    member_get,
    member_ids_matching,
    member_list,
    seat_summary,
)
from portal.services import members as member_services
from portal.services.audit import audit_export_request
from portal.services.auth import (
    LOGIN_ALTERNATIVES,
    LOGOUT_HANDLERS,
    PASSWORD_SIGN_IN_HOOKS,
    login_attempt,
    login_unlock,
)
from portal.services.bulk import member_bulk_request
from portal.services.exports import export_open
from portal.services.member_export import member_export_request, member_export_stream

MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"


def safe_next(request: HttpRequest, value: str | None) -> str:
    if value and url_has_allowed_host_and_scheme(
        value, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return value
    return "/"


@public_view("the sign-in page")
@require_http_methods(["GET", "POST"])
def login_view(request: HttpRequest) -> HttpResponse:
    next_url = safe_next(request, request.POST.get("next") or request.GET.get("next"))
    if getattr(request, "member", None) is not None:
        return redirect(next_url)
    form = LoginForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                user = login_attempt(
                    request=request,
                    username=form.cleaned_data["username"],
                    password=form.cleaned_data["password"],
                    ip=client_ip(request),
                )
            except ApplicationError as exc:
                form.add_error(None, exc.message)
                status = 400
            else:
                login(request, user, backend=MODEL_BACKEND)  # type: ignore[arg-type]
                mark_signed_in(request, method="password")
                member = member_for_user(user=user)
                for hook in PASSWORD_SIGN_IN_HOOKS:
                    hook(request, member)
                return redirect(next_url)
        else:
            status = 400
    sso = any(available() for available in LOGIN_ALTERNATIVES)
    return render(
        request,
        "portal/login.html",
        {"form": form, "next": next_url, "sso_available": sso},
        status=status,
    )


@public_view("signing out needs no capability")
@require_http_methods(["GET", "POST"])
def logout_view(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        # The local session always ends first; single logout follows.
        after = [handler(request) for handler in LOGOUT_HANDLERS]
        logout(request)
        request.member = None  # type: ignore[attr-defined]
        messages.info(request, "You are signed out.")
        for finish in after:
            response = finish() if finish else None
            if response is not None:
                return response
        return redirect(reverse("portal:login"))
    return render(request, "portal/logout.html")


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    return render(
        request,
        "403.html",
        {
            "message": (
                "The form expired or came from another site. "
                "Reload the page and try again."
            )
        },
        status=403,
    )


@capability_required("dashboard.view")
def dashboard_view(request: HttpRequest) -> HttpResponse:
    member = request_member(request)
    if not can(member, "members.view"):
        return render(request, "portal/personal.html", {"seat": member.has_seat})
    return render(request, "portal/dashboard.html", dashboard_context(viewer=member))


@capability_required("members.view")
def member_list_view(request: HttpRequest) -> HttpResponse:
    filters = MemberFilters.from_query(request.GET)
    page = member_list(filters=filters, cursor=request.GET.get("after"))
    member = request_member(request)
    return render(
        request,
        "portal/members.html",
        {
            "page": page,
            "filters": filters,
            "filter_query": filters.as_query(),
            "total": member_count(filters=filters),
            "choices": member_filter_choices(),
            "roles": Role.choices,
            "seats": seat_summary(),
            "bulk_form": BulkForm(
                initial={"idempotency_key": secrets.token_urlsafe(16)}
            ),
            "can_edit": can(member, "members.edit"),
        },
    )


@capability_required("members.view")
@require_http_methods(["GET", "POST"])
def member_export_view(request: HttpRequest) -> HttpResponseBase:
    if request.method == "POST":
        # A background export is a write (a job, a file): POST with CSRF and
        # a one-time key, never a GET a link could trigger.
        job = member_export_request(
            actor=request_member(request),
            filters=MemberFilters.from_query(request.POST),
            idempotency_key=request.POST.get("idempotency_key", "")[:64],
        )
        return redirect("portal:job-detail", job_id=job.pk)
    filters = MemberFilters.from_query(request.GET)
    lines = member_export_stream(actor=request_member(request), filters=filters)
    if lines is None:
        return render(
            request,
            "portal/member_export_confirm.html",
            {
                "filters": filters.as_query(),
                "total": member_count(filters=filters),
                "export_key": secrets.token_urlsafe(16),
            },
        )
    response = StreamingHttpResponse(
        (line.encode("utf-8") for line in lines), content_type="text/csv; charset=utf-8"
    )
    response["Content-Disposition"] = 'attachment; filename="members.csv"'
    return response


@capability_required("members.edit")
@require_POST
def member_bulk_view(request: HttpRequest) -> HttpResponse:
    form = BulkForm(request.POST)
    back = reverse("portal:member-list") + "?" + request.POST.get("filter_query", "")
    if not form.is_valid():
        messages.error(request, "Choose an action and tick at least one member.")
        return redirect(back)
    data = form.cleaned_data
    if data["scope"] == "all":
        ids = member_ids_matching(filters=MemberFilters.from_query(request.POST))
    else:
        ids = data["ids"]
    try:
        outcome = member_bulk_request(
            actor=request_member(request),
            action=data["action"],
            member_ids=ids,
            params={"role": data.get("role") or "", "group": data.get("group") or ""},
            confirm_slug=data.get("confirm") or "",
            recent_sign_in=recent_sign_in(request),
            idempotency_key=data.get("idempotency_key") or "",
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect(back)
    if outcome.job is not None:
        return redirect("portal:job-detail", job_id=outcome.job.pk)
    text = f"{outcome.applied} member{'s' if outcome.applied != 1 else ''} updated."
    if outcome.skipped:
        reasons = sorted({reason for _, reason in outcome.skipped})
        text += f" {len(outcome.skipped)} skipped: " + "; ".join(reasons)
    messages.success(request, text)
    return redirect(back)


@capability_required("members.edit")
@require_http_methods(["GET", "POST"])
def member_create_view(request: HttpRequest) -> HttpResponse:
    form = MemberCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            created = member_services.member_create(
                actor=request_member(request), **form.cleaned_data
            )
        except ApplicationError as exc:
            form.add_error(None, exc.message)
        else:
            messages.success(request, f"{created.email} added.")
            return redirect("portal:member-detail", member_id=created.pk)
    return render(request, "portal/member_new.html", {"form": form}, status=200)


def _member_or_404(member_id: int) -> Member:
    return member_get(member_id=member_id)


@capability_required("members.view")
@require_http_methods(["GET", "POST"])
def member_detail_view(request: HttpRequest, member_id: int) -> HttpResponse:
    actor = request_member(request)
    target = _member_or_404(member_id)
    may_edit = may_manage_member(actor, target)
    initial = {
        field: getattr(target, field) for field in member_services.EDITABLE_FIELDS
    }
    form = MemberEditForm(request.POST or None, initial=initial)
    if request.method == "POST":
        if not may_edit:
            return render(
                request,
                "403.html",
                {"message": "You cannot edit this member."},
                status=403,
            )
        if form.is_valid():
            try:
                member_services.member_update(
                    member=target, actor=actor, **form.cleaned_data
                )
            except ApplicationError as exc:
                form.add_error(None, exc.message)
            else:
                messages.success(request, "Saved.")
                return redirect("portal:member-detail", member_id=target.pk)
    return render(
        request,
        "portal/member_detail.html",
        {
            "target": target,
            "form": form,
            "role_form": RoleForm(initial={"role": target.role}),
            "may_edit": may_edit,
            "may_change_role": can(actor, "members.change_role")
            and actor.pk != target.pk,
            "groups": list(target.groups.all()),
        },
    )


MEMBER_ACTIONS = (
    "grant_seat",
    "revoke_seat",
    "deactivate",
    "reactivate",
    "role",
    "unlock",
)


@capability_required("members.edit")
@require_POST
def member_action_view(
    request: HttpRequest, member_id: int, action: str
) -> HttpResponse:
    actor = request_member(request)
    target = _member_or_404(member_id)
    if action not in MEMBER_ACTIONS:
        raise NotFound("Unknown action.")
    try:
        if action == "grant_seat":
            member_services.seat_grant(member_ids=[target.pk], actor=actor)
        elif action == "revoke_seat":
            member_services.seat_revoke(member_ids=[target.pk], actor=actor)
        elif action == "deactivate":
            member_services.member_deactivate(member=target, actor=actor)
        elif action == "reactivate":
            member_services.member_reactivate(member=target, actor=actor)
        elif action == "unlock":
            login_unlock(member=target, actor=actor)
        else:
            form = RoleForm(request.POST)
            if not form.is_valid():
                return HttpResponseBadRequest("Choose a role.")
            member_services.member_role_set(
                member=target, role=form.cleaned_data["role"], actor=actor
            )
    except ApplicationError as exc:
        messages.error(request, exc.message)
        if exc.status == 403:
            return render(request, "403.html", {"message": exc.message}, status=403)
    else:
        messages.success(request, "Done.")
    return redirect("portal:member-detail", member_id=target.pk)


@capability_required("audit.view")
def audit_list_view(request: HttpRequest) -> HttpResponse:
    filters = audit_filters_from_query(request.GET)
    page = audit_event_page(filters=filters, cursor=request.GET.get("after"))
    return render(
        request,
        "portal/audit.html",
        {
            "page": page,
            "filters": filters,
            "export_key": secrets.token_urlsafe(16),
        },
    )


@capability_required("audit.view")
@require_POST
def audit_export_view(request: HttpRequest) -> HttpResponse:
    filters = audit_filters_from_query(request.POST)
    try:
        job = audit_export_request(
            actor=request_member(request),
            filters=filters,
            idempotency_key=request.POST.get("idempotency_key", "")[:64],
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect("portal:audit-list")
    return redirect("portal:job-detail", job_id=job.pk)


@capability_required("jobs.view")
def job_detail_view(request: HttpRequest, job_id: str) -> HttpResponse:
    job = job_get(job_id=job_id, viewer=request_member(request))
    return render(request, "portal/job.html", {"job": job})


@capability_required("jobs.view")
def job_download_view(request: HttpRequest, job_id: str) -> HttpResponseBase:
    filename, chunks = export_open(job_id=job_id, actor=request_member(request))
    response = StreamingHttpResponse(chunks, content_type="text/csv; charset=utf-8")
    safe_name = (
        "".join(ch for ch in filename if ch.isalnum() or ch in "-_.") or "export.csv"
    )
    response["Content-Disposition"] = f'attachment; filename="{safe_name}"'
    return response


def not_found_view(
    request: HttpRequest, exception: Exception | None = None
) -> HttpResponse:
    return render(request, "404.html", status=404)
