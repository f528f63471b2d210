"""The EDI import pipeline in-process (edi.md §2, §3, §7).

Each test receives a CSV through the real spool and receive service, then
runs the job's service the way the worker does (`job_start` +
`edi_import_run`), inside the test's transaction on the real PostgreSQL.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import secrets

import pytest
from django_tenants.utils import tenant_context

from edi.models import AutoProvisionRule, EdiFile, EdiSettings, EdiStatus
from edi.services.pipeline import KEY_PURPOSE, edi_import_run
from edi.services.receive import edi_file_receive, media_dir
from edi.services.spool import SpoolWriter
from portal.db import current_schema
from portal.models import Member, MemberGroup, MemberSession, MemberStatus, SeatPool
from portal.roles import Role
from portal.services.jobs import job_start
from portal.services.keyring import keyring_file_open

HEADER = "employee_id,email,first_name,last_name,department,seat,groups\n"


@pytest.fixture(autouse=True)
def _in_tenant(tenant):
    with tenant_context(tenant):
        yield


def run_import(
    data: str | bytes, *, mode: str = "delta", dry_run: bool = False
) -> EdiFile:
    raw = data.encode() if isinstance(data, str) else data
    with SpoolWriter(current_schema()) as writer:
        writer.write(raw)
        spooled = writer.finish()
    edi_file = edi_file_receive(
        spooled=spooled, source="ui", original_name="t.csv", mode=mode, dry_run=dry_run
    )
    if edi_file.status == EdiStatus.RECEIVED:
        job = job_start(job_id=str(edi_file.job_id))
        assert job is not None
        edi_import_run(job=job)
    edi_file.refresh_from_db()
    return edi_file


def results(edi_file: EdiFile) -> list[dict[str, str]]:
    blob = b"".join(
        keyring_file_open(
            purpose=KEY_PURPOSE,
            file_id=edi_file.results_name,
            path=media_dir() / edi_file.results_name,
        )
    )
    return list(csv.DictReader(io.StringIO(blob.decode("utf-8-sig"))))


def people(n: int, start: int = 1, **extra: str) -> str:
    rows = []
    for i in range(start, start + n):
        rows.append(
            f"E{i},person{i}@corp.test,First{i},Last{i},"
            f"{extra.get('department', 'Sales')},{extra.get('seat', '')},"
            f"{extra.get('groups', '')}\n"
        )
    return HEADER + "".join(rows)


def test_a_first_file_creates_members_seats_and_groups():
    f = run_import(people(3, seat="active", groups="EMEA; Field "))
    assert f.status == EdiStatus.COMPLETED, f.errors
    assert f.counts["created"] == 3
    assert f.counts["seats_granted"] == 3
    member = Member.objects.get(employee_id="E2")
    assert member.email == "person2@corp.test"
    assert member.first_name == "First2"
    assert member.has_seat
    assert member.source == "edi"
    assert sorted(member.groups.values_list("name", flat=True)) == ["EMEA", "Field"]
    assert [r["outcome"] for r in results(f)] == ["created"] * 3


def test_the_same_rows_again_update_nothing():
    run_import(people(5, seat="active"))
    again = run_import(people(5, seat="active") + "\n")  # other bytes, same rows
    assert again.status == EdiStatus.COMPLETED, again.errors
    assert again.counts["updated"] == 0
    assert again.counts["unchanged"] == 5
    assert again.counts["created"] == 0


def test_identical_bytes_are_a_duplicate():
    first = run_import(people(2))
    second = run_import(people(2))
    assert second.status == EdiStatus.DUPLICATE
    assert second.duplicate_of_id == first.pk


def test_changed_fields_only_and_blank_clears():
    run_import(people(2, department="Sales"))
    f = run_import(
        HEADER + "E1,person1@corp.test,First1,Last1,,,\n"
        "E2,person2@corp.test,Second,Last2,Sales,,\n"
    )
    assert f.counts["updated"] == 2
    assert Member.objects.get(employee_id="E1").department == ""
    assert Member.objects.get(employee_id="E2").first_name == "Second"


def test_absent_columns_leave_fields_alone():
    run_import(people(1, department="Sales"))
    run_import("employee_id,email\nE1,person1@corp.test\n")
    assert Member.objects.get(employee_id="E1").department == "Sales"


def test_linkedin_headers_mean_the_same():
    f = run_import(
        "unique_user_id;Primary Email Address;Preferred-First-Name;seat_id\n"
        "L1;li@corp.test;Lina;x\n"
    )
    assert f.status == EdiStatus.COMPLETED, f.errors
    assert Member.objects.get(employee_id="L1").first_name == "Lina"
    assert f.preview["unknown_columns"] == ["seat_id"]


def test_full_file_deactivates_the_absent_and_ends_their_sessions(make_member):
    run_import(people(10, seat="active"))
    gone = Member.objects.get(employee_id="E10")
    MemberSession.objects.create(member=gone, session_key="k" * 32, auth_method="saml")
    f = run_import(people(9, seat="active"), mode="full")
    assert f.status == EdiStatus.COMPLETED, f.errors
    assert f.counts["deactivated"] == 1
    gone.refresh_from_db()
    assert gone.status == MemberStatus.DEACTIVATED
    assert not gone.has_seat
    assert not MemberSession.objects.filter(member=gone).exists()
    assert Member.objects.filter(role=Role.OWNER, status=MemberStatus.ACTIVE).exists()
    assert [r for r in results(f) if r["outcome"] == "deactivated"][0]["email"] == (
        "person10@corp.test"
    )


def test_the_same_file_as_delta_deactivates_no_one():
    run_import(people(10))
    f = run_import(people(5), mode="delta")
    assert f.counts["deactivated"] == 0
    assert Member.objects.filter(status=MemberStatus.DEACTIVATED).count() == 0


def test_a_full_file_dropping_a_quarter_is_held_with_no_changes():
    run_import(people(20))
    before = sorted(Member.objects.values_list("id", "status"))
    f = run_import(people(14), mode="full")  # 6 of 21 active (with the owner)
    assert f.status == EdiStatus.HELD
    assert f.preview["hold_reasons"]
    assert sorted(Member.objects.values_list("id", "status")) == before


def test_reappearing_member_is_reactivated():
    run_import(people(10))
    run_import(people(9), mode="full")
    f = run_import(people(10))
    assert f.counts["updated"] == 1
    assert Member.objects.get(employee_id="E10").status != MemberStatus.DEACTIVATED


def test_dry_run_stops_at_validated_and_changes_nothing():
    f = run_import(people(3), dry_run=True)
    assert f.status == EdiStatus.VALIDATED
    assert f.preview["counts"]["create"] == 3
    assert not Member.objects.filter(employee_id="E1").exists()


def test_new_employee_id_adopts_the_member_with_that_email(make_member):
    existing = make_member(Role.MEMBER, email="adopt@corp.test")
    run_import("employee_id,email\nX9,ADOPT@corp.test\n")
    existing.refresh_from_db()
    assert existing.employee_id == "X9"
    assert Member.objects.filter(email__iexact="adopt@corp.test").count() == 1


def test_email_of_someone_else_is_a_row_error(make_member):
    make_member(Role.MEMBER, email="taken@corp.test", employee_id="A1")
    f = run_import(
        "employee_id,email\nB2,taken@corp.test\n"
        + "".join(f"N{i},n{i}@corp.test\n" for i in range(20))
    )
    assert f.status == EdiStatus.COMPLETED
    row = results(f)[0]
    assert row["outcome"] == "error"
    assert "IDENTITY_CONFLICT" in row["codes"]


@pytest.mark.parametrize("order", ["id-row-first", "email-row-first"])
def test_a_row_keyed_by_email_cannot_take_a_member_another_row_keys_by_id(
    make_member, order
):
    """Both rows would name one person: the employee_id is the key, so its
    row updates the member and the email-only row fails, in either order."""
    member = make_member(Role.MEMBER, email="old@corp.test", employee_id="K1")
    rows = ["K1,new@corp.test,Kim", ",old@corp.test,Other"]
    if order == "email-row-first":
        rows.reverse()
    f = run_import("employee_id,email,first_name\n" + "\n".join(rows) + "\n")
    assert f.status == EdiStatus.COMPLETED, f.errors
    id_row, email_row = ("2", "3") if order == "id-row-first" else ("3", "2")
    outcomes = {r["row_number"]: (r["outcome"], r["codes"]) for r in results(f)}
    assert outcomes == {
        id_row: ("updated", ""),
        email_row: ("error", "IDENTITY_CONFLICT"),
    }
    member.refresh_from_db()
    assert (member.email, member.first_name) == ("new@corp.test", "Kim")
    assert not Member.objects.filter(email__iexact="old@corp.test").exists()


def test_the_owner_is_never_touched(tenant_owner):
    f = run_import(
        f"email,first_name,admin_permission\n{tenant_owner.email},Changed,\n"
        + "".join(f"n{i}@corp.test,N,\n" for i in range(20))
    )
    tenant_owner.refresh_from_db()
    assert tenant_owner.role == Role.OWNER
    assert tenant_owner.first_name != "Changed"
    assert "OWNER_PROTECTED" in results(f)[0]["codes"]


def test_admin_permission_grants_and_blank_removes():
    run_import("employee_id,email,admin_permission\nA1,a@corp.test,admin\n")
    assert Member.objects.get(employee_id="A1").role == Role.ADMIN
    run_import("employee_id,email,admin_permission\nA1,a@corp.test,reporting\n")
    assert Member.objects.get(employee_id="A1").role == Role.READONLY_ADMIN
    run_import("employee_id,email,admin_permission\nA1,a@corp.test,\n")
    assert Member.objects.get(employee_id="A1").role == Role.MEMBER


# Two rule grants (Sales) and two explicit ones, interleaved, and one neither.
SEAT_FILE = (
    HEADER
    + "R1,r1@corp.test,,,Sales,,\n"
    + "A1,a1@corp.test,,,Other,active,\n"
    + "R2,r2@corp.test,,,Sales,,\n"
    + "A2,a2@corp.test,,,Other,active,\n"
    + "N1,n1@corp.test,,,Other,,\n"
)


def seated_ids() -> set[str]:
    return set(
        Member.objects.filter(has_seat=True, employee_id__gt="").values_list(
            "employee_id", flat=True
        )
    )


def test_seat_limit_serves_explicit_rows_then_rules_in_file_order():
    SeatPool.objects.update_or_create(id=1, defaults={"limit": 3})
    AutoProvisionRule.objects.create(field="department", value="sales")
    used = Member.objects.filter(has_seat=True).count()
    f = run_import(SEAT_FILE)
    free = 3 - used
    seated = seated_ids()
    assert seated == {"A1", "A2", "R1", "R2"} & set(["A1", "A2", "R1", "R2"][:free])
    warned = [r["employee_id"] for r in results(f) if "SEAT_LIMIT" in r["codes"]]
    assert len(warned) == 4 - free


@pytest.mark.parametrize("spare", [4, 3])
def test_a_seat_limit_that_fits_everyone_grants_all_and_one_short_refuses_the_last(
    spare,
):
    """Exactly enough seats: every row that wants one gets it (the ranking is
    skipped); one fewer: the last in order (explicit rows, then rules, in
    file order) gets `SEAT_LIMIT_REACHED`."""
    used = Member.objects.filter(has_seat=True).count()
    SeatPool.objects.update_or_create(id=1, defaults={"limit": used + spare})
    AutoProvisionRule.objects.create(field="department", value="sales")
    f = run_import(SEAT_FILE)
    seated = seated_ids()
    refused = {r["employee_id"] for r in results(f) if "SEAT_LIMIT" in r["codes"]}
    if spare == 4:
        assert (seated, refused) == ({"A1", "A2", "R1", "R2"}, set())
    else:
        assert (seated, refused) == ({"A1", "A2", "R1"}, {"R2"})


def test_managers_link_and_unknown_or_loops_warn():
    f = run_import(
        "employee_id,email,manager_employee_id\n"
        "M1,m1@corp.test,\nM2,m2@corp.test,M1\nM3,m3@corp.test,NOPE\n"
    )
    manager = Member.objects.get(employee_id="M2").manager
    assert manager is not None
    assert manager.employee_id == "M1"
    assert "MANAGER_UNKNOWN" in results(f)[2]["codes"]
    loop = run_import("employee_id,email,manager_employee_id\nM1,m1@corp.test,M2\n")
    assert "MANAGER_CYCLE" in results(loop)[0]["codes"]
    assert Member.objects.get(employee_id="M1").manager is None


@pytest.mark.parametrize("walk_down", [False, True], ids=["walk-up", "walk-down"])
def test_manager_loops_in_one_file_keep_the_old_links(monkeypatch, walk_down):
    """Both ways of finding loops (`Run._manager_cycles`) flag the same rows:
    a self-link, a three-member loop and a two-member loop are refused; a
    member below a loop and an ordinary chain keep their new managers."""
    import edi.services.pipeline as pipeline

    monkeypatch.setattr(pipeline, "CYCLE_WALK_DOWN_RATIO", 10**6 if walk_down else 0)
    f = run_import(
        "employee_id,email,manager_employee_id\n"
        "S1,s1@corp.test,S1\n"  # self
        "L1,l1@corp.test,L3\nL2,l2@corp.test,L1\nL3,l3@corp.test,L2\n"  # loop of 3
        "U1,u1@corp.test,L2\n"  # below the loop
        "T1,t1@corp.test,T2\nT2,t2@corp.test,T1\n"  # loop of 2
        "C1,c1@corp.test,\nC2,c2@corp.test,C1\nC3,c3@corp.test,C2\n"  # a chain
    )
    assert f.status == EdiStatus.COMPLETED, f.errors
    flagged = {r["employee_id"] for r in results(f) if "MANAGER_CYCLE" in r["codes"]}
    assert flagged == {"S1", "L1", "L2", "L3", "T1", "T2"}
    managers = dict(Member.objects.values_list("employee_id", "manager__employee_id"))
    assert {
        k: managers[k] for k in ("S1", "L1", "L2", "L3", "T1", "T2")
    } == dict.fromkeys(("S1", "L1", "L2", "L3", "T1", "T2"))
    assert (managers["U1"], managers["C2"], managers["C3"]) == ("L2", "C1", "C2")
    # A later file that closes a loop through members it does not list.
    loop = run_import("employee_id,email,manager_employee_id\nC1,c1@corp.test,C3\n")
    assert "MANAGER_CYCLE" in results(loop)[0]["codes"]
    assert Member.objects.get(employee_id="C1").manager is None
    # A file that changes no link skips the search and changes nothing.
    same = run_import("employee_id,email,manager_employee_id\nC2,c2@corp.test,C1\n")
    assert results(same)[0]["codes"] == ""
    kept = Member.objects.get(employee_id="C2").manager
    assert kept is not None
    assert kept.employee_id == "C1"


def test_formula_cells_are_stored_as_given_and_neutralised_in_results():
    f = run_import('employee_id,email,first_name\nF1,f@corp.test,"=HYPERLINK(""x"")"\n')
    assert Member.objects.get(employee_id="F1").first_name == '=HYPERLINK("x")'
    raw = b"".join(
        keyring_file_open(
            purpose=KEY_PURPOSE,
            file_id=f.results_name,
            path=media_dir() / f.results_name,
        )
    )
    assert b"=HYPERLINK" not in raw.replace(b"'=HYPERLINK", b"")
    assert (media_dir() / f.blob_name).exists()
    assert b"f@corp.test" not in (media_dir() / f.blob_name).read_bytes()


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ("employee_id,email\n", "NO_DATA_ROWS"),
        ("employee_id,name\nE1,x\n", "HEADER_MISSING_EMAIL"),
        ("employee_id\temail\nE1\tx@corp.test\n", "DELIMITER_UNKNOWN"),
        ("email,primary_email_address\na@corp.test,b@corp.test\n", "DUPLICATE_COLUMN"),
        ("employee_id,email\nE1,a@corp.test\nE1,b@corp.test\n", "DUPLICATE_KEY"),
        ("employee_id,email\nE1,a@corp.test\nE2,A@CORP.TEST\n", "DUPLICATE_KEY"),
        ('email,first_name\na@corp.test,"open\nb@corp.test,x\n', "FIELD_LINE_BREAK"),
        ("email,first_name\na@corp.test," + "x" * 70000 + "\n", "FIELD_TOO_LARGE"),
        (
            "email\n" + "".join(f"bad{i}\n" for i in range(5)) + "ok@corp.test\n",
            "TOO_MANY_INVALID_ROWS",
        ),
    ],
)
def test_file_level_errors_reject_the_file_and_change_nothing(data, code):
    before = Member.objects.count()
    f = run_import(data)
    assert f.status == EdiStatus.REJECTED
    assert code in [e["code"] for e in f.errors]
    assert Member.objects.count() == before


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (
            codecs.BOM_UTF16_LE + "email\r\na@corp.test\r\n".encode("utf-16-le"),
            "ENCODING_NOT_UTF8",
        ),
        (
            "email\r\na@corp.test\r\nbj\u00f6rn@corp.test\r\n".encode("cp1252"),
            "ENCODING_NOT_UTF8",
        ),
        (b"PK\x03\x04" + b"\x00" * 100, "FILE_NOT_TEXT"),
        (b"email\na@corp.test\x00\n", "FILE_NOT_TEXT"),
        (b"%PDF-1.7\n", "FILE_NOT_TEXT"),
    ],
)
def test_encodings_outside_the_whitelist_are_named(data, code):
    f = run_import(data)
    assert f.status == EdiStatus.REJECTED
    assert f.errors[0]["code"] == code


def test_cp1252_error_names_its_line():
    data = "email\r\na@corp.test\r\nbj\u00f6rn@corp.test\r\n".encode("cp1252")
    f = run_import(data)
    assert f.errors[0]["line"] == 3


@pytest.mark.parametrize(
    "data",
    [
        codecs.BOM_UTF8 + b"email;first_name\r\na@corp.test;A\r\n",
        b"email,first_name\ra@corp.test,A\r",
        b"email,first_name\na@corp.test,A",
    ],
)
def test_bom_semicolons_and_line_ends_are_accepted(data):
    f = run_import(data)
    assert f.status == EdiStatus.COMPLETED, f.errors
    assert Member.objects.get(email="a@corp.test").first_name == "A"


def test_row_errors_skip_only_their_rows():
    f = run_import(
        "email,seat\n"
        + "".join(f"ok{i}@corp.test,\n" for i in range(20))
        + "not-an-email,\nfine@corp.test,maybe\n"
    )
    assert f.status == EdiStatus.COMPLETED
    assert f.counts["row_errors"] == 2
    assert f.counts["created"] == 20
    codes = {r["email"]: r["codes"] for r in results(f)}
    assert codes["not-an-email"] == "EMAIL_INVALID"
    assert codes["fine@corp.test"] == "SEAT_INVALID"


@pytest.mark.parametrize("twice", [False, True], ids=["once", "twice"])
def test_keys_too_long_for_an_index_are_row_errors_or_duplicates(twice):
    """Duplicate keys are first looked for with a unique index on the stage;
    a key over a B-tree entry's limit (about 2.7 kB) cannot be indexed, and
    is still checked, by grouping."""
    huge = secrets.token_hex(2600) + "@corp.test"  # incompressible
    good = "".join(f"E{i},ok{i}@corp.test\n" for i in range(10, 30))
    data = f"employee_id,email\n{good}E2,{huge}\n" + (f"E3,{huge}\n" if twice else "")
    f = run_import(data)
    if twice:
        assert f.status == EdiStatus.REJECTED
        assert [e["code"] for e in f.errors] == ["DUPLICATE_KEY"]
        assert f.errors[0]["details"]["duplicates"][0]["lines"] == [22, 23]
    else:
        assert f.status == EdiStatus.COMPLETED, f.errors
        assert f.counts["created"] == 20
        assert f.counts["row_errors"] == 1
        codes = {r["employee_id"]: r["codes"] for r in results(f)}
        assert codes["E2"] == "VALUE_TOO_LONG"


def test_the_default_mode_comes_from_the_tenant_settings():
    EdiSettings.objects.update_or_create(id=1, defaults={"default_mode": "full"})
    with SpoolWriter(current_schema()) as writer:
        writer.write(b"email\nx@corp.test\n")
        spooled = writer.finish()
    f = edi_file_receive(spooled=spooled, source="api", mode=None)
    assert f.mode == "full"


def test_groups_replace_the_list():
    run_import(people(1, groups="A;B"))
    run_import(people(1, groups="B;C"))
    member = Member.objects.get(employee_id="E1")
    assert sorted(member.groups.values_list("name", flat=True)) == ["B", "C"]
    assert MemberGroup.objects.filter(name__in=["A", "B", "C"]).count() == 3


def _approve(edi_file: EdiFile) -> EdiFile:
    """What an admin's approval sends: the same file, a job with approved."""
    from edi.tasks import edi_import_task
    from portal.services.jobs import job_create

    job = job_create(
        kind="edi_import",
        actor=None,
        params={"file_id": str(edi_file.pk), "approved": True},
        task=edi_import_task,
    )
    EdiFile.objects.filter(pk=edi_file.pk).update(dry_run=False)
    started = job_start(job_id=str(job.pk))
    assert started is not None
    edi_import_run(job=started)
    edi_file.refresh_from_db()
    return edi_file


