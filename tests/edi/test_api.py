"""EDI over HTTPS: `/api/v1/edi/files/` (DESIGN.md, edi.md EDI-C2 and §7).

One test per status code, plus the channel's promises: streamed bodies
(raw and multipart, Content-Length and chunked), the tenant's default mode,
dry runs, Idempotency-Key under a real race, and tokens acting as no
member. The import pipeline is not run here: files stay `received`.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client
from django.test.client import BOUNDARY, MULTIPART_CONTENT, encode_multipart
from django.utils import timezone
from django_tenants.utils import schema_context, tenant_context

from edi.models import EdiFile, EdiSettings, EdiSource, EdiToken
from edi.services.receive import edi_file_receive, media_dir
from edi.services.spool import SpoolWriter, spool_dir
from edi.services.tokens import edi_token_issue, edi_token_revoke
from portal.models import AuditEvent
from portal.roles import Role
from tenants.models import Tenant

FILES = "/api/v1/edi/files/"
CSV = b"email,first_name,last_name\nada@example.test,Ada,Lovelace\n"
OTHER_CSV = b"email\ngrace@example.test\n"


@pytest.fixture(autouse=True)
def _private_storage(settings: Any, tmp_path: Path) -> None:
    """Spool and media of this test only, so leftovers can be counted."""
    settings.PORTAL_DATA_DIR = tmp_path
    settings.MEDIA_ROOT = str(tmp_path / "media")


def issue(tenant: Tenant, **kwargs: Any) -> str:
    kwargs.setdefault("name", "HR system")
    with tenant_context(tenant):
        return edi_token_issue(actor=None, **kwargs)[1]


@pytest.fixture
def token(tenant: Tenant) -> str:
    return issue(tenant)


@pytest.fixture
def api(client_for: Any) -> Client:
    """No session: requests carry only what each test gives them."""
    return client_for(None)


def auth(plaintext: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {plaintext}"}


def post_csv(
    client: Client,
    plaintext: str,
    body: bytes = CSV,
    *,
    query: str = "",
    content_type: str = "text/csv",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Any:
    return client.post(
        FILES + query,
        body,
        content_type=content_type,
        headers=auth(plaintext) | (headers or {}),
        **extra,
    )


def files_in(tenant: Tenant) -> list[EdiFile]:
    with tenant_context(tenant):
        return list(EdiFile.objects.order_by("received_at"))


def spool_leftovers(tenant: Tenant) -> list[str]:
    return sorted(p.name for p in spool_dir(tenant.schema_name).iterdir())


def error(response: Any) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def receive(tenant: Tenant, data: bytes, **kwargs: Any) -> EdiFile:
    """A file received on another channel (the browser or SFTP)."""
    with tenant_context(tenant):
        writer = SpoolWriter(tenant.schema_name)
        writer.write(data)
        return edi_file_receive(spooled=writer.finish(), **kwargs)


# --------------------------------------------------------------------------
# 202


def test_raw_csv_is_accepted_with_a_location_to_poll(tenant, api, token):
    response = post_csv(api, token, content_type="text/csv; charset=utf-8")

    assert response.status_code == 202
    body = response.json()
    assert response["Location"] == f"{FILES}{body['id']}/"
    assert body["status"] == "received"
    assert body["sha256"] == hashlib.sha256(CSV).hexdigest()
    assert body["size"] == len(CSV)
    assert body["source"] == "api"
    assert body["mode"] == "delta"
    assert body["dry_run"] is False
    assert body["counts"] == {
        "rows": None,
        "created": None,
        "updated": None,
        "deactivated": None,
        "unchanged": None,
        "row_errors": None,
    }
    assert body["errors"] == []
    assert body["duplicate_of"] is None
    assert body["finished_at"] is None
    assert body["results_url"] is None
    [edi_file] = files_in(tenant)
    assert str(edi_file.pk) == body["id"]
    assert edi_file.source == EdiSource.API
    assert edi_file.uploaded_by_id is None
    assert spool_leftovers(tenant) == []
    with tenant_context(tenant):
        assert edi_file.token == EdiToken.objects.get()
        event = AuditEvent.objects.get(action="edi.file.received")
        assert EdiToken.objects.get().last_used_at is not None
        # The database holds the token's hash, never the token (EDI-C2).
        stored = json.dumps(
            [
                list(EdiToken.objects.values()),
                list(EdiFile.objects.values()),
                list(AuditEvent.objects.values()),
            ],
            default=str,
        )
    assert hashlib.sha256(token.encode()).hexdigest() in stored
    assert token[8:] not in stored
    # The token acts: no member, and the audit log names the token.
    assert (event.actor_type, event.actor_label) == ("edi_token", "HR system")
    assert event.source == "api"
    assert event.target_id == body["id"]


def test_multipart_field_file_is_accepted(tenant, api, token):
    upload = SimpleUploadedFile("staff.csv", CSV, content_type="text/csv")
    response = api.post(FILES, {"note": "ignored", "file": upload}, headers=auth(token))

    assert response.status_code == 202
    body = response.json()
    assert body["name"] == "staff.csv"
    assert body["sha256"] == hashlib.sha256(CSV).hexdigest()
    assert body["size"] == len(CSV)
    assert [f.original_name for f in files_in(tenant)] == ["staff.csv"]
    assert spool_leftovers(tenant) == []


def test_mode_defaults_to_the_tenants_setting_and_the_query_overrides_it(
    tenant, api, token
):
    with tenant_context(tenant):
        EdiSettings.objects.update_or_create(id=1, defaults={"default_mode": "full"})

    by_default = post_csv(api, token)
    explicit = post_csv(api, token, OTHER_CSV, query="?mode=delta")

    assert by_default.json()["mode"] == "full"
    assert explicit.json()["mode"] == "delta"
    assert [f.mode for f in files_in(tenant)] == ["full", "delta"]


def test_dry_run_flag_is_kept(tenant, api, token):
    response = post_csv(api, token, query="?dry_run=true&mode=full")

    assert response.status_code == 202
    assert response.json()["dry_run"] is True
    assert [(f.dry_run, f.mode) for f in files_in(tenant)] == [(True, "full")]


def test_same_bytes_again_are_a_duplicate_of_the_file_in_flight(tenant, api, token):
    first = post_csv(api, token).json()
    second = post_csv(api, token).json()

    assert second["status"] == "duplicate"
    assert second["duplicate_of"] == first["id"]


# --------------------------------------------------------------------------
# 400


def test_empty_raw_body_is_400_empty_file(tenant, api, token):
    # Django's test client drops the type of an empty body; a real one sends it.
    response = post_csv(api, token, b"", CONTENT_TYPE="text/csv")
    untyped = post_csv(api, token, b"", content_type="")

    assert error(response) == (400, "empty_file")
    assert error(untyped) == (400, "empty_file")
    assert files_in(tenant) == []
    assert spool_leftovers(tenant) == []


def test_empty_multipart_file_is_400_empty_file(tenant, api, token):
    upload = SimpleUploadedFile("staff.csv", b"", content_type="text/csv")
    response = api.post(FILES, {"file": upload}, headers=auth(token))

    assert error(response) == (400, "empty_file")
    assert files_in(tenant) == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?mode=everything", "mode"),
        ("?dry_run=perhaps", "dry_run"),
        # A misspelt dry_run must not turn a rehearsal into an import.
        ("?dryrun=true", "dryrun"),
    ],
)
def test_bad_parameter_is_400_and_reads_nothing(tenant, api, token, query, field):
    response = post_csv(api, token, query=query)

    assert error(response) == (400, "invalid")
    assert field in response.json()["error"]["details"]
    assert files_in(tenant) == []


def test_multipart_without_the_file_field_is_400(tenant, api, token):
    as_text = api.post(FILES, {"file": CSV.decode()}, headers=auth(token))
    missing = api.post(
        FILES,
        {"upload": SimpleUploadedFile("staff.csv", CSV)},
        headers=auth(token),
    )

    assert error(as_text) == (400, "invalid")
    assert "file part" in as_text.json()["error"]["details"]["file"][0]
    assert error(missing) == (400, "invalid")
    assert missing.json()["error"]["details"] == {"file": ["This field is required."]}
    assert files_in(tenant) == []
    assert spool_leftovers(tenant) == []


def test_overlong_idempotency_key_is_400(tenant, api, token):
    response = post_csv(api, token, headers={"Idempotency-Key": "k" * 201})

    assert error(response) == (400, "invalid_idempotency_key")
    assert files_in(tenant) == []


# --------------------------------------------------------------------------
# 401: every refusal is audited; wrong and foreign tokens look the same


def _refused_events(tenant: Tenant) -> list[dict[str, Any]]:
    with tenant_context(tenant):
        return [
            e.changes
            for e in AuditEvent.objects.filter(action="edi.token.refused").order_by(
                "pk"
            )
        ]


def test_wrong_and_other_tenants_tokens_get_the_same_401(
    tenant, other_tenant, api, token
):
    foreign = issue(other_tenant)
    unknown = "edi_" + "B" * 43

    answers = [post_csv(api, bad) for bad in (foreign, unknown, "garbage")]
    answers.append(api.get(FILES, headers=auth(foreign)))

    assert {(r.status_code, r.content) for r in answers} == {
        (
            401,
            json.dumps(
                {
                    "error": {
                        "code": "invalid_token",
                        "message": "The token is not valid.",
                        "details": {},
                    }
                },
                separators=(",", ":"),
            ).encode(),
        )
    }
    assert {r["WWW-Authenticate"] for r in answers} == {
        'Bearer realm="edi", error="invalid_token"'
    }
    assert [e["reason"] for e in _refused_events(tenant)] == ["invalid_token"] * 4
    assert _refused_events(other_tenant) == []
    assert files_in(tenant) == []


def test_expired_token_is_401_token_expired(tenant, api, token):
    with tenant_context(tenant):
        EdiToken.objects.update(expires_at=timezone.now() - timedelta(minutes=1))

    response = post_csv(api, token)

    assert error(response) == (401, "token_expired")
    assert [e["reason"] for e in _refused_events(tenant)] == ["token_expired"]
    assert files_in(tenant) == []


def test_revoked_token_is_401_token_revoked_at_once(tenant, api, token):
    assert post_csv(api, token).status_code == 202
    with tenant_context(tenant):
        edi_token_revoke(token=EdiToken.objects.get(), actor=None)

    response = post_csv(api, token, OTHER_CSV)

    assert error(response) == (401, "token_revoked")
    assert [e["reason"] for e in _refused_events(tenant)] == ["token_revoked"]
    assert len(files_in(tenant)) == 1


def test_no_credentials_is_401(tenant, api):
    response = api.post(FILES, CSV, content_type="text/csv")
    listing = api.get(FILES)

    assert error(response) == (401, "not_authenticated")
    assert response["WWW-Authenticate"] == 'Bearer realm="edi"'
    assert error(listing) == (401, "not_authenticated")
    assert files_in(tenant) == []


def test_upload_takes_a_token_not_a_session(tenant, client_for, tenant_admin):
    """The browser uploads through /edi/; a session is no API credential."""
    admin = client_for(tenant_admin)

    response = admin.post(FILES, CSV, content_type="text/csv")

    assert error(response) == (401, "not_authenticated")
    assert files_in(tenant) == []


# --------------------------------------------------------------------------
# 403


def test_token_without_the_scope_is_403_insufficient_scope(tenant, api):
    reader = issue(tenant, scopes=["edi:read"])
    writer = issue(tenant, scopes=["edi:write"])

    upload = post_csv(api, reader)
    listing = api.get(FILES, headers=auth(writer))

    assert error(upload) == (403, "insufficient_scope")
    assert upload.json()["error"]["details"] == {"required_scope": "edi:write"}
    assert upload["WWW-Authenticate"] == (
        'Bearer realm="edi", error="insufficient_scope", scope="edi:write"'
    )
    assert error(listing) == (403, "insufficient_scope")
    assert api.get(FILES, headers=auth(reader)).status_code == 200
    assert files_in(tenant) == []


def test_session_needs_the_edi_view_capability(tenant, client_for, make_member):
    member = client_for(make_member(Role.MEMBER))
    readonly = client_for(make_member(Role.READONLY_ADMIN))

    assert error(member.get(FILES)) == (403, "permission_denied")
    assert readonly.get(FILES).status_code == 200


# --------------------------------------------------------------------------
# 404


def test_unknown_malformed_and_other_tenants_ids_are_404(
    tenant, other_tenant, api, token, client_for, tenant_admin
):
    foreign = receive(other_tenant, CSV, source="ui")
    with tenant_context(tenant):
        assert not EdiFile.objects.filter(pk=foreign.pk).exists()
    admin = client_for(tenant_admin)

    for file_id in (foreign.pk, uuid.uuid4(), "not-a-uuid"):
        for client, headers in ((api, auth(token)), (admin, {})):
            for suffix in ("", "results.csv"):
                response = client.get(f"{FILES}{file_id}/{suffix}", headers=headers)
                assert error(response) == (404, "not_found"), (file_id, suffix)


# --------------------------------------------------------------------------
# 409 and the results


def test_results_are_409_not_ready_until_written(tenant, api, token):
    file_id = post_csv(api, token).json()["id"]

    response = api.get(f"{FILES}{file_id}/results.csv", headers=auth(token))

    assert error(response) == (409, "not_ready")
    assert response.json()["error"]["details"] == {"status": "received"}


def test_results_stream_once_written(tenant, api, token):
    """Exercises the ready path with a results file written here.

    The results writer (`edi.services.results`) belongs to the pipeline;
    the file is made the way it writes one: encrypted with the keyring
    under the tenant's media, named by `results_name`.
    """
    results = pytest.importorskip("edi.services.results")
    assert callable(results.results_open)
    from portal.services.keyring import keyring_file_store

    csv_text = b"row_number,employee_id,email,outcome\n2,,ada@example.test,created\n"
    file_id = post_csv(api, token).json()["id"]
    with tenant_context(tenant):
        edi_file = EdiFile.objects.get(pk=file_id)
        edi_file.results_name = f"{file_id}.results"
        edi_file.save(update_fields=["results_name"])
        keyring_file_store(
            purpose="edi",
            file_id=f"{file_id}.results",
            src=io.BytesIO(csv_text),
            path=media_dir() / edi_file.results_name,
        )

    response = api.get(f"{FILES}{file_id}/results.csv", headers=auth(token))

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert b"".join(response.streaming_content) == csv_text
    detail = api.get(f"{FILES}{file_id}/", headers=auth(token)).json()
    assert detail["results_url"] == f"{FILES}{file_id}/results.csv"


# --------------------------------------------------------------------------
# 413: by Content-Length before reading, and by a chunked body at the limit


class Unreadable(io.RawIOBase):
    def read(self, size: int = -1) -> bytes:
        raise AssertionError("the body was read")


def test_oversize_content_length_is_413_before_the_body_is_read(
    tenant, api, token, settings
):
    settings.EDI_MAX_FILE_BYTES = 100

    response = api.post(
        FILES,
        content_type="text/csv",
        headers=auth(token),
        CONTENT_LENGTH="2147483648",  # 2 GB (§7)
        **{"wsgi.input": Unreadable()},
    )

    assert error(response) == (413, "file_too_large")
    assert response.json()["error"]["details"] == {"limit_bytes": 100}
    assert files_in(tenant) == []
    assert spool_leftovers(tenant) == []


def test_content_length_at_the_limit_is_accepted(tenant, api, token, settings):
    body = b"email\n" + b"a" * 94
    settings.EDI_MAX_FILE_BYTES = len(body)

    assert post_csv(api, token, body).status_code == 202
    assert error(post_csv(api, token, body + b"\n")) == (413, "file_too_large")


def chunked(stream: io.BytesIO, terminated: bool = True) -> dict[str, Any]:
    """The environ of a chunked request as a decoding server presents it."""
    return {
        "CONTENT_TYPE": "text/csv",
        "CONTENT_LENGTH": "",
        "HTTP_TRANSFER_ENCODING": "chunked",
        "wsgi.input": stream,
        "wsgi.input_terminated": terminated,
    }


def test_chunked_body_is_cut_at_the_limit_with_413(tenant, api, token, settings):
    settings.EDI_MAX_FILE_BYTES = 1000
    stream = io.BytesIO(b"email\n" + b"x" * 10_000_000)

    response = api.post(FILES, headers=auth(token), **chunked(stream))

    assert error(response) == (413, "file_too_large")
    assert stream.tell() <= 1000 + 256 * 1024  # stopped within one chunk
    assert files_in(tenant) == []
    assert spool_leftovers(tenant) == []


def test_chunked_body_within_the_limit_is_accepted(tenant, api, token):
    raw = api.post(FILES, headers=auth(token), **chunked(io.BytesIO(CSV)))
    multipart = api.post(
        FILES,
        headers=auth(token),
        **chunked(
            io.BytesIO(
                encode_multipart(BOUNDARY, {"file": SimpleUploadedFile("d.csv", CSV)})
            )
        )
        | {"CONTENT_TYPE": MULTIPART_CONTENT},
        QUERY_STRING="dry_run=true",
    )

    assert raw.status_code == multipart.status_code == 202
    assert raw.json()["sha256"] == hashlib.sha256(CSV).hexdigest()
    assert multipart.json()["sha256"] == hashlib.sha256(CSV).hexdigest()
    assert multipart.json()["name"] == "d.csv"


def test_chunked_body_on_a_server_that_cannot_decode_it_is_411(tenant, api, token):
    response = api.post(
        FILES, headers=auth(token), **chunked(io.BytesIO(CSV), terminated=False)
    )

    assert error(response) == (411, "length_required")
    assert files_in(tenant) == []


def test_oversize_multipart_file_is_413(tenant, api, token, settings):
    settings.EDI_MAX_FILE_BYTES = 100
    upload = SimpleUploadedFile("staff.csv", b"email\n" + b"y" * 200)

    response = api.post(FILES, {"file": upload}, headers=auth(token))

    assert error(response) == (413, "file_too_large")
    assert files_in(tenant) == []
    assert spool_leftovers(tenant) == []


# --------------------------------------------------------------------------
# 415


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/octet-stream", ""]
)
def test_other_content_types_are_415(tenant, api, token, content_type):
    response = post_csv(api, token, content_type=content_type)

    assert error(response) == (415, "unsupported_media_type")
    assert files_in(tenant) == []


# --------------------------------------------------------------------------
# 422 and Idempotency-Key


def test_idempotency_key_replays_the_file_and_conflicts_on_other_bytes(
    tenant, api, token
):
    key = {"Idempotency-Key": "upload-2024-06-01"}
    first = post_csv(api, token, headers=key)
    replay = post_csv(api, token, headers=key)
    conflict = post_csv(api, token, OTHER_CSV, headers=key)

    assert first.status_code == replay.status_code == 202
    assert replay.json()["id"] == first.json()["id"]
    assert replay.json()["status"] == "received"
    assert error(conflict) == (422, "idempotency_conflict")
    assert len(files_in(tenant)) == 1
    assert spool_leftovers(tenant) == []


def test_idempotency_keys_belong_to_their_token(tenant, api, token):
    other = issue(tenant, name="Second system")
    key = {"Idempotency-Key": "same-key"}

    a = post_csv(api, token, headers=key).json()
    b = post_csv(api, other, OTHER_CSV, headers=key).json()

    assert a["id"] != b["id"]


@pytest.fixture
def committed_token(committed_tenant: Tenant) -> tuple[Tenant, str, str]:
    with tenant_context(committed_tenant):
        plaintext = edi_token_issue(name="HR system", actor=None)[1]
    with schema_context("public"):
        host = committed_tenant.domains.get().domain
    return committed_tenant, host, plaintext


@pytest.mark.schema
def test_ten_parallel_posts_with_one_key_create_one_file(committed_token):
    tenant, host, plaintext = committed_token
    barrier = threading.Barrier(10, timeout=10)
    answers: dict[int, Any] = {}
    errors: list[BaseException] = []

    def post_once(index: int) -> None:
        from django.db import connection as thread_connection

        try:
            client = Client(HTTP_HOST=host)
            barrier.wait()
            answers[index] = post_csv(
                client, plaintext, headers={"Idempotency-Key": "nightly-42"}
            )
        except BaseException as exc:  # reported to the main thread
            errors.append(exc)
        finally:
            thread_connection.close()

    threads = [threading.Thread(target=post_once, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a POST hung"
    assert errors == []

    assert sorted(r.status_code for r in answers.values()) == [202] * 10
    assert len({r.json()["id"] for r in answers.values()}) == 1
    with tenant_context(tenant):
        assert EdiFile.objects.count() == 1
        assert AuditEvent.objects.filter(action="edi.file.received").count() == 1
        blobs = sorted(p.name for p in media_dir().iterdir())
    assert blobs == [f"{answers[0].json()['id']}.raw"]
    assert spool_leftovers(tenant) == []
    assert connection.schema_name == "public"  # type: ignore[attr-defined]


# --------------------------------------------------------------------------
# GET: list (every channel, newest first, paged) and detail with progress


def test_list_shows_every_channel_newest_first_in_pages(
    tenant, other_tenant, api, token, client_for, tenant_admin
):
    receive(other_tenant, b"email\nelsewhere@example.test\n", source="ui")
    from_ui = receive(tenant, b"email\nui@example.test\n", source="ui")
    from_sftp = receive(tenant, b"email\nsftp@example.test\n", source="sftp")
    from_api = post_csv(api, token).json()

    first = api.get(FILES + "?limit=2", headers=auth(token)).json()
    second = api.get(
        FILES + f"?limit=2&after={first['next']}", headers=auth(token)
    ).json()
    by_session = client_for(tenant_admin).get(FILES).json()

    assert [f["id"] for f in first["results"]] == [from_api["id"], str(from_sftp.pk)]
    assert [f["id"] for f in second["results"]] == [str(from_ui.pk)]
    assert second["next"] is None
    assert [f["source"] for f in by_session["results"]] == ["api", "sftp", "ui"]


@pytest.mark.parametrize("query", ["?after=garbage", "?limit=0", "?limit=201"])
def test_list_refuses_bad_paging(tenant, api, token, query):
    assert error(api.get(FILES + query, headers=auth(token))) == (400, "invalid")


def test_detail_reports_status_counts_and_job_progress(
    tenant, api, token, client_for, tenant_admin
):
    file_id = post_csv(api, token).json()["id"]
    with tenant_context(tenant):
        edi_file = EdiFile.objects.get(pk=file_id)
        job = edi_file.job
        assert job is not None
        job.progress_done, job.progress_total, job.message = 40, 160, "parsing"
        job.save(update_fields=["progress_done", "progress_total", "message"])
        edi_file.counts = {"rows": 1, "created": 1}
        edi_file.save(update_fields=["counts"])

    by_token = api.get(f"{FILES}{file_id}/", headers=auth(token))
    by_session = client_for(tenant_admin).get(f"{FILES}{file_id}/")

    assert by_token.status_code == 200
    body = by_token.json()
    assert body["status"] == "received"
    assert body["progress"] == {
        "done": 40,
        "total": 160,
        "percent": 25,
        "message": "parsing",
    }
    assert body["counts"]["rows"] == 1
    assert body["counts"]["created"] == 1
    assert body["counts"]["deactivated"] is None
    assert by_session.json() == body


# --------------------------------------------------------------------------
# A real server: gunicorn decodes a chunked upload


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def gunicorn_server(committed_token, tmp_path) -> Iterator[tuple[int, str, str]]:
    tenant, host, plaintext = committed_token
    port = _free_port()
    db = django_settings.DATABASES["default"]
    env = {
        **os.environ,
        "DATABASE_URL": (
            f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        ),
        "PORTAL_DEBUG": "1",
        "EDI_MAX_FILE_BYTES": "4096",
        # The test's own data dir: its media is removed with the tenant.
        "PORTAL_DATA_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "portal.settings",
    }
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(  # noqa: S603 - fixed argv
            [
                sys.executable,
                "-m",
                "gunicorn",
                "portal.wsgi",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "1",
                "--chdir",
                str(django_settings.BASE_DIR),
            ],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        yield port, host, plaintext
    finally:
        process.terminate()
        process.wait(timeout=10)


def _send_chunked(port: int, host: str, plaintext: str, body: bytes) -> Any:
    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(
        "POST",
        FILES,
        body=chunks(),
        headers={
            "Host": host,
            "Content-Type": "text/csv",
            "Authorization": f"Bearer {plaintext}",
        },
        encode_chunked=True,
    )
    response = conn.getresponse()
    return response.status, json.loads(response.read())


@pytest.mark.schema
def test_gunicorn_chunked_uploads(gunicorn_server):
    port, host, plaintext = gunicorn_server
    small = b"email\n" + b"".join(b"p%d@example.test\n" % i for i in range(100))
    assert len(small) < 4096
    big = b"email\n" + b"z" * 50_000

    accepted = _send_chunked(port, host, plaintext, small)
    refused = _send_chunked(port, host, plaintext, big)

    assert accepted[0] == 202
    assert accepted[1]["sha256"] == hashlib.sha256(small).hexdigest()
    assert refused[0] == 413
    assert refused[1]["error"]["code"] == "file_too_large"
