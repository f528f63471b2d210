"""Status emails about EDI files, through the outbox (edi.md EDI-P12).

Files go through the real receive service and pipeline (the helpers of
tests/edi/test_pipeline.py); the outbox rows they leave are delivered with
`outbox_deliver` into Django's locmem backend.
"""

from __future__ import annotations

import pytest
from django.core import mail
from django.utils import timezone
from django_tenants.utils import tenant_context

from edi.models import EdiFile, EdiStatus
from edi.services.notify import edi_file_notify
from edi.services.pipeline import edi_import_run
from edi.services.receive import edi_file_receive, edi_import_job_create
from edi.services.spool import SpoolWriter
from portal.db import current_schema
from portal.models import Member, MemberStatus, OutboxEmail
from portal.roles import Role
from portal.services.jobs import job_start
from portal.services.outbox import outbox_deliver
from tenants.models import Tenant
from tenants.services import tenant_origin
from tests.edi.test_pipeline import people, run_import

# Row data that must never reach an email.
SECRET_ROWS = (
    "employee_id,email,first_name,last_name,department\n"
    "EMPX77,zelda.secret@corp.test,Zelda,Quixotic,Cryptography\n"
    "EMPX78,yorick.hidden@corp.test,Yorick,Umbrage,Cryptography\n"
)
SECRETS = (
    "EMPX7",
    "zelda",
    "yorick",
    "Quixotic",
    "Umbrage",
    "Cryptography",
    "corp.test",
)


@pytest.fixture(autouse=True)
def _in_tenant(tenant):
    with tenant_context(tenant):
        yield


@pytest.fixture
def admins(tenant_owner, make_member) -> list[str]:
    """The expected recipients: the owner and one admin (active, emailed)."""
    # Out of the files' reach, so a full file leaves them as they are.
    admin = make_member(Role.ADMIN, managed_by_edi=False)
    # Not recipients: a read-only admin, a user admin, a member, and a
    # deactivated admin.
    for role in (Role.READONLY_ADMIN, Role.USER_ADMIN, Role.MEMBER):
        make_member(role, managed_by_edi=False)
    make_member(Role.ADMIN, status=MemberStatus.DEACTIVATED, managed_by_edi=False)
    return sorted([tenant_owner.email, admin.email])


def receive_as(data: str, *, uploaded_by: Member | None, **kw) -> EdiFile:
    """`run_import` with an uploader (the browser channel)."""
    with SpoolWriter(current_schema()) as writer:
        writer.write(data.encode())
        spooled = writer.finish()
    edi_file = edi_file_receive(
        spooled=spooled,
        source="ui",
        original_name="hr.csv",
        uploaded_by=uploaded_by,
        **kw,
    )
    job = job_start(job_id=str(edi_file.job_id))
    assert job is not None
    edi_import_run(job=job)
    edi_file.refresh_from_db()
    return edi_file


def delivered() -> list[tuple[str, str, str]]:
    """Deliver the outbox; (recipient, subject, body) of each email sent."""
    outbox_deliver()
    return sorted((m.to[0], str(m.subject), str(m.body)) for m in mail.outbox)


def recipients() -> list[str]:
    return sorted(to for to, _, _ in delivered())


def test_completed_file_mails_each_admin_once(admins):
    f = run_import(people(3, seat="active"))
    assert f.status == EdiStatus.COMPLETED
    sent = delivered()
    assert [to for to, _, _ in sent] == admins
    _, subject, body = sent[0]
    assert subject == "Employee data file applied: t.csv"
    assert "Status:    Completed" in body
    assert "File:      t.csv" in body
    assert "Source:    Browser" in body
    assert f"Received:  {f.received_at:%Y-%m-%d %H:%M} UTC" in body
    assert "Created:       3" in body
    assert "Seats granted: 3" in body
    origin = tenant_origin(Tenant.objects.get(schema_name=current_schema()))
    assert f"{origin}/edi/files/{f.pk}/" in body


def test_the_link_is_built_from_the_canonical_origin(admins, settings):
    settings.PORTAL_PUBLIC_SCHEME = "https"
    settings.PORTAL_PUBLIC_PORT = "8443"
    f = run_import(people(1))
    body = delivered()[0][2]
    assert f"https://tenant.localhost:8443/edi/files/{f.pk}/" in body


