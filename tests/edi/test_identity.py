"""One person, whether they arrive by EDI file or by SSO (edi.md §2).

The §2 checks: JIT then file (email in another case), file then JIT, JIT
during an import, and a file demoting the owner each end with one member
and the expected seat; JIT never reactivates and never overwrites what a
file set. Then the parity check: a one-row file and the per-record member
services leave the same member state.

Sequential cases run in the rolled-back `tenant`. The concurrent ones need
two connections that see each other's commits, so they use
`committed_tenant` and threads; an import is held inside its apply
transaction (just before its commit) by standing in for the pipeline's
test crash point.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone
from django_tenants.utils import tenant_context

from edi.models import EdiFile, EdiStatus
from edi.services import pipeline
from edi.services.pipeline import edi_import_run
from edi.services.receive import edi_file_receive
from edi.services.spool import SpoolWriter
from portal.db import current_schema
from portal.models import Member, MemberSession, MemberSource, MemberStatus
from portal.roles import Role
from portal.services.jobs import job_start
from portal.services.members import (
    member_create,
    member_deactivate,
    member_groups_change,
    member_reactivate,
    member_update,
)
from sso.errors import SamlError
from sso.models import IdentityProvider, SsoLink
from sso.services.identity import NAMEID_EMAIL, VerifiedIdentity, sso_member_resolve
from tenants.models import Tenant
from tests.worker import use_test_broker, wait_until

IDP = "https://idp.corp.test/metadata"
ALICE = "alice@corp.test"
WAIT = 30.0


# ------------------------------------------------------------------ helpers


def import_csv(text: str, *, mode: str = "delta") -> EdiFile:
    """Receive `text` and run its import as the worker would; the file."""
    with SpoolWriter(current_schema()) as writer:
        writer.write(text.encode())
        spooled = writer.finish()
    edi_file = edi_file_receive(spooled=spooled, source="ui", mode=mode)
    assert edi_file.status == EdiStatus.RECEIVED, edi_file.status
    job = job_start(job_id=str(edi_file.job_id))
    assert job is not None
    edi_import_run(job=job)
    edi_file.refresh_from_db()
    return edi_file


def idp_connect() -> IdentityProvider:
    """The tenant's IdP: JIT on for corp.test, employee IDs sent."""
    return IdentityProvider.objects.create(
        entity_id=IDP,
        sso_url="https://idp.corp.test/sso",
        jit_enabled=True,
        allowed_email_domains=["corp.test"],
        employee_id_attribute="employeeNumber",
    )


def sign_in(
    email: str,
    *,
    employee_id: str = "",
    first: str = "Alice",
    last: str = "Doe",
    name_id: str | None = None,
) -> tuple[Member, bool]:
    """An SSO sign-in's member resolution, in its own transaction as at
    the ACS finish step; `(member, created)`."""
    attributes = {"email": [email], "firstName": [first], "lastName": [last]}
    if employee_id:
        attributes["employeeNumber"] = [employee_id]
    identity = VerifiedIdentity(
        idp_entity_id=IDP,
        name_id=name_id or email,
        name_id_format=NAMEID_EMAIL,
        name_qualifier="",
        sp_name_qualifier="",
        session_index="s-1",
        session_expires_at="",
        attributes=attributes,
    )
    idp = IdentityProvider.objects.get()
    with transaction.atomic():
        member, _, created = sso_member_resolve(idp=idp, mappings=(), identity=identity)
    return member, created


def refused(email: str, code: str, **kw: Any) -> None:
    with pytest.raises(SamlError) as caught:
        sign_in(email, **kw)
    assert caught.value.code == code


def people_named(email: str) -> list[Member]:
    return list(Member.objects.filter(email__iexact=email))


def people(n: int, *, start: int = 1, seat: str = "") -> str:
    rows = "".join(
        f"E{i},person{i}@corp.test,First{i},{seat}\n" for i in range(start, n + 1)
    )
    return "employee_id,email,first_name,seat\n" + rows


# ------------------------------------------------------ sequential (§2 check)


@pytest.fixture
def in_tenant(tenant: Tenant) -> Iterator[IdentityProvider]:
    with tenant_context(tenant):
        yield idp_connect()


