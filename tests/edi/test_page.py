"""The `/edi/` pages (edi.md EDI-C1, EDI-P8, EDI-P9, EDI-C3's fingerprints).

Django's test client against the real views, services and PostgreSQL. The
import pipeline runs in-process where a test needs a file's outcome
(`job_start` + `edi_import_run`, as the worker does); its task is never
sent, because the test transaction never commits.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django_tenants.utils import tenant_context

from edi.models import (
    AutoProvisionRule,
    EdiFile,
    EdiSettings,
    EdiSource,
    EdiStatus,
    EdiToken,
    SftpKey,
)
from edi.services.pipeline import edi_import_run
from edi.services.receive import JOB_KIND, edi_file_receive
from edi.services.spool import SpoolWriter, spool_dir
from edi.services.tokens import edi_token_issue
from portal.models import AuditEvent, Job, Member
from portal.roles import Role
from portal.services.jobs import job_start
from tenants.models import Tenant

HEADER = "employee_id,email,first_name,last_name,department,seat\n"
UPLOAD = "/edi/upload/"


@pytest.fixture(autouse=True)
def _private_storage(settings: Any, tmp_path: Path) -> None:
    """Spool and media of this test only, so leftovers can be counted."""
    settings.PORTAL_DATA_DIR = tmp_path
    settings.MEDIA_ROOT = str(tmp_path / "media")


@pytest.fixture
def admin(tenant_admin: Member) -> Member:
    return tenant_admin


@pytest.fixture
def admin_client(client_for: Any, admin: Member) -> Client:
    return client_for(admin)


def people(n: int, start: int = 1, seat: str = "active") -> bytes:
    rows = "".join(
        f"E{i},person{i}@corp.test,First{i},Last{i},Sales,{seat}\n"
        for i in range(start, start + n)
    )
    return (HEADER + rows).encode()


def upload(
    client: Client,
    data: bytes,
    *,
    name: str = "people.csv",
    mode: str = "delta",
    dry_run: bool = True,
    as_json: bool = False,
    **extra: Any,
) -> Any:
    form: dict[str, Any] = {
        "mode": mode,
        "file": SimpleUploadedFile(name, data, content_type="text/csv"),
    }
    if dry_run:
        form["dry_run"] = "on"
    headers = {"Accept": "application/json"} if as_json else {}
    return client.post(UPLOAD, form, headers=headers, **extra)


def files_in(tenant: Tenant) -> list[EdiFile]:
    with tenant_context(tenant):
        return list(EdiFile.objects.order_by("received_at"))


def the_file(tenant: Tenant, pk: Any) -> EdiFile:
    with tenant_context(tenant):
        return EdiFile.objects.select_related("job").get(pk=pk)


def run(tenant: Tenant, edi_file: EdiFile) -> EdiFile:
    """Run the file's current job the way the worker does."""
    with tenant_context(tenant):
        edi_file.refresh_from_db()
        job = job_start(job_id=str(edi_file.job_id))
        assert job is not None
        edi_import_run(job=job)
        edi_file.refresh_from_db()
    return edi_file


def receive(tenant: Tenant, data: bytes, **kwargs: Any) -> EdiFile:
    """A file from another channel (HTTPS, SFTP) or from a service call."""
    kwargs.setdefault("source", EdiSource.UI)
    with tenant_context(tenant):
        writer = SpoolWriter(tenant.schema_name)
        writer.write(data)
        return edi_file_receive(spooled=writer.finish(), **kwargs)


def imported(tenant: Tenant, data: bytes, **kwargs: Any) -> EdiFile:
    edi_file = receive(tenant, data, **kwargs)
    if edi_file.status == EdiStatus.RECEIVED:
        edi_file = run(tenant, edi_file)
    return edi_file


def file_url(edi_file: EdiFile, suffix: str = "") -> str:
    return f"/edi/files/{edi_file.pk}/{suffix}"