def test_rejected_file_mails_codes_but_no_rows(admins):
    f = run_import(SECRET_ROWS + "EMPX77,other@corp.test,A,B,C\n")
    assert f.status == EdiStatus.REJECTED
    assert f.errors[0]["code"] == "DUPLICATE_KEY"
    # The file's own errors quote the rows; the email must not.
    assert "EMPX77" in str(f.errors)
    sent = delivered()
    assert [to for to, _, _ in sent] == admins
    _, subject, body = sent[0]
    assert subject == "Employee data file rejected: t.csv"
    assert "Reasons:   DUPLICATE_KEY" in body
    assert "nothing was changed" in body
    for secret in SECRETS:
        assert secret not in body
        assert secret not in subject


def test_completed_file_body_holds_no_row_data(admins):
    f = run_import(SECRET_ROWS)
    assert f.status == EdiStatus.COMPLETED, f.errors
    for _, subject, body in delivered():
        for secret in SECRETS:
            assert secret not in body
            assert secret not in subject


def test_held_file_mails_once_and_its_completion_mails_again(admins):
    run_import(people(20))
    delivered()
    mail.outbox.clear()
    held = run_import(people(14), mode="full")  # 6 of 25 active
    assert held.status == EdiStatus.HELD
    active = held.preview["counts"]["active_members"]
    sent = delivered()
    assert [to for to, _, _ in sent] == admins
    _, subject, body = sent[0]
    assert subject == "Employee data file held for approval: t.csv"
    assert f"deactivate 6 of {active} active members" in body
    assert "person15" not in body

    # A rerun that holds it again (a crash, or more gone at apply) sends
    # nothing new: same file, same status.
    edi_file_notify(edi_file=held)
    assert OutboxEmail.objects.filter(dedupe_key__contains=":held:").count() == 2

    mail.outbox.clear()
    job = edi_import_job_create(edi_file=held, actor=None, approved=True)
    started = job_start(job_id=str(job.pk))
    assert started is not None
    edi_import_run(job=started)
    held.refresh_from_db()
    assert held.status == EdiStatus.COMPLETED
    sent = delivered()
    assert [to for to, _, _ in sent] == admins
    assert sent[0][1] == "Employee data file applied: t.csv"


def test_validated_preview_mails_no_one(admins):
    f = run_import(people(3), dry_run=True)
    assert f.status == EdiStatus.VALIDATED
    assert not OutboxEmail.objects.exists()
    assert delivered() == []


def test_duplicate_file_mails_no_one(admins):
    run_import(people(2))
    mail.outbox.clear()
    OutboxEmail.objects.all().delete()
    assert run_import(people(2)).status == EdiStatus.DUPLICATE
    assert not OutboxEmail.objects.exists()


def test_failed_file_mails_admins(admins):
    f = run_import(people(1), dry_run=True)
    f.status = EdiStatus.FAILED
    f.finished_at = timezone.now()
    f.save()
    edi_file_notify(edi_file=f)
    sent = delivered()
    assert [to for to, _, _ in sent] == admins
    assert sent[0][1] == "Employee data file failed: t.csv"
    assert "failed after several attempts" in sent[0][2]


def test_uploader_who_is_an_admin_gets_one_email(admins, tenant_owner):
    f = receive_as(people(2), uploaded_by=tenant_owner)
    assert f.status == EdiStatus.COMPLETED
    assert recipients() == admins


def test_uploader_who_is_not_an_admin_is_added(admins, make_member):
    uploader = make_member(Role.USER_ADMIN)
    receive_as(people(2), uploaded_by=uploader)
    assert recipients() == sorted([*admins, uploader.email])


def test_a_deactivated_uploader_is_not_mailed(admins, make_member):
    uploader = make_member(Role.USER_ADMIN, status=MemberStatus.DEACTIVATED)
    receive_as(people(2), uploaded_by=uploader)
    assert recipients() == admins


def test_a_rerun_of_a_final_status_queues_nothing_new(admins):
    f = run_import(people(2))
    before = OutboxEmail.objects.count()
    assert before == len(admins)
    edi_file_notify(edi_file=f)
    edi_file_notify(edi_file=f)
    assert OutboxEmail.objects.count() == before
    assert len(delivered()) == len(admins)


def test_emails_roll_back_with_the_status_change(admins):
    from django.db import transaction

    f = run_import(people(1), dry_run=True)
    f.status = EdiStatus.REJECTED
    queued = []

    def notify_then_fail() -> None:
        with transaction.atomic():
            edi_file_notify(edi_file=f)
            queued.append(OutboxEmail.objects.count())
            raise RuntimeError

    with pytest.raises(RuntimeError):
        notify_then_fail()
    assert queued == [len(admins)]
    assert not OutboxEmail.objects.exists()