def test_jit_then_file_with_the_email_in_another_case_is_one_member(in_tenant):
    jit, created = sign_in(ALICE)
    assert created
    jit.refresh_from_db()
    assert (jit.source, jit.status, jit.has_seat) == (
        MemberSource.SSO,
        MemberStatus.ACTIVE,
        True,  # no seat limit: JIT grants one
    )

    f = import_csv("employee_id,email,first_name\nE1,Alice@CORP.test,Alicia\n")

    assert f.status == EdiStatus.COMPLETED, f.errors
    assert (f.counts["created"], f.counts["updated"]) == (0, 1)
    [member] = people_named(ALICE)
    assert member.pk == jit.pk
    assert member.employee_id == "E1"  # the file's employee_id adopted
    assert member.first_name == "Alicia"
    assert member.has_seat  # no seat column: the file leaves the seat alone
    assert member.status == MemberStatus.ACTIVE
    # Signing in again finds the same member and keeps what the file set.
    again, created = sign_in(ALICE, employee_id="E1", first="Alice")
    assert (again.pk, created) == (jit.pk, False)
    member.refresh_from_db()
    assert member.first_name == "Alicia"
    assert len(people_named(ALICE)) == 1


@pytest.mark.parametrize(
    ("email", "employee_id"),
    [
        pytest.param("A.Doe@Corp.Test", "", id="by-email-other-case"),
        pytest.param("alice.renamed@corp.test", "E-1001", id="by-employee-id"),
    ],
)
def test_file_then_jit_finds_the_files_member_and_overwrites_nothing(
    in_tenant, email, employee_id
):
    f = import_csv(
        "employee_id,email,first_name,last_name,job_title,department\n"
        "E-1001,a.doe@corp.test,Alicia,Doe-Smith,Engineer,R&D\n"
    )
    assert f.status == EdiStatus.COMPLETED, f.errors
    before: dict[str, Any] = dict(Member.objects.values().get(employee_id="E-1001"))

    member, created = sign_in(email, employee_id=employee_id, first="Al", last="D")

    assert not created
    assert member.pk == before["id"]
    after: dict[str, Any] = dict(Member.objects.values().get(pk=member.pk))
    changed = {k for k in after if after[k] != before[k]}
    # Signing in activates the invitation and records the sign-in; no field
    # the file set changes, and no seat is granted by finding someone.
    assert changed == {"status", "user_id", "last_sign_in_at", "updated_at"}
    assert after["status"] == MemberStatus.ACTIVE
    assert not after["has_seat"]
    assert Member.objects.count() == 2  # the owner and Alicia
    assert SsoLink.objects.get().member_id == member.pk


def test_sign_in_fills_only_blank_names(in_tenant):
    blank = member_create(email="bob@corp.test", actor=None)
    named = member_create(email="carol@corp.test", actor=None, first_name="Caz")
    sign_in("bob@corp.test", first="Bob", last="Roe")
    sign_in("carol@corp.test", first="Carol", last="Poe")
    blank.refresh_from_db()
    named.refresh_from_db()
    assert (blank.first_name, blank.last_name) == ("Bob", "Roe")
    assert (named.first_name, named.last_name) == ("Caz", "Poe")


def test_jit_never_reactivates_a_member_a_file_deactivated(in_tenant):
    import_csv(people(10))
    # Person 9 has signed in before (linked); person 10 never has.
    linked, _ = sign_in("person9@corp.test", employee_id="E9")
    f = import_csv(people(8), mode="full")
    assert f.status == EdiStatus.COMPLETED, f.errors
    assert f.counts["deactivated"] == 2

    for n in (9, 10):
        refused(f"person{n}@corp.test", "member_deactivated", employee_id=f"E{n}")
        refused(f"person{n}@corp.test", "member_deactivated")
        [member] = people_named(f"person{n}@corp.test")
        assert member.status == MemberStatus.DEACTIVATED
        assert not member.has_seat
    assert SsoLink.objects.get().member_id == linked.pk
    # Only a file (or an admin) brings them back.
    import_csv(people(10))
    member, created = sign_in("person10@corp.test", employee_id="E10")
    assert not created
    assert member.status == MemberStatus.ACTIVE


def test_an_email_with_another_employee_id_is_an_identity_conflict(in_tenant):
    """The same lookup as the file's IDENTITY_CONFLICT (edi.md §2)."""
    import_csv("employee_id,email\nE1,alice@corp.test\n")
    refused(ALICE, "identity_conflict", employee_id="E2")
    assert [m.employee_id for m in people_named(ALICE)] == ["E1"]
    assert not Member.objects.filter(employee_id="E2").exists()
    assert not SsoLink.objects.exists()


def test_a_file_demoting_the_owner_is_owner_protected(in_tenant, tenant_owner):
    before = Member.objects.values().get(pk=tenant_owner.pk)
    others = "".join(f"p{n}@corp.test,P{n},,\n" for n in range(10))
    f = import_csv(
        "email,first_name,admin_permission,seat\n"
        f"{tenant_owner.email.upper()},Mallory,,inactive\n"
        "someone@corp.test,Some,reporting,active\n" + others
    )
    assert f.status == EdiStatus.COMPLETED, f.errors
    assert f.counts["row_errors"] == 1
    assert Member.objects.values().get(pk=tenant_owner.pk) == before
    assert before["role"] == Role.OWNER
    assert len(people_named(tenant_owner.email)) == 1
    assert Member.objects.get(email="someone@corp.test").role == Role.READONLY_ADMIN