def spool_leftovers(tenant: Tenant) -> list[str]:
    return sorted(p.name for p in spool_dir(tenant.schema_name).iterdir())


def import_jobs(tenant: Tenant) -> list[Job]:
    with tenant_context(tenant):
        return list(Job.objects.filter(kind=JOB_KIND).order_by("created_at"))


def events(tenant: Tenant, action: str) -> list[AuditEvent]:
    with tenant_context(tenant):
        return list(AuditEvent.objects.filter(action=action))


def text(response: Any) -> str:
    return response.content.decode()


# --------------------------------------------------------------------------
# Who may reach the pages


PAGES = ["/edi/", "/edi/settings/"]


@pytest.mark.parametrize("path", PAGES)
@pytest.mark.parametrize(
    ("role", "status"),
    [
        (Role.MEMBER, 403),
        (Role.READONLY_ADMIN, 403),  # "reporting" in the file format
        (Role.USER_ADMIN, 403),
        (Role.ADMIN, 200),
        (Role.OWNER, 200),
    ],
)
def test_only_owners_and_admins_reach_the_pages(
    path, role, status, tenant, make_member, client_for
):
    if role == Role.OWNER:
        with tenant_context(tenant):
            member = Member.objects.get(email="owner@tenant.test")
    else:
        member = make_member(role)

    response = client_for(member).get(path)

    assert response.status_code == status


@pytest.mark.parametrize("path", PAGES)
def test_anonymous_is_sent_to_sign_in(path, anon_client):
    response = anon_client.get(path)

    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={path}"


def test_another_tenants_session_is_anonymous_here(tenant, other_tenant, client_for):
    with tenant_context(other_tenant):
        foreign_owner = Member.objects.get(email="owner@other.test")
    foreign = client_for(foreign_owner, on=other_tenant)
    client = client_for(None)
    for name, morsel in foreign.cookies.items():
        client.cookies[name] = morsel.value

    response = client.get("/edi/")

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_another_tenants_file_is_not_found(
    tenant, other_tenant, admin_client, client_for
):
    foreign = receive(other_tenant, people(1))
    with tenant_context(tenant):
        # Ids repeat across schemas: make sure this one is free here.
        assert not EdiFile.objects.filter(pk=foreign.pk).exists()

    for suffix in ("", "status/", "results.csv", "raw.csv"):
        assert admin_client.get(file_url(foreign, suffix)).status_code == 404
    for suffix in ("apply/", "cancel/", "apply-anyway/"):
        assert admin_client.post(file_url(foreign, suffix)).status_code == 404
    with tenant_context(other_tenant):
        assert EdiFile.objects.get(pk=foreign.pk).status == EdiStatus.RECEIVED


def test_a_member_cannot_upload(tenant, make_member, client_for):
    response = upload(client_for(make_member(Role.READONLY_ADMIN)), people(2))

    assert response.status_code == 403
    assert files_in(tenant) == []
    assert spool_leftovers(tenant) == []


def test_nav_links_the_page_for_admins_only(
    tenant, admin_client, make_member, client_for
):
    assert 'href="/edi/"' in text(admin_client.get("/"))
    reporting = client_for(make_member(Role.READONLY_ADMIN))
    assert 'href="/edi/"' not in text(reporting.get("/"))


# --------------------------------------------------------------------------
# Upload


def test_upload_without_javascript_lands_on_the_files_page(tenant, admin, admin_client):
    data = people(3)

    response = upload(admin_client, data, mode="full")

    [edi_file] = files_in(tenant)
    assert response.status_code == 302
    assert response["Location"] == file_url(edi_file)
    assert edi_file.source == EdiSource.UI
    assert edi_file.uploaded_by_id == admin.pk
    assert edi_file.original_name == "people.csv"
    assert (edi_file.mode, edi_file.dry_run) == ("full", True)
    assert edi_file.sha256 == hashlib.sha256(data).hexdigest()
    assert edi_file.status == EdiStatus.RECEIVED
    [job] = import_jobs(tenant)
    assert job.params == {"file_id": str(edi_file.pk)}
    assert spool_leftovers(tenant) == []
    page = admin_client.get(file_url(edi_file))
    assert page.status_code == 200
    assert "Processing" in text(page)
    assert f'data-edi-status-url="{file_url(edi_file, "status/")}"' in text(page)


