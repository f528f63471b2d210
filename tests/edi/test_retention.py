"""Raw files and results are deleted after the retention period (EDI-P10).

A frozen `timezone.now()` (the pattern of tests/sso/test_config.py) moves
the clock past `EdiSettings.retention_days`; files go through the real
receive service and pipeline (tests/edi/test_pipeline.py's helpers).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from django_tenants.utils import schema_context, tenant_context

from edi.models import EdiFile, EdiSettings, EdiStatus
from edi.services.receive import media_dir
from edi.services.results import EdiFilePurged, results_open
from edi.services.retention import edi_retention_purge
from edi.services.tokens import edi_token_issue
from portal.models import AuditEvent
from portal.tasks import daily_upkeep_task, platform_daily_task
from tenants.models import SftpAuthEvent
from tests.edi.test_pipeline import people, run_import

ROWS = (
    "employee_id,email,first_name,last_name\n"
    "KNOWN1,known.person@corp.test,Known,Rowtext\n"
    "KNOWN2,other.person@corp.test,Other,Rowtext\n"
)


class Clock:
    """A frozen `timezone.now()` for every module that calls it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = timezone.now()
        monkeypatch.setattr(timezone, "now", lambda: self.now)


@pytest.fixture(autouse=True)
def _private_media(settings: Any, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = str(tmp_path / "media")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


def blobs(edi_file: EdiFile) -> tuple[Path, Path]:
    return media_dir() / edi_file.blob_name, media_dir() / edi_file.results_name


def purge_events(edi_file: EdiFile) -> int:
    return AuditEvent.objects.filter(
        action="edi.file.purged", target_id=str(edi_file.pk)
    ).count()


def test_after_retention_the_blobs_go_and_the_row_stays(tenant, clock):
    with tenant_context(tenant):
        f = run_import(ROWS)
        assert f.status == EdiStatus.COMPLETED, f.errors
        raw, results = blobs(f)
        # Encrypted at rest: the blobs hold no known row text.
        for blob in (raw, results):
            data = blob.read_bytes()
            for text in (b"known.person", b"KNOWN1", b"Rowtext", b"corp.test"):
                assert text not in data

        clock.now += dt.timedelta(days=89)
        assert edi_retention_purge() == 0
        assert raw.exists()
        assert results.exists()

        clock.now += dt.timedelta(days=2)  # 91 days after receipt
        assert edi_retention_purge() == 1
        assert not raw.exists()
        assert not results.exists()
        kept = EdiFile.objects.get(pk=f.pk)
        assert kept.purged_at == clock.now
        assert kept.sha256 == f.sha256
        assert kept.counts == f.counts
        assert kept.status == EdiStatus.COMPLETED
        # The row keeps no people either: the preview's samples are gone.
        assert "known.person" in str(f.preview)
        assert "known.person" not in str(kept.preview)
        assert kept.preview["counts"] == f.preview["counts"]
        event = AuditEvent.objects.get(action="edi.file.purged", target_id=str(f.pk))
        assert event.changes["deleted"] == ["raw", "results"]
        assert event.changes["retention_days"] == 90

        # Idempotent: nothing more to do, no second event.
        clock.now += dt.timedelta(days=1)
        assert edi_retention_purge() == 0
        assert purge_events(f) == 1


def test_a_purge_interrupted_after_deleting_is_finished_next_time(tenant, clock):
    with tenant_context(tenant):
        f = run_import(people(2))
        raw, results = blobs(f)
        raw.unlink()  # as if a run died between unlink and commit
        clock.now += dt.timedelta(days=91)
        assert edi_retention_purge() == 1
        assert not results.exists()
        event = AuditEvent.objects.get(action="edi.file.purged", target_id=str(f.pk))
        assert event.changes["deleted"] == ["results"]


def test_files_that_are_not_final_are_never_purged(tenant, clock):
    with tenant_context(tenant):
        run_import(people(20))
        held = run_import(people(14), mode="full")
        preview = run_import(people(3, start=100), dry_run=True)
        assert held.status == EdiStatus.HELD
        assert preview.status == EdiStatus.VALIDATED
        clock.now += dt.timedelta(days=365)
        assert edi_retention_purge() == 1  # only the first, completed file
        for f in (held, preview):
            f.refresh_from_db()
            assert f.purged_at is None
            assert (media_dir() / f.blob_name).exists()


def test_rejected_and_duplicate_files_are_purged_too(tenant, clock):
    with tenant_context(tenant):
        rejected = run_import("employee_id,email\n")
        first = run_import(people(2))
        duplicate = run_import(people(2))
        assert rejected.status == EdiStatus.REJECTED
        assert duplicate.status == EdiStatus.DUPLICATE
        clock.now += dt.timedelta(days=91)
        assert edi_retention_purge() == 3
        for f in (rejected, first, duplicate):
            f.refresh_from_db()
            assert f.purged_at is not None
            assert not (media_dir() / f.blob_name).exists()


def test_the_tenants_retention_setting_applies(tenant, clock):
    with tenant_context(tenant):
        EdiSettings.objects.update_or_create(id=1, defaults={"retention_days": 7})
        f = run_import(people(2))
        clock.now += dt.timedelta(days=6)
        assert edi_retention_purge() == 0
        clock.now += dt.timedelta(days=2)
        assert edi_retention_purge() == 1
        assert purge_events(f) == 1


def test_downloads_after_the_purge_answer_410_purged(tenant, clock, client_for):
    with tenant_context(tenant):
        f = run_import(people(2))
        token = edi_token_issue(name="HR", actor=None)[1]
        assert b"row_number" in b"".join(results_open(f))[:40]
        clock.now += dt.timedelta(days=91)
        edi_retention_purge()
        f.refresh_from_db()
        with pytest.raises(EdiFilePurged):
            results_open(f)
        downloads = AuditEvent.objects.filter(
            action="edi.file.results_downloaded"
        ).count()

    response = client_for(None).get(
        f"/api/v1/edi/files/{f.pk}/results.csv",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 410
    assert response.json()["error"]["code"] == "purged"
    # The file itself still answers, with its counts.
    detail = client_for(None).get(
        f"/api/v1/edi/files/{f.pk}/", headers={"Authorization": f"Bearer {token}"}
    )
    assert detail.status_code == 200
    assert detail.json()["counts"]["created"] == 2
    with tenant_context(tenant):
        assert (
            AuditEvent.objects.filter(action="edi.file.results_downloaded").count()
            == downloads
        )


def test_a_download_racing_the_purge_is_told_purged(tenant):
    with tenant_context(tenant):
        f = run_import(people(2))
        stale = EdiFile.objects.get(pk=f.pk)  # loaded before the purge
        (media_dir() / f.results_name).unlink()
        EdiFile.objects.filter(pk=f.pk).update(purged_at=timezone.now())
        with pytest.raises(EdiFilePurged):
            results_open(stale)


def test_daily_upkeep_runs_the_purge(tenant, clock):
    with tenant_context(tenant):
        f = run_import(people(2))
        clock.now += dt.timedelta(days=91)
        daily_upkeep_task.run(schema_name=tenant.schema_name)
        f.refresh_from_db()
        assert f.purged_at is not None


def test_platform_daily_prunes_old_sftp_sign_in_counters(tenant, clock):
    with schema_context("public"):
        SftpAuthEvent.objects.create(username="x", ip="192.0.2.1", succeeded=False)
        clock.now += dt.timedelta(days=32)
        SftpAuthEvent.objects.create(username="x", ip="192.0.2.2", succeeded=False)
        platform_daily_task.run()
        left = SftpAuthEvent.objects.filter(ip__in=["192.0.2.1", "192.0.2.2"])
        assert list(left.values_list("ip", flat=True)) == ["192.0.2.2"]


def test_a_duplicate_key_error_loses_its_keys_at_the_purge(tenant, clock):
    with tenant_context(tenant):
        f = run_import(ROWS + "KNOWN1,third.person@corp.test,Third,Rowtext\n")
        assert f.status == EdiStatus.REJECTED
        assert "KNOWN1" in str(f.errors)
        clock.now += dt.timedelta(days=91)
        assert edi_retention_purge() == 1
        kept = EdiFile.objects.get(pk=f.pk)
        assert [e["code"] for e in kept.errors] == ["DUPLICATE_KEY"]
        assert "KNOWN1" not in str(kept.errors)