# ------------------------------------------------------------------- parity

PARITY_FIELDS = (
    "first_name",
    "last_name",
    "job_title",
    "department",
    "location",
    "status",
    "has_seat",
    "role",
    "source",
    "managed_by_edi",
    "manager_id",
    "user_id",
)


def state(member: Member) -> dict[str, Any]:
    """A member's state without its identity and the moments of change."""
    member.refresh_from_db()
    row = {name: getattr(member, name) for name in PARITY_FIELDS}
    row["seat_granted"] = member.seat_granted_at is not None
    row["deactivated"] = member.deactivated_at is not None
    row["groups"] = sorted(member.groups.values_list("name", flat=True))
    row["sessions"] = MemberSession.objects.filter(member=member).count()
    return row


def test_a_one_row_file_and_the_member_services_agree(in_tenant):
    """Create, update, deactivate (by absence) and reactivate (by coming
    back), each once through a one-row file and once through the service."""
    # Others with seats, so the full file below stays under the thresholds.
    import_csv(people(20, start=3, seat="active"))
    by_service = member_create(
        email="p1@corp.test",
        employee_id="P1",
        actor=None,
        first_name="Pat",
        last_name="One",
        job_title="Engineer",
        department="R&D",
        location="Paris",
        role=Role.ADMIN,
        source=MemberSource.EDI,
        grant_seat=True,
    )
    member_groups_change(
        member_ids=[by_service.pk], group_name="EMEA", add=True, actor=None
    )
    header = (
        "employee_id,email,first_name,last_name,job_title,department,location,"
        "seat,admin_permission,groups\n"
    )
    import_csv(
        header + "P2,p2@corp.test,Pat,One,Engineer,R&D,Paris,active,admin,EMEA\n"
    )
    by_file = Member.objects.get(employee_id="P2")
    assert state(by_file) == state(by_service)

    member_update(member=by_service, actor=None, job_title="Lead", department="")
    import_csv(header + "P2,p2@corp.test,Pat,One,Lead,,Paris,active,admin,EMEA\n")
    assert state(by_file) == state(by_service)

    for member in (by_service, by_file):
        MemberSession.objects.create(
            member=member, session_key=f"s{member.pk:031d}", auth_method="saml"
        )
    member_deactivate(member=by_service, actor=None)
    f = import_csv(people(22, start=3), mode="full")  # without P1 and P2
    assert f.counts["deactivated"] == 1
    assert state(by_file)["status"] == MemberStatus.DEACTIVATED
    assert state(by_file) == state(by_service)

    member_reactivate(member=by_service, actor=None)
    import_csv(header + "P2,p2@corp.test,Pat,One,Lead,,Paris,,admin,EMEA\n")
    assert state(by_file)["status"] == MemberStatus.INVITED
    assert state(by_file) == state(by_service)


def test_a_file_stores_an_email_as_the_member_service_does(in_tenant):
    """Both keep the local part as given and lower-case the domain, and
    trim spaces around it (and around the other values)."""
    by_service = member_create(
        email=" Pat.One@Corp.TEST ", actor=None, first_name=" Pat ", employee_id=" P1 "
    )
    import_csv("employee_id,email,first_name\n P2 , Pat.Two@Corp.TEST , Pat \n")
    by_file = Member.objects.get(employee_id="P2")
    assert (by_service.email, by_service.first_name, by_service.employee_id) == (
        "Pat.One@corp.test",
        "Pat",
        "P1",
    )
    assert (by_file.email, by_file.first_name) == ("Pat.Two@corp.test", "Pat")


# ------------------------------------------------------- concurrent (§2 check)


@dataclass
class Worker:
    """A thread with its own database connection, in the tenant's schema."""

    tenant: Tenant
    body: Callable[[], Any]
    result: Any = None
    error: BaseException | None = None
    backend_pid: int | None = None
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> Worker:
        def run() -> None:
            try:
                with tenant_context(self.tenant):
                    connection.ensure_connection()
                    self.backend_pid = connection.connection.info.backend_pid
                    self.result = self.body()
            except BaseException as exc:  # reported by join()
                self.error = exc
            finally:
                connection.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        wait_until(lambda: self.backend_pid, timeout=WAIT, what="the thread")
        return self

    def join(self) -> Any:
        assert self._thread is not None
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "the thread did not finish"
        if self.error is not None:
            raise self.error
        return self.result

    def waiting_for_a_lock(self) -> bool:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                [self.backend_pid],
            )
            row = cursor.fetchone()
        return row is not None and row[0] == "Lock"


