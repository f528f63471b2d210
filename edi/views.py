"""The `/edi/` pages (edi.md EDI-C1): upload, progress, files, settings.

Thin: parse, call one service or selector, render. Only tenant admins
(owners and admins) reach any of it (edi.md §4): every view requires
`edi.upload`, the capability that belongs to exactly those roles.

The upload streams the multipart body straight into the tenant's spool
through the upload handler the HTTPS channel uses, so its plaintext never
lands in Django's temporary upload files. Django reads the body for the
CSRF check, so the view is `csrf_exempt` and checks CSRF itself once its
handler is in place (the pattern of Django's "modifying upload handlers
on the fly"); an oversize declared length is refused before any read.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import messages
from django.http import (
    HttpRequest,
    HttpResponse,
    JsonResponse,
    QueryDict,
    StreamingHttpResponse,
)
from django.http.multipartparser import MultiPartParserError
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_POST

from edi.forms import (
    IdForm,
    RuleForm,
    SettingsForm,
    SftpKeyForm,
    TokenForm,
    UploadForm,
)
from edi.models import EdiFile, EdiSource
from edi.selectors import (
    edi_file_blob_available,
    edi_file_get,
    edi_file_page,
    edi_file_page_context,
    edi_file_progress,
    edi_file_rows,
    edi_rule_get,
    edi_settings_page_context,
    edi_sftp_access,
    edi_sftp_key_get,
    edi_token_get,
)
from edi.serializers import MULTIPART_OVERHEAD_BYTES, SpoolUploadHandler
from edi.services import admin as edi_admin
from edi.services.receive import edi_file_receive, edi_settings_get
from edi.services.results import results_open
from edi.services.sftp import sftp_key_register, sftp_key_remove
from edi.services.spool import FileTooLarge, SpoolWriter, max_file_bytes
from edi.services.tokens import edi_token_issue, edi_token_revoke
from portal.db import current_schema
from portal.errors import ApplicationError
from portal.http import request_member, wants_json
from portal.models import Member
from portal.permissions import capability_required
from tenants.services.platform import tenant_origin

PAGE_CAPABILITY = "edi.upload"  # owners and admins (portal.roles)
MULTIPART = "multipart/form-data"


def _size_label(size: int) -> str:
    """256 MiB as "256 MB" (filesizeformat would say "256.0 MB")."""
    if size >= 1 << 20 and size % (1 << 20) == 0:
        return f"{size >> 20}\xa0MB"
    return str(filesizeformat(size))


def _error_json(exc: ApplicationError) -> JsonResponse:
    return JsonResponse(
        {"error": {"code": exc.code, "message": exc.message, "details": exc.details}},
        status=exc.status,
    )


# --- history and upload ------------------------------------------------------


def _list_page(
    request: HttpRequest, form: UploadForm | None = None, *, status: int = 200
) -> HttpResponse:
    if form is None:
        form = UploadForm(initial={"mode": edi_settings_get().default_mode})
    limit = max_file_bytes()
    page = edi_file_page(cursor=request.GET.get("after"))
    return render(
        request,
        "edi/files.html",
        {
            "page": page,
            "rows": edi_file_rows(files=page.items),
            "form": form,
            "max_bytes": limit,
            "max_size": _size_label(limit),
        },
        status=status,
    )


@capability_required(PAGE_CAPABILITY)
@require_GET
def file_list_view(request: HttpRequest) -> HttpResponse:
    return _list_page(request)


def _upload_refused(
    request: HttpRequest, exc: ApplicationError, form: UploadForm | None = None
) -> HttpResponse:
    if isinstance(exc, FileTooLarge):
        limit = max_file_bytes()
        exc = ApplicationError(
            f"This file is larger than the limit of {_size_label(limit)}. "
            "Nothing was received.",
            code=exc.code,
            status=exc.status,
            details=exc.details,
        )
    if wants_json(request):
        return _error_json(exc)
    if form is None:
        # The body may be unread (refused on its length) or half read:
        # show the options as they were, or their defaults.
        posted = getattr(request, "_post", None)
        if not posted:
            posted = QueryDict(mutable=True)
            posted.update({"mode": edi_settings_get().default_mode, "dry_run": "on"})
        form = UploadForm(posted)
        form.is_valid()
    form.add_error(None, exc.message)
    return _list_page(request, form, status=exc.status)


@csrf_exempt
@capability_required(PAGE_CAPABILITY)
@require_POST
def file_upload_view(request: HttpRequest) -> HttpResponseBase:
    """Receive a CSV from the browser (EDI-C1): JSON for scripts, else a page.

    Answers 202 with the file's progress JSON (or a redirect to the file's
    page), 400 with a form error (no file, empty file, bad mode) and 413
    beyond `EDI_MAX_FILE_BYTES`, refused on the declared length before
    reading; no `EdiFile` exists then.
    """
    limit = max_file_bytes()
    declared = str(request.META.get("CONTENT_LENGTH") or "")
    if declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD_BYTES:
        return _upload_refused(request, FileTooLarge(limit))
    if request.content_type != MULTIPART:
        return _upload_refused(
            request,
            ApplicationError("Choose a CSV file to upload.", code="file_required"),
        )
    with SpoolWriter(current_schema(), limit=limit) as spool:
        handler = SpoolUploadHandler(spool)
        request.upload_handlers = [handler]
        try:
            return _file_upload_checked(request, spool=spool, handler=handler)
        except ApplicationError as exc:  # FileTooLarge, a second file
            return _upload_refused(request, exc)
        except MultiPartParserError:
            return _upload_refused(
                request,
                ApplicationError(
                    "The upload arrived damaged. Try again.", code="invalid_multipart"
                ),
            )


@csrf_protect
def _file_upload_checked(
    request: HttpRequest, *, spool: SpoolWriter, handler: SpoolUploadHandler
) -> HttpResponseBase:
    # The CSRF check above read the body: the file is in the spool now.
    form = UploadForm(request.POST)
    if not form.is_valid():
        return _upload_refused(
            request,
            ApplicationError(
                "Check the upload options.",
                code="invalid",
                details={name: list(errors) for name, errors in form.errors.items()},
            ),
            form,
        )
    if not handler.found:
        return _upload_refused(
            request,
            ApplicationError("Choose a CSV file to upload.", code="file_required"),
            form,
        )
    try:
        edi_file = edi_file_receive(
            spooled=spool.finish(),
            source=EdiSource.UI,
            original_name=handler.upload_name,
            mode=form.cleaned_data["mode"],
            dry_run=form.cleaned_data["dry_run"],
            uploaded_by=request_member(request),
        )
    except ApplicationError as exc:  # empty_file
        return _upload_refused(request, exc, form)
    if wants_json(request):
        data = edi_file_progress(edi_file=edi_file)
        data["status_url"] = reverse(
            "edi:file-status", kwargs={"file_id": str(edi_file.pk)}
        )
        return JsonResponse(data, status=202)
    return redirect("edi:file-detail", file_id=str(edi_file.pk))


# --- one file ----------------------------------------------------------------


@capability_required(PAGE_CAPABILITY)
@require_GET
def file_detail_view(request: HttpRequest, file_id: uuid.UUID) -> HttpResponse:
    edi_file = edi_file_get(file_id=file_id)
    context = edi_file_page_context(edi_file=edi_file)
    context["status_url"] = reverse("edi:file-status", kwargs={"file_id": file_id})
    return render(request, "edi/file.html", context)


@capability_required(PAGE_CAPABILITY)
@require_GET
def file_status_view(request: HttpRequest, file_id: uuid.UUID) -> JsonResponse:
    """The poller's JSON: status, phase and percent (EDI-P13), no data rows."""
    try:
        edi_file = edi_file_get(file_id=file_id)
    except ApplicationError as exc:
        return _error_json(exc)
    response = JsonResponse(edi_file_progress(edi_file=edi_file))
    response["Cache-Control"] = "no-store"
    return response