def test_a_fifteen_percent_drop_applies_directly():
    run_import(people(19))  # 20 active with the owner
    f = run_import(people(16), mode="full")  # 3 of 20: 15 %
    assert f.status == EdiStatus.COMPLETED, f.preview
    assert f.counts["deactivated"] == 3


def test_an_approved_held_file_applies_once():
    run_import(people(20))
    held = run_import(people(14), mode="full")
    assert held.status == EdiStatus.HELD
    done = _approve(held)
    assert done.status == EdiStatus.COMPLETED, done.preview
    assert done.counts["deactivated"] == 6
    assert Member.objects.filter(status=MemberStatus.DEACTIVATED).count() == 6


def test_an_approval_is_held_again_when_the_numbers_grew(make_member):
    run_import(people(20))
    held = run_import(people(14), mode="full")
    assert held.preview["counts"]["deactivate"] == 6
    for _ in range(3):  # three more people, whom the full file drops too
        make_member(status=MemberStatus.ACTIVE)
    again = _approve(held)
    assert again.status == EdiStatus.HELD
    assert again.preview["counts"]["deactivate"] == 9
    assert Member.objects.filter(status=MemberStatus.DEACTIVATED).count() == 0


def test_a_dry_run_preview_names_what_approval_would_override():
    run_import(people(20))
    f = run_import(people(14), mode="full", dry_run=True)
    assert f.status == EdiStatus.VALIDATED
    assert f.preview["hold_reasons"]
    assert _approve(f).status == EdiStatus.COMPLETED