@dataclass
class Gate:
    """Holds a thread at one point until released."""

    reached: threading.Event = field(default_factory=threading.Event)
    go: threading.Event = field(default_factory=threading.Event)

    def hold(self) -> None:
        self.reached.set()
        assert self.go.wait(WAIT), "never released"

    def wait_reached(self) -> None:
        assert self.reached.wait(WAIT), "the thread never got there"


@pytest.fixture
def committed(committed_tenant: Tenant) -> Iterator[Tenant]:
    """`committed_tenant` with the IdP. The imports run here, in threads:
    what they send on commit goes to a test queue nobody consumes, dropped
    afterwards."""
    with use_test_broker():
        with tenant_context(committed_tenant):
            idp_connect()
        yield committed_tenant


@pytest.fixture
def apply_gate(monkeypatch: pytest.MonkeyPatch) -> Gate:
    """Holds an import inside its apply transaction, just before the
    commit (the pipeline's `before_commit` crash point)."""
    gate = Gate()

    def crash_point(name: str) -> None:
        if name == "before_commit":
            gate.hold()

    monkeypatch.setattr(pipeline, "crash_point", crash_point)
    return gate


def test_jit_during_an_import_finds_the_files_member(committed, apply_gate):
    importing = Worker(
        committed,
        lambda: import_csv("employee_id,email,first_name\nE1,alice@corp.test,Alicia\n"),
    ).start()
    apply_gate.wait_reached()  # Alicia is inserted; the apply is uncommitted
    signing_in = Worker(committed, lambda: sign_in(ALICE, first="Alice")).start()
    wait_until(signing_in.waiting_for_a_lock, timeout=WAIT, what="JIT to wait")
    apply_gate.go.set()
    f = importing.join()
    member, created = signing_in.join()

    assert f.status == EdiStatus.COMPLETED, f.errors
    assert f.counts["created"] == 1
    assert not created
    with tenant_context(committed):
        [alice] = people_named(ALICE)
        assert alice.pk == member.pk
        assert (alice.employee_id, alice.first_name) == ("E1", "Alicia")
        assert alice.status == MemberStatus.ACTIVE
        assert not alice.has_seat  # a found member gets no seat from JIT
        assert SsoLink.objects.get().member_id == alice.pk


def test_an_import_during_a_jit_adopts_the_jit_member(committed):
    gate = Gate()

    def jit_held_open() -> tuple[Member, bool]:
        with transaction.atomic():
            found = sign_in(ALICE)
            gate.hold()  # created, seat granted, not committed
        return found

    signing_in = Worker(committed, jit_held_open).start()
    gate.wait_reached()
    importing = Worker(
        committed,
        lambda: import_csv("employee_id,email,first_name\nE1,ALICE@corp.test,Alicia\n"),
    ).start()
    wait_until(importing.waiting_for_a_lock, timeout=WAIT, what="the import to wait")
    gate.go.set()
    member, created = signing_in.join()
    f = importing.join()

    assert created
    assert f.status == EdiStatus.COMPLETED, f.errors
    assert (f.counts["created"], f.counts["updated"]) == (0, 1)
    with tenant_context(committed):
        [alice] = people_named(ALICE)
        assert alice.pk == member.pk
        assert (alice.employee_id, alice.first_name) == ("E1", "Alicia")
        assert alice.source == MemberSource.SSO
        assert alice.status == MemberStatus.ACTIVE
        # The file has no seat column: the seat JIT granted stays.
        assert alice.has_seat


def test_a_sign_in_during_a_deactivating_import_is_refused(committed, apply_gate):
    with tenant_context(committed):
        apply_gate.go.set()  # the first file passes the gate
        import_csv(people(10))
    apply_gate.go.clear()
    apply_gate.reached.clear()
    importing = Worker(committed, lambda: import_csv(people(9), mode="full")).start()
    apply_gate.wait_reached()  # person 10 is deactivated, uncommitted

    def refused_sign_in() -> str:
        with pytest.raises(SamlError) as caught:
            sign_in("person10@corp.test", employee_id="E10")
        return caught.value.code

    signing_in = Worker(committed, refused_sign_in).start()
    wait_until(signing_in.waiting_for_a_lock, timeout=WAIT, what="JIT to wait")
    apply_gate.go.set()
    f = importing.join()

    assert signing_in.join() == "member_deactivated"
    assert f.counts["deactivated"] == 1
    with tenant_context(committed):
        [member] = people_named("person10@corp.test")
        assert member.status == MemberStatus.DEACTIVATED
        assert member.last_sign_in_at is None
        assert member.deactivated_at is not None
        assert member.deactivated_at <= timezone.now()
        assert not SsoLink.objects.exists()
