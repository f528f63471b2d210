"""EDI HTTPS tokens: the service and the `edi_token` command (EDI-C2, §7)."""

from __future__ import annotations

import hashlib
import io
import json
import re
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from django_tenants.utils import tenant_context

from edi.models import EdiToken
from edi.services.tokens import (
    TokenRefused,
    edi_token_authenticate,
    edi_token_issue,
    edi_token_revoke,
)
from portal.errors import ApplicationError
from portal.models import AuditEvent
from portal.roles import Role

TOKEN_RE = re.compile(r"^edi_[A-Za-z0-9_-]{43}$")


def _refusal(plaintext: str) -> TokenRefused:
    with pytest.raises(TokenRefused) as caught:
        edi_token_authenticate(plaintext)
    return caught.value


def test_issue_returns_256_random_bits_and_stores_only_the_hash(tenant, make_member):
    admin = make_member(Role.ADMIN)
    with tenant_context(tenant):
        token, plaintext = edi_token_issue(name=" Workday ", actor=admin)
        other, other_text = edi_token_issue(name="Workday", actor=admin)
        row = EdiToken.objects.get(pk=token.pk)
        stored = json.dumps(list(EdiToken.objects.values()), default=str)
        event = AuditEvent.objects.get(action="edi.token.issued", target_id=token.pk)

    assert TOKEN_RE.match(plaintext)
    assert plaintext != other_text
    assert row.token_hash == hashlib.sha256(plaintext.encode()).hexdigest()
    assert row.prefix == plaintext[:8]
    assert row.name == "Workday"
    assert row.scopes == ["edi:write", "edi:read"]
    assert row.created_by_id == admin.pk
    assert row.revoked_at is None
    assert row.last_used_at is None
    lifetime = row.expires_at - timezone.now()
    assert timedelta(days=364) < lifetime <= timedelta(days=365)
    # Neither secret is anywhere in the rows, nor in the audit event.
    for secret in (plaintext, other_text):
        assert secret not in stored
        assert secret[8:] not in stored
        assert secret[8:] not in json.dumps(event.changes)
    assert event.actor_label == admin.email
    assert event.changes["prefix"] == plaintext[:8]
    assert event.changes["scopes"] == ["edi:write", "edi:read"]


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"name": "  "}, "invalid"),
        ({"name": "x" * 101}, "invalid"),
        ({"name": "HR", "scopes": ()}, "invalid_scope"),
        ({"name": "HR", "scopes": ("edi:write", "edi:admin")}, "invalid_scope"),
        ({"name": "HR", "expires_in": timedelta(0)}, "invalid_expiry"),
        ({"name": "HR", "expires_in": timedelta(days=5 * 365 + 1)}, "invalid_expiry"),
    ],
)
def test_issue_refuses_bad_input_and_creates_nothing(tenant, kwargs, code):
    with tenant_context(tenant):
        with pytest.raises(ApplicationError) as caught:
            edi_token_issue(actor=None, **kwargs)
        assert caught.value.code == code
        assert not EdiToken.objects.exists()
        assert not AuditEvent.objects.filter(action="edi.token.issued").exists()


def test_issue_with_one_scope(tenant):
    with tenant_context(tenant):
        token, _ = edi_token_issue(name="Reader", scopes=["edi:read"], actor=None)
    assert token.scopes == ["edi:read"]


def test_authenticate_finds_the_token_and_stamps_last_use_once_a_minute(tenant):
    with tenant_context(tenant):
        token, plaintext = edi_token_issue(name="HR", actor=None)
        found = edi_token_authenticate(plaintext)
        assert found.pk == token.pk
        first_use = EdiToken.objects.get(pk=token.pk).last_used_at
        assert first_use is not None

        edi_token_authenticate(plaintext)  # within the minute: no write
        assert EdiToken.objects.get(pk=token.pk).last_used_at == first_use

        earlier = timezone.now() - timedelta(minutes=2)
        EdiToken.objects.filter(pk=token.pk).update(last_used_at=earlier)
        edi_token_authenticate(plaintext)
        stamped = EdiToken.objects.get(pk=token.pk).last_used_at
        assert stamped is not None
        assert stamped > earlier