def test_the_statements_do_not_depend_on_the_file_size():
    """EDI-P2: a fixed set of statements, whatever the number of rows."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def statements(rows: int, start: int) -> list[str]:
        raw = people(rows, start=start, groups="A;B").encode()
        with SpoolWriter(current_schema()) as writer:
            writer.write(raw)
            spooled = writer.finish()
        edi_file = edi_file_receive(spooled=spooled, source="ui", mode="delta")
        job = job_start(job_id=str(edi_file.job_id))
        assert job is not None
        with CaptureQueriesContext(connection) as captured:
            edi_import_run(job=job)
        edi_file.refresh_from_db()
        assert edi_file.status == EdiStatus.COMPLETED
        return [
            re.sub(r"edi_stage_\w+|s\d+_x\d+|'[^']*'|\b\d+\b", "_", q["sql"])
            for q in captured.captured_queries
        ]

    statements(10, 50_001)  # first use: settings row, keys
    assert statements(1_000, 1) == statements(20_000, 10_001)


def test_results_have_the_contract_columns_and_every_row():
    run_import(people(20))
    body = people(17).removeprefix(HEADER)
    f = run_import(
        HEADER
        + body
        + "E18,not-an-email,First18,Last18,Sales,,\n"
        + "E21,person21@corp.test,First21,Last21,Sales,,\n",
        mode="full",
    )
    assert f.status == EdiStatus.COMPLETED, (f.errors, f.preview)
    rows = results(f)
    assert list(rows[0]) == [
        "row_number",
        "employee_id",
        "email",
        "outcome",
        "seat",
        "codes",
        "message",
    ]
    assert rows[0]["row_number"] == "2"
    assert rows[0]["outcome"] == "unchanged"
    by_outcome = {r["outcome"]: r for r in rows}
    assert by_outcome["error"]["codes"] == "EMAIL_INVALID"
    assert by_outcome["error"]["row_number"] == "19"
    assert by_outcome["created"]["employee_id"] == "E21"
    # E18's row is invalid but its key is usable: still present, not gone.
    assert [r["employee_id"] for r in rows if r["outcome"] == "deactivated"] == [
        "E19",
        "E20",
    ]
    assert len(rows) == 19 + 2


def test_a_group_named_twice_in_a_cell_is_one_membership():
    f = run_import(people(1, groups="A; a ;B;A"))
    assert f.status == EdiStatus.COMPLETED, f.errors
    member = Member.objects.get(employee_id="E1")
    assert sorted(member.groups.values_list("name", flat=True)) == ["A", "B"]