def _decide(
    request: HttpRequest, file_id: uuid.UUID, action: Any, done: str
) -> HttpResponse:
    try:
        action(edi_file_id=file_id, by=request_member(request))
    except ApplicationError as exc:
        if exc.status == 404:
            raise
        messages.error(request, exc.message)
    else:
        messages.success(request, done)
    return redirect("edi:file-detail", file_id=file_id)


@capability_required(PAGE_CAPABILITY)
@require_POST
def file_apply_view(request: HttpRequest, file_id: uuid.UUID) -> HttpResponse:
    return _decide(
        request, file_id, edi_admin.edi_file_apply, "Approved: the file is applied now."
    )


@capability_required(PAGE_CAPABILITY)
@require_POST
def file_cancel_view(request: HttpRequest, file_id: uuid.UUID) -> HttpResponse:
    return _decide(
        request,
        file_id,
        edi_admin.edi_file_cancel,
        "Discarded: nothing from this file was applied.",
    )


@capability_required(PAGE_CAPABILITY)
@require_POST
def file_apply_anyway_view(request: HttpRequest, file_id: uuid.UUID) -> HttpResponse:
    return _decide(
        request,
        file_id,
        edi_admin.edi_file_apply_anyway,
        "The file is imported again despite being a duplicate.",
    )