def test_upload_for_the_script_answers_202_with_what_to_poll(tenant, admin_client):
    response = upload(admin_client, people(2), as_json=True)

    assert response.status_code == 202
    body = response.json()
    [edi_file] = files_in(tenant)
    assert body["id"] == str(edi_file.pk)
    assert body["status_url"] == file_url(edi_file, "status/")
    assert body["url"] == file_url(edi_file)
    assert body["settled"] is False
    status = admin_client.get(body["status_url"]).json()
    assert status["status"] == "received"
    assert status["phase"] == "queued"
    assert status["percent"] == 0


def test_progress_follows_the_job_then_settles(tenant, admin_client):
    upload(admin_client, people(2))
    [edi_file] = files_in(tenant)
    assert edi_file.job_id is not None
    with tenant_context(tenant):
        Job.objects.filter(pk=edi_file.job_id).update(
            status="running", progress_done=40, progress_total=100, message="validating"
        )
    running = admin_client.get(file_url(edi_file, "status/")).json()
    run(tenant, edi_file)
    done = admin_client.get(file_url(edi_file, "status/")).json()

    assert (running["phase"], running["percent"], running["settled"]) == (
        "validating",
        40,
        False,
    )
    assert running["phase_label"] == "Checking the rows"
    assert (done["status"], done["percent"], done["settled"]) == (
        "validated",
        100,
        True,
    )


def test_the_form_offers_the_tenants_default_mode_and_preview_on(tenant, admin_client):
    with tenant_context(tenant):
        EdiSettings.objects.update_or_create(id=1, defaults={"default_mode": "full"})

    page = text(admin_client.get("/edi/"))

    assert re.search(r'<option value="full"\s+selected>', page)
    assert re.search(r'name="dry_run" id="id_dry_run"\s+checked', page)
    assert 'enctype="multipart/form-data"' in page
    assert 'type="file" name="file"' in page


def test_unticked_preview_is_a_real_run(tenant, admin_client):
    upload(admin_client, people(1), dry_run=False)

    [edi_file] = files_in(tenant)
    assert edi_file.dry_run is False


def test_an_empty_file_is_a_form_error(tenant, admin_client):
    response = upload(admin_client, b"")

    assert response.status_code == 400
    assert "The file is empty." in text(response)
    assert 'class="form-errors"' in text(response)
    assert files_in(tenant) == []
    assert spool_leftovers(tenant) == []


def test_no_file_chosen_is_a_form_error(tenant, admin_client):
    response = admin_client.post(UPLOAD, {"mode": "delta", "dry_run": "on"})

    assert response.status_code == 400
    assert "Choose a CSV file to upload." in text(response)
    assert files_in(tenant) == []


def test_a_bad_mode_is_a_form_error(tenant, admin_client):
    response = upload(admin_client, people(1), mode="sideways")

    assert response.status_code == 400
    assert "Select a valid choice" in text(response)
    assert files_in(tenant) == []
    assert spool_leftovers(tenant) == []


def test_a_file_over_the_limit_is_413_without_a_file(tenant, admin_client, settings):
    settings.EDI_MAX_FILE_BYTES = 1000

    response = upload(admin_client, b"email\n" + b"x@example.test\n" * 200)

    assert response.status_code == 413
    assert "This file is larger than the limit of 1000\xa0bytes." in text(response)
    assert files_in(tenant) == []
    assert spool_leftovers(tenant) == []


