"""The session index records how an SSO session signed in (SLO and audit)."""

from __future__ import annotations

from django_tenants.utils import tenant_context

from portal.models import MemberSession
from sso.models import SsoSession
from tests.sso.conftest import SamlHarness


def test_sso_sign_in_is_indexed_as_saml(saml: SamlHarness) -> None:
    client = saml.client()
    response = saml.login(client, "alice@corp.test")
    assert response.status_code == 302
    key = client.session.session_key
    with tenant_context(saml.tenant):
        index = MemberSession.objects.get(session_key=key)
        assert index.auth_method == "saml"
        assert index.member.email == "alice@corp.test"
        assert SsoSession.objects.get(session_key=key).member_id == index.member_id


def test_signing_in_again_in_the_same_session_updates_the_index(
    saml: SamlHarness,
) -> None:
    """login() keeps the session key when the same person signs in again."""
    client = saml.client()
    assert saml.login(client, "alice@corp.test").status_code == 302
    first_key = client.session.session_key
    assert saml.login(client, "alice@corp.test").status_code == 302
    key = client.session.session_key
    with tenant_context(saml.tenant):
        assert MemberSession.objects.filter(session_key=key).count() == 1
        assert SsoSession.objects.filter(session_key=key).count() == 1
        assert SsoSession.objects.filter(session_key=first_key).count() == (
            1 if key == first_key else 0
        )