def test_wrong_and_other_tenants_tokens_are_indistinguishable(tenant, other_tenant):
    with tenant_context(other_tenant):
        _, foreign = edi_token_issue(name="HR", actor=None)
    with tenant_context(tenant):
        edi_token_issue(name="HR", actor=None)
        refusals = [
            _refusal(foreign),  # valid, but in another tenant's schema
            _refusal("edi_" + "A" * 43),  # well-formed, unknown
            _refusal("not-a-token"),  # malformed
            _refusal(""),
        ]
        events = list(
            AuditEvent.objects.filter(action="edi.token.refused").order_by("pk")
        )
    assert {(r.status, r.code, r.message) for r in refusals} == {
        (401, "invalid_token", "The token is not valid.")
    }
    assert [e.changes["reason"] for e in events] == ["invalid_token"] * 4
    assert all(e.target_id == "" for e in events)
    # The refusal keeps the display prefix of what was presented, no more.
    assert events[0].changes["prefix"] == foreign[:8]
    assert foreign[8:] not in json.dumps([e.changes for e in events])
    assert events[2].changes["prefix"] == ""
    with tenant_context(other_tenant):
        assert not AuditEvent.objects.filter(action="edi.token.refused").exists()


def test_revoked_token_is_refused_at_once_and_audited(tenant, tenant_owner):
    with tenant_context(tenant):
        token, plaintext = edi_token_issue(name="HR", actor=None)
        edi_token_authenticate(plaintext)
        edi_token_revoke(token=token, actor=tenant_owner)
        refusal = _refusal(plaintext)
        refused = AuditEvent.objects.get(action="edi.token.refused")
        revoked = AuditEvent.objects.get(action="edi.token.revoked")
    assert (refusal.status, refusal.code) == (401, "token_revoked")
    assert refused.target_id == str(token.pk)
    assert refused.changes["reason"] == "token_revoked"
    assert revoked.actor_label == tenant_owner.email


def test_revoking_twice_changes_nothing(tenant):
    with tenant_context(tenant):
        token, _ = edi_token_issue(name="HR", actor=None)
        first = edi_token_revoke(token=token, actor=None).revoked_at
        again = edi_token_revoke(token=token, actor=None).revoked_at
        assert first == again
        assert AuditEvent.objects.filter(action="edi.token.revoked").count() == 1


def test_expired_token_is_refused_and_audited(tenant):
    with tenant_context(tenant):
        token, plaintext = edi_token_issue(name="HR", actor=None)
        EdiToken.objects.filter(pk=token.pk).update(
            expires_at=timezone.now() - timedelta(seconds=1)
        )
        refusal = _refusal(plaintext)
        event = AuditEvent.objects.get(action="edi.token.refused")
        assert EdiToken.objects.get(pk=token.pk).last_used_at is None
    assert (refusal.status, refusal.code) == (401, "token_expired")
    assert event.changes == {"reason": "token_expired", "prefix": plaintext[:8]}


# --------------------------------------------------------------------------
# manage.py edi_token SLUG [--name NAME]


def test_edi_token_command_prints_the_token_once_and_stores_its_hash(tenant):
    out = io.StringIO()
    call_command("edi_token", "tenant", "--name", "Workday", stdout=out)
    printed = json.loads(out.getvalue())

    assert TOKEN_RE.match(printed["token"])
    assert printed["slug"] == "tenant"
    assert printed["name"] == "Workday"
    assert printed["scopes"] == ["edi:write", "edi:read"]
    assert printed["prefix"] == printed["token"][:8]
    with tenant_context(tenant):
        row = EdiToken.objects.get()
        assert row.token_hash == hashlib.sha256(printed["token"].encode()).hexdigest()
        assert edi_token_authenticate(printed["token"]).pk == row.pk
        event = AuditEvent.objects.get(action="edi.token.issued")
    assert (event.actor_type, event.source) == ("system", "cli")


def test_edi_token_command_default_name(tenant):
    out = io.StringIO()
    call_command("edi_token", "tenant", stdout=out)
    assert json.loads(out.getvalue())["name"] == "HTTPS upload"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nosuchtenant"], "error: tenant_unknown:"),
        (["tenant", "--name", " "], "error: invalid: Give the token a name."),
    ],
)
def test_edi_token_command_refusals(tenant, argv, message):
    with pytest.raises(CommandError) as caught:
        call_command("edi_token", *argv, stdout=io.StringIO())
    assert str(caught.value).startswith(message)
    assert caught.value.returncode == 1
    with tenant_context(tenant):
        assert not EdiToken.objects.exists()
