"""The `/sso/` pages and the SAML endpoints. Thin: parse, call, render."""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.db import transaction
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
    QueryDict,
)
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST

from portal.errors import ApplicationError
from portal.http import request_member, wants_json
from portal.middleware import client_ip
from portal.models import Member
from portal.permissions import capability_required, mark_signed_in, public_view
from portal.selectors.members import member_get
from sso import services
from sso.errors import SamlError
from sso.forms import (
    AttributesForm,
    EnforceForm,
    ManualIdpForm,
    MetadataUploadForm,
    MetadataUrlForm,
    PoliciesForm,
    RoleMappingForm,
)
from sso.services.xmlcheck import MAX_MESSAGE_BYTES

MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"
NONCE_KEY = "sso_nonce"


def saml_error_response(request: HttpRequest, error: SamlError) -> HttpResponse:
    """The person's view of a refusal: the code and an event reference."""
    event_id = error.details.get("event_id")
    response: HttpResponse
    if wants_json(request):
        response = JsonResponse(
            {
                "error": {
                    "code": error.code,
                    "message": error.message,
                    "details": {"event_id": event_id},
                }
            },
            status=error.status,
        )
    else:
        response = render(
            request,
            "sso/error.html",
            {"error": error, "event_id": event_id},
            status=error.status,
        )
    if error.code == "rate_limited":
        response["Retry-After"] = str(error.details.get("retry_after", 60))
    return response


# --- settings pages -----------------------------------------------------------


@capability_required("sso.view")
def settings_view(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "sso/settings.html",
        services.sso_page_context(viewer=request_member(request)),
    )


def _back(request: HttpRequest, section: str = "") -> HttpResponseRedirect:
    return redirect(f"/sso/{'#' + section if section else ''}")


@capability_required("sso.edit")
@require_POST
def settings_action_view(request: HttpRequest, action: str) -> HttpResponseBase:
    """Every change on the SSO page posts here; one service call per action."""
    actor = request_member(request)
    handlers = {
        "metadata-upload": _metadata_upload,
        "metadata-url": _metadata_url,
        "manual": _manual,
        "policies": _policies,
        "enforce": _enforce,
        "attributes": _attributes,
        "roles": _roles,
        "certificate-remove": _certificate_remove,
        "sp-key-prepare": lambda r, a: services.sp_key_prepare_next(actor=a),
        "sp-key-activate": lambda r, a: services.sp_key_activate(actor=a),
    }
    handler = handlers.get(action)
    if handler is None:
        return render(request, "404.html", status=404)
    try:
        result = handler(request, actor)
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return _back(request, action)
    if isinstance(result, HttpResponseBase):
        return result
    messages.success(request, "Saved.")
    return _back(request, action)


def _form_error(request: HttpRequest, form: Any) -> None:
    errors = [
        f"{k}: {' '.join(v)}" if k != "__all__" else " ".join(v)
        for k, v in form.errors.items()
    ]
    raise ApplicationError("; ".join(errors) or "Check the form.")


def _metadata_upload(request: HttpRequest, actor: Member) -> object:
    form = MetadataUploadForm(request.POST, request.FILES)
    if not form.is_valid():
        _form_error(request, form)
    upload = form.cleaned_data["metadata"]
    if upload.size > 1024 * 1024:
        raise ApplicationError(
            "The metadata is larger than 1 MiB.", code="metadata_too_large"
        )
    return services.idp_configure_from_metadata(data=upload.read(), actor=actor)


def _metadata_url(request: HttpRequest, actor: Member) -> object:
    form = MetadataUrlForm(request.POST)
    if not form.is_valid():
        _form_error(request, form)
    return services.idp_configure_from_url(url=form.cleaned_data["url"], actor=actor)


def _manual(request: HttpRequest, actor: Member) -> object:
    form = ManualIdpForm(request.POST)
    if not form.is_valid():
        _form_error(request, form)
    data = form.cleaned_data
    return services.idp_configure_manual(
        entity_id=data["entity_id"],
        sso_url=data["sso_url"],
        slo_url=data["slo_url"],
        certificates=[data["certificate"], data["certificate_2"]],
        actor=actor,
    )


def _policies(request: HttpRequest, actor: Member) -> object:
    form = PoliciesForm(request.POST)
    if not form.is_valid():
        _form_error(request, form)
    return services.idp_policies_set(actor=actor, **form.cleaned_data)


def _enforce(request: HttpRequest, actor: Member) -> object:
    form = EnforceForm(request.POST)
    if not form.is_valid():
        _form_error(request, form)
    return services.idp_policies_set(
        actor=actor, enforce_sso=form.cleaned_data["enforce_sso"]
    )