def _download(chunks: Any, filename: str) -> StreamingHttpResponse:
    response = StreamingHttpResponse(chunks, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    return response


def _gone(request: HttpRequest, message: str) -> HttpResponse:
    return render(request, "404.html", {"message": message}, status=404)


@capability_required(PAGE_CAPABILITY)
@require_GET
def file_results_view(request: HttpRequest, file_id: uuid.UUID) -> HttpResponseBase:
    """The per-row results CSV (EDI-P11); `results_open` audits it."""
    edi_file = edi_file_get(file_id=file_id)
    if not edi_file_blob_available(edi_file=edi_file, name=edi_file.results_name):
        return _gone(
            request,
            "There are no results for this file: it was not applied, or its "
            "results were deleted after the retention period.",
        )
    return _download(results_open(edi_file), f"edi-{edi_file.pk}-results.csv")


def _raw_name(edi_file: EdiFile) -> str:
    stem = "".join(
        ch
        for ch in edi_file.original_name
        if ch.isascii() and (ch.isalnum() or ch in "-_.")
    )
    stem = stem.removesuffix(".csv")[:80] or "file"
    return f"edi-{edi_file.pk}-{stem}.csv"


@capability_required(PAGE_CAPABILITY)
@require_GET
def file_raw_view(request: HttpRequest, file_id: uuid.UUID) -> HttpResponseBase:
    """The file as received, decrypted; the download is audited (EDI-P10)."""
    edi_file = edi_file_get(file_id=file_id)
    if not edi_file_blob_available(edi_file=edi_file, name=edi_file.blob_name):
        return _gone(request, "The raw file was deleted after the retention period.")
    chunks = edi_admin.edi_file_raw_open(edi_file=edi_file, by=request_member(request))
    return _download(chunks, _raw_name(edi_file))


# --- settings ----------------------------------------------------------------

FORM_CLASSES: dict[str, type[Any]] = {
    "general": SettingsForm,
    "rule-add": RuleForm,
    "key-add": SftpKeyForm,
    "token-create": TokenForm,
}


def _settings_page(
    request: HttpRequest, bound: dict[str, Any] | None = None, *, status: int = 200
) -> HttpResponse:
    context = edi_settings_page_context()
    row = context["edi_settings"]
    forms: dict[str, Any] = {
        "general": SettingsForm(
            initial={
                "default_mode": row.default_mode,
                "deactivation_threshold_percent": row.deactivation_threshold_percent,
                "invalid_rows_percent": row.invalid_rows_percent,
                "retention_days": row.retention_days,
            }
        ),
        "rule-add": RuleForm(),
        "key-add": SftpKeyForm(),
        "token-create": TokenForm(),
    }
    forms.update(bound or {})
    tenant = request.tenant  # type: ignore[attr-defined]
    context.update(
        settings_form=forms["general"],
        rule_form=forms["rule-add"],
        key_form=forms["key-add"],
        token_form=forms["token-create"],
        sftp=edi_sftp_access(slug=tenant.slug, origin=tenant_origin(tenant)),
    )
    return render(request, "edi/settings.html", context, status=status)


@capability_required(PAGE_CAPABILITY)
@require_GET
def settings_view(request: HttpRequest) -> HttpResponse:
    return _settings_page(request)


SECTIONS = {
    "general": "import",
    "rule-add": "rules",
    "rule-remove": "rules",
    "key-add": "sftp",
    "key-remove": "sftp",
    "token-create": "tokens",
    "token-revoke": "tokens",
}


# Where a service's error goes when its details name no field.
ERROR_FIELDS = {
    "sftp_key_name_required": "name",
    "sftp_key_duplicate": "public_key",
}


def _form_error(form: Any, exc: ApplicationError) -> None:
    """Put a service's error on the form: per field when it says which."""
    placed = False
    for name, problems in exc.details.items():
        if name in form.fields and isinstance(problems, list):
            for problem in problems:
                form.add_error(name, str(problem))
            placed = True
    if placed:
        return
    field = ERROR_FIELDS.get(exc.code)
    if field is None and exc.code.startswith("sftp_key"):
        field = "public_key"  # what is wrong is the pasted key
    form.add_error(field if field in form.fields else None, exc.message)


@capability_required(PAGE_CAPABILITY)
@require_POST
def settings_action_view(request: HttpRequest, action: str) -> HttpResponseBase:
    """Every change on the settings page posts here; one service per action."""
    if action not in SECTIONS:
        return render(request, "404.html", status=404)
    actor = request_member(request)
    back = reverse("edi:settings") + "#" + SECTIONS[action]
    if action in FORM_CLASSES:
        form = FORM_CLASSES[action](request.POST)
        if form.is_valid():
            try:
                result = _settings_change(request, action, form, actor)
            except ApplicationError as exc:
                _form_error(form, exc)
            else:
                if isinstance(result, HttpResponseBase):
                    return result
                messages.success(request, result)
                return redirect(back)
        return _settings_page(request, {action: form}, status=400)
    id_form = IdForm(request.POST)
    if not id_form.is_valid():
        messages.error(request, "Nothing was chosen.")
        return redirect(back)
    row_id = id_form.cleaned_data["id"]
    try:
        if action == "rule-remove":
            edi_admin.auto_provision_rule_remove(
                rule_id=edi_rule_get(rule_id=row_id).pk, by=actor
            )
            text = "Rule removed. Seats it granted stay."
        elif action == "key-remove":
            sftp_key_remove(sftp_key=edi_sftp_key_get(key_id=row_id), actor=actor)
            text = "Key removed: it can no longer sign in."
        else:
            edi_token_revoke(token=edi_token_get(token_id=row_id), actor=actor)
            text = "Token revoked: its next request is refused."
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, text)
    return redirect(back)


def _settings_change(
    request: HttpRequest, action: str, form: Any, actor: Member
) -> str | HttpResponseBase:
    data = form.cleaned_data
    if action == "general":
        edi_admin.edi_settings_update(by=actor, **data)
        return "Settings saved."
    if action == "rule-add":
        edi_admin.auto_provision_rule_add(
            field=data["field"], value=data["value"], by=actor
        )
        return "Rule added. It applies to the next files."
    if action == "key-add":
        key = sftp_key_register(
            public_key_text=data["public_key"], name=data["name"], actor=actor
        )
        return f"Key “{key.name}” added ({key.fingerprint})."
    token, plaintext = edi_token_issue(
        name=data["name"],
        scopes=data["scopes"],
        expires_in=form.lifetime(),
        actor=actor,
    )
    # The one page that shows the secret; nothing keeps the plaintext.
    response = render(
        request,
        "edi/token_created.html",
        {
            "token": token,
            "plaintext": plaintext,
            "origin": tenant_origin(request.tenant),  # type: ignore[attr-defined]
        },
    )
    response["Cache-Control"] = "no-store"
    return response