def test_an_oversize_declared_length_is_refused_before_reading(
    tenant, admin_client, settings
):
    settings.EDI_MAX_FILE_BYTES = 1000
    big = b"email\n" + b"x@example.test\n" * 10_000  # past limit + multipart slack

    page = upload(admin_client, big)
    script = upload(admin_client, big, as_json=True)

    assert page.status_code == 413
    assert "Nothing was received." in text(page)
    assert script.status_code == 413
    assert script.json()["error"]["code"] == "file_too_large"
    assert files_in(tenant) == []
    assert spool_leftovers(tenant) == []


def test_the_upload_checks_csrf(tenant, admin, client_for):
    client = client_for(admin)
    client.handler.enforce_csrf_checks = True

    refused = upload(client, people(1))
    page = client.get("/edi/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', text(page))
    assert token is not None
    accepted = client.post(
        UPLOAD,
        {
            "csrfmiddlewaretoken": token.group(1),
            "mode": "delta",
            "file": SimpleUploadedFile("p.csv", people(1)),
        },
    )

    assert refused.status_code == 403
    assert accepted.status_code == 302
    assert len(files_in(tenant)) == 1
    assert spool_leftovers(tenant) == []


# --------------------------------------------------------------------------
# Deciding: apply, discard, apply anyway


def test_apply_a_previewed_file_once(tenant, admin, admin_client):
    upload(admin_client, people(3))
    [edi_file] = files_in(tenant)
    edi_file = run(tenant, edi_file)
    assert edi_file.status == EdiStatus.VALIDATED
    page = text(admin_client.get(file_url(edi_file)))
    assert "Preview: nothing has changed yet." in page
    assert ">Apply</button>" in page
    assert ">Discard</button>" in page
    assert "person1@corp.test" in page  # a sample of the new members

    first = admin_client.post(file_url(edi_file, "apply/"))
    second = admin_client.post(file_url(edi_file, "apply/"))  # the double click

    assert first.status_code == second.status_code == 302
    edi_file = the_file(tenant, edi_file.pk)
    assert edi_file.status == EdiStatus.RECEIVED
    assert edi_file.dry_run is False
    assert edi_file.approved_by_id == admin.pk
    assert edi_file.approved_at is not None
    jobs = import_jobs(tenant)
    assert len(jobs) == 2  # the preview's and one approved run
    assert jobs[1].pk == edi_file.job_id
    assert jobs[1].params == {"file_id": str(edi_file.pk), "approved": True}
    assert len(events(tenant, "edi.file.approved")) == 1
    shown = text(admin_client.get(file_url(edi_file)))
    assert "only a previewed or held file can be applied" in shown

    done = run(tenant, edi_file)
    assert done.status == EdiStatus.COMPLETED
    assert done.counts["created"] == 3


def test_discard_a_previewed_file(tenant, admin_client):
    upload(admin_client, people(2))
    [edi_file] = files_in(tenant)
    run(tenant, edi_file)

    admin_client.post(file_url(edi_file, "cancel/"))
    again = admin_client.post(file_url(edi_file, "apply/"))

    edi_file = the_file(tenant, edi_file.pk)
    assert again.status_code == 302
    assert edi_file.status == EdiStatus.CANCELLED
    assert edi_file.finished_at is not None
    assert len(import_jobs(tenant)) == 1
    assert len(events(tenant, "edi.file.cancelled")) == 1
    with tenant_context(tenant):
        assert not Member.objects.filter(email="person1@corp.test").exists()
    page = text(admin_client.get(file_url(edi_file)))
    assert "Discarded: nothing from this file was applied." in page
    assert ">Apply</button>" not in page


@pytest.mark.parametrize("status", [EdiStatus.RECEIVED, EdiStatus.COMPLETED])
def test_only_validated_or_held_files_can_be_decided(status, tenant, admin_client):
    edi_file = receive(tenant, people(1))
    with tenant_context(tenant):
        EdiFile.objects.filter(pk=edi_file.pk).update(status=status)

    for action in ("apply/", "cancel/", "apply-anyway/"):
        response = admin_client.post(file_url(edi_file, action))
        assert response.status_code == 302

    assert the_file(tenant, edi_file.pk).status == status
    assert len(import_jobs(tenant)) == 1


def test_approve_a_held_full_file(tenant, admin, admin_client):
    with tenant_context(tenant):
        # Not in the HR file, and not to be deactivated by it.
        Member.objects.filter(pk=admin.pk).update(managed_by_edi=False)
    imported(tenant, people(10))
    upload(admin_client, people(5), mode="full", dry_run=False)
    held = run(tenant, files_in(tenant)[-1])
    assert held.status == EdiStatus.HELD
    page = text(admin_client.get(file_url(held)))
    assert "Held for approval: nothing has changed." in page
    assert "It would deactivate 5 of 12 active members" in page
    assert "person10@corp.test" in page  # among those to deactivate
    assert "Approve and apply" in page

    admin_client.post(file_url(held, "apply/"))
    done = run(tenant, held)

    assert done.status == EdiStatus.COMPLETED
    assert done.counts["deactivated"] == 5
    with tenant_context(tenant):
        assert Member.objects.get(email="person10@corp.test").status == "deactivated"


def test_apply_a_duplicate_anyway_once(tenant, admin, admin_client):
    imported(tenant, people(2))
    upload(admin_client, people(2), dry_run=False)
    duplicate = files_in(tenant)[-1]
    assert duplicate.status == EdiStatus.DUPLICATE
    assert "Apply anyway" in text(admin_client.get(file_url(duplicate)))

    admin_client.post(file_url(duplicate, "apply-anyway/"))
    admin_client.post(file_url(duplicate, "apply-anyway/"))

    duplicate = the_file(tenant, duplicate.pk)
    assert duplicate.status == EdiStatus.RECEIVED
    assert duplicate.approved_by_id == admin.pk
    assert duplicate.job_id is not None
    [job] = [j for j in import_jobs(tenant) if j.pk == duplicate.job_id]
    assert job.params == {"file_id": str(duplicate.pk)}
    assert len(events(tenant, "edi.file.duplicate_overridden")) == 1
    done = run(tenant, duplicate)
    assert done.status == EdiStatus.COMPLETED
    assert done.counts["unchanged"] == 2


def test_a_rejected_file_shows_its_codes_and_lines(tenant, admin_client):
    edi_file = imported(tenant, b"name,department\nAda,Sales\n")

    page = text(admin_client.get(file_url(edi_file)))

    assert edi_file.status == EdiStatus.REJECTED
    assert "Rejected: nothing was applied." in page
    assert "HEADER_MISSING_EMAIL" in page
    assert ">Apply</button>" not in page


# --------------------------------------------------------------------------
# Downloads


def test_results_and_raw_downloads_are_audited(tenant, admin_client):
    data = people(2)
    edi_file = imported(tenant, data, original_name="people.csv")
    assert edi_file.status == EdiStatus.COMPLETED

    results = admin_client.get(file_url(edi_file, "results.csv"))
    raw = admin_client.get(file_url(edi_file, "raw.csv"))

    assert results.status_code == 200
    assert results["Content-Type"].startswith("text/csv")
    body = b"".join(results.streaming_content).decode("utf-8-sig")
    assert body.splitlines()[0].startswith('"row_number"')
    assert "person2@corp.test" in body
    assert raw.status_code == 200
    assert b"".join(raw.streaming_content) == data
    assert raw["Content-Disposition"] == (
        f'attachment; filename="edi-{edi_file.pk}-people.csv"'
    )
    assert len(events(tenant, "edi.file.results_downloaded")) == 1
    [raw_event] = events(tenant, "edi.file.raw_downloaded")
    assert raw_event.actor_type == "member"
    page = text(admin_client.get(file_url(edi_file)))
    assert "Download results CSV" in page
    assert "Download raw file" in page


def test_results_before_they_exist_are_not_found(tenant, admin_client):
    edi_file = receive(tenant, people(1), original_name="people.csv")

    response = admin_client.get(file_url(edi_file, "results.csv"))

    assert response.status_code == 404
    assert events(tenant, "edi.file.results_downloaded") == []


def test_a_purged_raw_file_is_not_found_and_not_audited(tenant, admin_client):
    edi_file = receive(tenant, people(1), original_name="people.csv")
    with tenant_context(tenant):
        from django.utils import timezone

        EdiFile.objects.filter(pk=edi_file.pk).update(purged_at=timezone.now())

    response = admin_client.get(file_url(edi_file, "raw.csv"))

    assert response.status_code == 404
    assert events(tenant, "edi.file.raw_downloaded") == []


# --------------------------------------------------------------------------
# History


def test_history_lists_every_channel_newest_first(tenant, admin_client):
    with tenant_context(tenant):
        token, _ = edi_token_issue(name="Workday", actor=None)
    receive(tenant, people(1), original_name="browser.csv")
    receive(
        tenant, people(2), source=EdiSource.API, token=token, original_name="api.csv"
    )
    receive(tenant, people(3), source=EdiSource.SFTP, original_name="full-nightly.csv")

    page = text(admin_client.get("/edi/"))

    names = re.findall(r'<a href="/edi/files/[^"]+/">([^<]+)</a>', page)
    assert names == ["full-nightly.csv", "api.csv", "browser.csv"]
    assert "token “Workday”" in page
    for label in ("Browser", "HTTPS", "SFTP"):
        assert f"<td>{label}" in page


def test_history_pages_by_25(tenant, admin_client):
    for n in range(27):
        receive(tenant, people(1, start=n + 1), original_name=f"f{n:02}.csv")

    first = text(admin_client.get("/edi/"))
    older = re.search(r'href="\?after=([^"]+)">Older files', first)
    assert older is not None
    second = text(admin_client.get(f"/edi/?after={older.group(1)}"))

    first_names = re.findall(r">(f\d\d\.csv)<", first)
    second_names = re.findall(r">(f\d\d\.csv)<", second)
    assert len(first_names) == 25
    assert second_names == ["f01.csv", "f00.csv"]
    assert "Older files" not in second
    # A malformed cursor is the first page, not an error.
    assert admin_client.get("/edi/?after=%%%").status_code == 200


# --------------------------------------------------------------------------
# Settings


def settings_post(client: Client, **data: Any) -> Any:
    form = {
        "default_mode": "delta",
        "deactivation_threshold_percent": "20",
        "invalid_rows_percent": "10",
        "retention_days": "90",
    } | {k: str(v) for k, v in data.items()}
    return client.post("/edi/settings/general/", form)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("deactivation_threshold_percent", 150, "less than or equal to 100"),
        ("invalid_rows_percent", -1, "greater than or equal to 0"),
        ("retention_days", 0, "greater than or equal to 1"),
        ("retention_days", 5000, "less than or equal to 3650"),
        ("retention_days", "ninety", "Enter a whole number."),
        ("default_mode", "sometimes", "Select a valid choice"),
    ],
)
def test_settings_refuse_values_out_of_range(
    field, value, message, tenant, admin_client
):
    response = settings_post(admin_client, **{field: value})

    assert response.status_code == 400
    page = text(response)
    assert message in page
    assert f'id="id_{field}-error"' in page
    with tenant_context(tenant):
        assert EdiSettings.objects.filter(id=1, retention_days=90).exists() or (
            not EdiSettings.objects.exists()
        )
    assert events(tenant, "edi.settings.updated") == []