def _attributes(request: HttpRequest, actor: Member) -> object:
    form = AttributesForm(request.POST)
    if not form.is_valid():
        _form_error(request, form)
    data = dict(form.cleaned_data)
    if "apply_preset" in request.POST:
        # The preset fills every attribute name with its defaults.
        return services.idp_policies_set(actor=actor, preset=data["preset"])
    defaults = services.PRESETS.get(data["preset"], {})
    if any(data.get(key, "") != value for key, value in defaults.items()):
        data["preset"] = "custom"
    return services.idp_policies_set(actor=actor, **data)


def _roles(request: HttpRequest, actor: Member) -> object:
    form = RoleMappingForm(request.POST)
    if not form.is_valid():
        _form_error(request, form)
    data = dict(form.cleaned_data)
    mappings = data.pop("mappings")
    with transaction.atomic():  # the table and its switches, or neither
        services.group_mappings_set(mappings=mappings, actor=actor)
        return services.idp_policies_set(actor=actor, **data)


def _certificate_remove(request: HttpRequest, actor: Member) -> object:
    services.idp_certificate_remove(
        fingerprint=request.POST.get("fingerprint", ""), actor=actor
    )
    return None


@capability_required("sso.edit")
@require_POST
def test_start_view(request: HttpRequest) -> HttpResponseBase:
    """Test connection: the SP-initiated flow that never signs anyone in."""
    try:
        start = services.saml_login_start(
            next_path="/sso/",
            session_nonce=_nonce(request),
            test_member_id=request_member(request).pk,
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return _back(request)
    return idp_navigation(request, start.url, start.post_fields, after_form=True)


@capability_required("sso.edit")
def test_result_view(request: HttpRequest, run_id: str) -> HttpResponse:
    found = services.test_run_get(run_id=run_id, member=request_member(request))
    if found is None:
        return render(
            request,
            "404.html",
            {
                "message": "This test result expired (results are kept 15 "
                "minutes) or is not yours."
            },
            status=404,
        )
    run, report = found
    return render(request, "sso/test_result.html", {"run": run, "report": report})


@capability_required("sso.edit")
@require_POST
def link_reset_view(request: HttpRequest, member_id: int) -> HttpResponseBase:
    try:
        target = member_get(member_id=member_id)
        services.sso_link_reset(member=target, actor=request_member(request))
    except ApplicationError as exc:
        if exc.status == 403:
            return render(request, "403.html", {"message": exc.message}, status=403)
        messages.error(request, exc.message)
    else:
        messages.success(request, "SSO link reset: the next SSO sign-in links afresh.")
    return redirect(f"/members/{member_id}/")


# --- SAML endpoints -------------------------------------------------------------


@public_view("SP metadata is public (its URL is the entity ID)")
@require_http_methods(["GET"])
def metadata_view(request: HttpRequest) -> HttpResponse:
    xml = services.sp_metadata_xml()
    response = HttpResponse(xml, content_type="application/samlmetadata+xml")
    if request.GET.get("download"):
        response["Content-Disposition"] = 'attachment; filename="sp-metadata.xml"'
    return response


def _nonce(request: HttpRequest) -> str:
    nonce = request.session.get(NONCE_KEY)
    if not nonce:
        nonce = secrets.token_urlsafe(24)
        request.session[NONCE_KEY] = nonce
    return str(nonce)


def idp_navigation(
    request: HttpRequest,
    url: str,
    fields: dict[str, str] | None,
    *,
    after_form: bool = False,
) -> HttpResponseBase:
    """The response that takes the browser to the IdP.

    CSP `form-action 'self'` also governs where a form's response may
    redirect, so after a POST from our own page (test connection, sign-out)
    we answer with a page that navigates on; an auto-posting form gets a
    CSP that admits the IdP's origin as a form target.
    """
    if fields is not None:
        response = render(
            request, "sso/autopost.html", {"action": url, "fields": fields}
        )
        parts = urlsplit(url)
        response["Content-Security-Policy"] = settings.PORTAL_CSP.replace(
            "form-action 'self'", f"form-action 'self' {parts.scheme}://{parts.netloc}"
        )
        return response
    if after_form:
        return render(request, "sso/continue.html", {"url": url})
    return HttpResponseRedirect(url)


@public_view("starts SP-initiated sign-in")
@require_http_methods(["GET"])
def login_start_view(request: HttpRequest) -> HttpResponseBase:
    # The finish step runs on the primary domain (the ACS URL's host), so the
    # browser session that starts the sign-in must live there too.
    primary = services.primary_host()
    if primary and request.get_host().lower() != primary:
        query = request.META.get("QUERY_STRING", "")
        return HttpResponseRedirect(
            f"{services.tenant_origin_url()}/sso/saml/login/"
            + (f"?{query}" if query else "")
        )
    try:
        start = services.saml_login_start(
            next_path=request.GET.get("next"), session_nonce=_nonce(request)
        )
    except SamlError as error:
        return saml_error_response(request, error)
    return idp_navigation(request, start.url, start.post_fields)


def _bounded_post(request: HttpRequest) -> QueryDict | None:
    """Read at most 256 KiB of form body; None when the body is larger."""
    length = request.META.get("CONTENT_LENGTH") or ""
    if length.isdigit() and int(length) > MAX_MESSAGE_BYTES:
        return None
    if request.META.get("CONTENT_TYPE", "").startswith("multipart/form-data"):
        # Browsers post the binding's form urlencoded; multipart is parsed
        # by Django only when its declared length is within the limit.
        return request.POST if length.isdigit() else None
    body = request.read(MAX_MESSAGE_BYTES + 1)
    if len(body) > MAX_MESSAGE_BYTES:
        return None
    return QueryDict(body, encoding="utf-8")


@public_view("the IdP posts assertions here (SAML HTTP-POST binding)")
@csrf_exempt
@sensitive_post_parameters("SAMLResponse", "RelayState")
@require_http_methods(["POST"])
def acs_view(request: HttpRequest) -> HttpResponseBase:
    data = _bounded_post(request)
    try:
        # An oversized body is refused by the service after the SSO and rate
        # checks (spec order), so it counts against the rate limits too.
        outcome = services.saml_acs(
            saml_response=data.get("SAMLResponse", "") if data else "",
            relay_state=data.get("RelayState", "") if data else "",
            ip=client_ip(request),
            oversize=data is None,
        )
    except SamlError as error:
        return saml_error_response(request, error)
    # 303: the browser follows with a same-site GET that carries the session.
    response = HttpResponseRedirect(outcome.redirect_to, status=303)
    response.status_code = 303
    return response


@public_view("finishes the SAML sign-in started at the ACS")
@sensitive_post_parameters("t")
@require_http_methods(["GET", "POST"])
def finish_view(request: HttpRequest) -> HttpResponseBase:
    token = request.POST.get("t") if request.method == "POST" else request.GET.get("t")
    token = token or ""
    current: Member | None = getattr(request, "member", None)
    if request.method == "GET" and current is not None:
        if services.finish_ticket_flow(token=token) == "idp":
            return render(
                request, "sso/confirm.html", {"token": token, "current": current}
            )
    try:
        result = services.saml_finish(
            token=token,
            session_nonce=request.session.get(NONCE_KEY),
            signed_in=current,
        )
    except SamlError as error:
        return saml_error_response(request, error)
    request.session.pop(NONCE_KEY, None)
    # The session index learns the method and member from the request, so
    # the login signal neither guesses "password" nor looks the member up.
    request.signing_in = (result.member, "saml")  # type: ignore[attr-defined]
    with transaction.atomic():
        login(request, result.user, backend=MODEL_BACKEND)
        mark_signed_in(request, method="saml")
        request.session.set_expiry(result.session_expires_at)
        services.sso_session_record(
            session_key=request.session.session_key or "",
            member=result.member,
            identity=result.identity,
            expires_at=result.session_expires_at,
        )
        # The session row commits with the rest (the middleware's save is
        # then a no-op, see portal/sessions.py).
        request.session.save()
    return redirect(result.next_path)


@public_view("the IdP's single-logout messages arrive here")
@csrf_exempt
@sensitive_post_parameters("SAMLRequest", "SAMLResponse", "RelayState")
@require_http_methods(["GET", "POST"])
def sls_view(request: HttpRequest) -> HttpResponseBase:
    oversize = False
    if request.method == "POST":
        data = _bounded_post(request)
        oversize = data is None
        params = {
            k: data.get(k, "")
            for k in ("SAMLRequest", "SAMLResponse", "RelayState")
            if data is not None and k in data
        }
        binding = "post"
        query_string = ""
    else:
        params = {
            k: request.GET.get(k, "")
            for k in (
                "SAMLRequest",
                "SAMLResponse",
                "RelayState",
                "SigAlg",
                "Signature",
            )
            if k in request.GET
        }
        binding = "redirect"
        query_string = request.META.get("QUERY_STRING", "")
    try:
        outcome = services.saml_sls(
            binding=binding,
            params=params,
            query_string=query_string,
            ip=client_ip(request),
            oversize=oversize,
        )
    except SamlError as error:
        return saml_error_response(request, error)
    if outcome.redirect is not None:
        return idp_navigation(
            request, outcome.redirect.url, outcome.redirect.post_fields
        )
    messages.info(request, outcome.message)
    return redirect("/accounts/login/")
