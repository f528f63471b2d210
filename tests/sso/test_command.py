"""`manage.py sso_configure SLUG --idp-metadata FILE [--enforce-sso]
[--allow-idp-initiated] [--jit]` (DESIGN.md, SSO-F1, SSO-F13)."""

from __future__ import annotations

import json
from collections.abc import Callable
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command, load_command_class
from django.core.management.base import CommandError
from django.db import connections
from django.test import Client
from django_tenants.utils import tenant_context

from portal.models import AuditEvent, Member
from sso.models import IdentityProvider, IdpCertificate, SpKey
from sso.services.config import sp_metadata_xml
from tenants.models import Tenant
from tests.sso.fixtures.support import (
    loopback_listener,
    metadata_external_dtd,
    render_metadata,
)
from tests.sso.idp import IDP_ID, TestIdP

ClientMaker = Callable[..., Client]
FIELDS = {"slug", "idp_entity_id", "sp_entity_id", "acs_url"}


@pytest.fixture
def metadata_file(tenant: Tenant, idp_keypair: tuple[str, str], tmp_path: Path) -> Path:
    with tenant_context(tenant):
        xml = TestIdP(sp_metadata_xml(), *idp_keypair).metadata()
    path = tmp_path / "idp-metadata.xml"
    path.write_text(xml)
    return path


def configure(slug: str, path: Path, *flags: str) -> dict[str, Any]:
    out = StringIO()
    call_command("sso_configure", slug, "--idp-metadata", str(path), *flags, stdout=out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines
    result: dict[str, Any] = json.loads(lines[0])
    return result


def run_cli(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """As `manage.py` runs it: exit status, stdout, stderr."""
    # run_from_argv closes every connection at the end, which would end the
    # test's transaction.
    monkeypatch.setattr(connections, "close_all", lambda: None)
    command = load_command_class("sso", "sso_configure")
    capsys.readouterr()
    code = 0
    try:
        command.run_from_argv(["manage.py", "sso_configure", "--skip-checks", *argv])
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def state(tenant: Tenant) -> dict[str, Any]:
    with tenant_context(tenant):
        idp = dict(IdentityProvider.objects.values().first() or {})
        idp.pop("updated_at", None)
        return {
            "idp": idp,
            "certs": list(IdpCertificate.objects.values_list("fingerprint", flat=True)),
            "sp_keys": SpKey.objects.count(),
            "events": AuditEvent.objects.count(),
        }


def test_prints_exactly_slug_entity_ids_and_acs(
    tenant: Tenant, metadata_file: Path
) -> None:
    result = configure(tenant.slug, metadata_file)

    assert result == {
        "slug": tenant.slug,
        "idp_entity_id": IDP_ID,
        "sp_entity_id": "http://tenant.localhost/sso/saml/metadata/",
        "acs_url": "http://tenant.localhost/sso/saml/acs/",
    }
    assert set(result) == FIELDS
    with tenant_context(tenant):
        idp = IdentityProvider.objects.get()
        assert (idp.enforce_sso, idp.allow_idp_initiated, idp.jit_enabled) == (
            False,
            False,
            False,
        )
        assert SpKey.objects.count() == 1
        event = AuditEvent.objects.get(action="sso.idp.configured")
    assert (event.actor_type, event.source) == ("system", "cli")


def test_the_command_line_prints_the_same_json(
    tenant: Tenant,
    metadata_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(
        [tenant.slug, "--idp-metadata", str(metadata_file)], monkeypatch, capsys
    )

    assert (code, err) == (0, "")
    assert set(json.loads(out)) == FIELDS


def test_flags_switch_policies_on_and_enforcement_is_audited(
    tenant: Tenant,
    tenant_owner: Member,
    client_for: ClientMaker,
    metadata_file: Path,
) -> None:
    # The page refuses enforcement without a passed test connection...
    configure(tenant.slug, metadata_file)
    refused = client_for(tenant_owner).post("/sso/enforce/", {"enforce_sso": "on"})
    assert refused.status_code == 302
    with tenant_context(tenant):
        assert not IdentityProvider.objects.get().enforce_sso

    # ...the operator's command may enforce it, audited as such.
    configure(
        tenant.slug, metadata_file, "--enforce-sso", "--allow-idp-initiated", "--jit"
    )

    with tenant_context(tenant):
        idp = IdentityProvider.objects.get()
        enforcement = AuditEvent.objects.get(action="sso.enforcement.changed")
        policy = AuditEvent.objects.get(action="sso.policy.changed")
    assert (idp.enforce_sso, idp.allow_idp_initiated, idp.jit_enabled) == (
        True,
        True,
        True,
    )
    assert enforcement.changes["operator"] is True
    assert enforcement.changes["enforce_sso"] == {"before": False, "after": True}
    assert (enforcement.actor_type, enforcement.source) == ("system", "cli")
    assert set(policy.changes) == {"allow_idp_initiated", "jit_enabled"}

    # Without flags nothing is switched off, and nothing more is audited.
    configure(tenant.slug, metadata_file)
    with tenant_context(tenant):
        idp = IdentityProvider.objects.get()
        assert (idp.enforce_sso, idp.allow_idp_initiated, idp.jit_enabled) == (
            True,
            True,
            True,
        )
        assert AuditEvent.objects.filter(action="sso.enforcement.changed").count() == 1
        assert AuditEvent.objects.filter(action="sso.policy.changed").count() == 1


FAILURES = {
    "missing_file": "metadata_unreadable",
    "directory": "metadata_unreadable",
    "dtd": "metadata_dtd_forbidden",
    "sp_metadata": "metadata_not_idp",
    "garbage": "metadata_malformed",
    "too_large": "metadata_too_large",
    "unknown_slug": "tenant_unknown",
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_failures_exit_1_with_a_reason_code_and_change_nothing(
    case: str,
    tenant: Tenant,
    metadata_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    okta, _ = render_metadata("okta", tmp_path)
    configure(tenant.slug, metadata_file, "--jit")  # an IdP already set
    before = state(tenant)
    slug, path = tenant.slug, tmp_path / f"{case}.xml"
    with loopback_listener() as listener:
        if case == "missing_file":
            path = tmp_path / "nowhere" / "metadata.xml"
        elif case == "directory":
            path = tmp_path
        elif case == "dtd":
            path.write_bytes(metadata_external_dtd(okta.decode(), listener.url))
        elif case == "sp_metadata":
            with tenant_context(tenant):
                path.write_text(sp_metadata_xml())
        elif case == "garbage":
            path.write_bytes(b"\x89PNG\r\n\x1a\n not metadata")
        elif case == "too_large":
            path.write_bytes(okta + b"<!--" + b"x" * (1024 * 1024) + b"-->")
        else:
            slug = "no-such-tenant"
            path.write_bytes(okta)

        code, out, err = run_cli(
            [slug, "--idp-metadata", str(path), "--enforce-sso"], monkeypatch, capsys
        )
        with pytest.raises(CommandError, match=f"error: {FAILURES[case]}: ") as raised:
            call_command("sso_configure", slug, "--idp-metadata", str(path))

    assert code == 1
    assert out == ""
    assert f"error: {FAILURES[case]}: " in err
    assert raised.value.returncode == 1
    assert listener.connections == 0
    assert state(tenant) == before
    with tenant_context(tenant):
        assert not IdentityProvider.objects.get().enforce_sso