def test_settings_save_and_are_audited(tenant, admin_client):
    response = settings_post(
        admin_client,
        default_mode="full",
        deactivation_threshold_percent=30,
        retention_days=30,
    )

    assert response.status_code == 302
    assert response["Location"] == "/edi/settings/#import"
    with tenant_context(tenant):
        row = EdiSettings.objects.get()
    assert (row.default_mode, row.deactivation_threshold_percent) == ("full", 30)
    assert row.retention_days == 30
    [event] = events(tenant, "edi.settings.updated")
    assert event.changes["retention_days"] == {"from": 90, "to": 30}
    assert "invalid_rows_percent" not in event.changes


def test_rules_add_refuse_duplicates_and_remove(tenant, admin_client):
    added = admin_client.post(
        "/edi/settings/rule-add/", {"field": "department", "value": " Sales "}
    )
    again = admin_client.post(
        "/edi/settings/rule-add/", {"field": "department", "value": "SALES"}
    )
    blank = admin_client.post(
        "/edi/settings/rule-add/", {"field": "group", "value": "  "}
    )
    with tenant_context(tenant):
        [rule] = AutoProvisionRule.objects.all()
    removed = admin_client.post("/edi/settings/rule-remove/", {"id": rule.pk})

    assert added.status_code == 302
    assert (rule.field, rule.value) == ("department", "Sales")
    assert again.status_code == 400
    assert "This rule exists already." in text(again)
    assert blank.status_code == 400
    assert "This field is required." in text(blank)
    assert removed.status_code == 302
    with tenant_context(tenant):
        assert not AutoProvisionRule.objects.exists()
    assert len(events(tenant, "edi.rule.added")) == 1
    assert len(events(tenant, "edi.rule.removed")) == 1


def test_a_token_is_shown_once_and_stored_as_a_hash(tenant, admin_client):
    response = admin_client.post(
        "/edi/settings/token-create/",
        {"name": "Workday", "scopes": ["edi:write"], "lifetime_days": "90"},
    )

    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    match = re.search(r'value="(edi_[A-Za-z0-9_-]{43})"', text(response))
    assert match is not None
    plaintext = match.group(1)
    with tenant_context(tenant):
        token = EdiToken.objects.get()
        stored = json.dumps(list(EdiToken.objects.values()), default=str)
    assert token.token_hash == hashlib.sha256(plaintext.encode()).hexdigest()
    assert plaintext not in stored
    assert token.scopes == ["edi:write"]
    assert 85 <= (token.expires_at - token.created_at).days <= 90
    later = text(admin_client.get("/edi/settings/"))
    assert plaintext not in later
    assert f"{token.prefix}…" in later


def test_a_token_needs_a_scope_and_a_name(tenant, admin_client):
    response = admin_client.post(
        "/edi/settings/token-create/", {"name": "", "lifetime_days": "365"}
    )

    assert response.status_code == 400
    assert "Tick at least one scope." in text(response)
    assert "This field is required." in text(response)
    with tenant_context(tenant):
        assert not EdiToken.objects.exists()


def test_a_token_is_revoked(tenant, admin_client):
    with tenant_context(tenant):
        token, _ = edi_token_issue(name="Old", actor=None)

    admin_client.post("/edi/settings/token-revoke/", {"id": token.pk})

    with tenant_context(tenant):
        assert EdiToken.objects.get().revoked_at is not None
    assert "Revoked" in text(admin_client.get("/edi/settings/"))


def _openssh(public_key: Any) -> str:
    return public_key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


@pytest.mark.parametrize(
    ("key_text", "message"),
    [
        ("", "This field is required."),
        ("hello world", "Not an OpenSSH public key line"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n", "This is a private key"),
        ("ssh-ed25519 !!!notbase64 me@x", "not valid base64"),
        ("dsa", "DSA keys are refused."),
        ("rsa1024", "at least 2048 are required"),
    ],
)
def test_a_bad_sftp_key_is_a_clear_error(key_text, message, tenant, admin_client):
    if key_text == "dsa":
        # Refused by its type name, before its (here truncated) data is read.
        key_text = "ssh-dss AAAAB3NzaC1kc3MAAACBAPY= old@host"
    elif key_text == "rsa1024":
        private = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
        key_text = _openssh(private.public_key())

    response = admin_client.post(
        "/edi/settings/key-add/", {"name": "HR", "public_key": key_text}
    )

    assert response.status_code == 400
    assert message in text(response)
    assert 'id="key_public_key-error"' in text(response)
    with tenant_context(tenant):
        assert not SftpKey.objects.exists()


def test_an_sftp_key_is_added_listed_and_removed(tenant, admin_client):
    line = _openssh(ed25519.Ed25519PrivateKey.generate().public_key()) + " hr@corp"

    added = admin_client.post(
        "/edi/settings/key-add/", {"name": "", "public_key": line}
    )
    twice = admin_client.post(
        "/edi/settings/key-add/", {"name": "", "public_key": line}
    )
    with tenant_context(tenant):
        key = SftpKey.objects.get()
    page = text(admin_client.get("/edi/settings/"))
    removed = admin_client.post("/edi/settings/key-remove/", {"id": key.pk})

    assert added.status_code == 302
    assert key.name == "hr@corp"  # the comment, as no name was given
    assert twice.status_code == 400
    assert "This key is already registered." in text(twice)
    assert key.fingerprint in page
    assert removed.status_code == 302
    with tenant_context(tenant):
        assert not SftpKey.objects.exists()
    assert len(events(tenant, "edi.sftp_key.registered")) == 1
    assert len(events(tenant, "edi.sftp_key.removed")) == 1


def test_settings_show_the_drop_box_and_host_key_fingerprints(tenant, admin_client):
    from edi.services.sftp import sftp_host_key_ensure

    before = text(admin_client.get("/edi/settings/"))
    host_key = sftp_host_key_ensure()
    after = text(admin_client.get("/edi/settings/"))

    assert "Not created yet" in before
    assert "<dt>Username</dt><dd><code>tenant</code></dd>" in after
    assert "<code>tenant.localhost</code>" in after
    assert "<code>2222</code>" in after
    assert host_key.sha256 in after
    assert host_key.md5 in after


def test_unknown_settings_action_is_not_found(admin_client):
    assert admin_client.post("/edi/settings/explode/").status_code == 404


def test_removing_something_already_gone_is_a_message(tenant, admin_client):
    response = admin_client.post(
        "/edi/settings/rule-remove/", {"id": 99999}, follow=True
    )

    assert "This rule does not exist (any more)." in text(response)


def test_two_simultaneous_approvals_start_one_run(committed_tenant):
    """The double click, for real: two transactions race; one run starts."""
    import threading

    from django.db import connection

    from edi.services.admin import edi_file_apply
    from portal.errors import Conflict
    from tests.worker import use_test_broker

    tenant = committed_tenant
    with tenant_context(tenant):
        owner = Member.objects.get(email=f"owner@{tenant.slug}.test")
    # The receipt's task goes to a throw-away queue, never to a worker.
    with use_test_broker():
        edi_file = receive(tenant, people(2), dry_run=True)
        with tenant_context(tenant):
            EdiFile.objects.filter(pk=edi_file.pk).update(status=EdiStatus.VALIDATED)
        start = threading.Barrier(2)
        outcomes: list[str] = []

        def click() -> None:
            try:
                with tenant_context(tenant):
                    start.wait(timeout=10)
                    edi_file_apply(edi_file_id=edi_file.pk, by=owner)
                outcomes.append("applied")
            except Conflict:
                outcomes.append("refused")
            finally:
                connection.close()

        threads = [threading.Thread(target=click) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

    assert sorted(outcomes) == ["applied", "refused"]
    assert len(import_jobs(tenant)) == 2  # the preview's and one approved run
    assert len(events(tenant, "edi.file.approved")) == 1
