"""SSO fixtures: the portal's tenants wired to pysaml2 test IdPs.

`saml` connects `tenant` to a `TestIdP` (its SP metadata loaded as served,
the IdP's metadata loaded through the same service as the `/sso/` page),
with JIT on for `corp.test`. `SamlHarness` drives the flows through
Django's test client; the ACS POST always comes from a cookie-less client,
because browsers withhold the Lax session cookie on the IdP's cross-site
POST and Django's test client ignores SameSite (sso.md §4).
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client
from django_tenants.utils import tenant_context

from portal.models import AuditEvent
from sso.services import keys as sp_keys
from sso.services.config import (
    idp_configure_from_metadata,
    idp_policies_set,
    saml_context_forget,
    sp_metadata_xml,
)
from tenants.models import Tenant
from tests.sso.idp import IDP_ID, TestIdP, make_keypair

CORP = "corp.test"

_KEY_POOL: dict[tuple[str, int], tuple[bytes, str, str, Any]] = {}


@pytest.fixture(autouse=True)
def fast_sp_keys(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reuse generated RSA-3072 SP keys across tests (per schema, in order).

    Each test rolls back its SP key rows, and RSA-3072 generation costs
    ~0.5 s. Tests marked `real_sp_keys` generate fresh keys.
    """
    if request.node.get_closest_marker("real_sp_keys"):
        return
    original = sp_keys._generate
    counters: dict[str, itertools.count[int]] = {}

    def pooled(common_name: str) -> tuple[bytes, str, str, Any]:
        n = next(counters.setdefault(common_name, itertools.count()))
        key = (common_name, n)
        if key not in _KEY_POOL:
            _KEY_POOL[key] = original(common_name)
        return _KEY_POOL[key]

    monkeypatch.setattr(sp_keys, "_generate", pooled)


@pytest.fixture(autouse=True)
def _fresh_settings_cache() -> Iterator[None]:
    """Fresh SAML settings and rate counters (the cache outlives a test)."""
    from django.core.cache import cache

    saml_context_forget()
    cache.clear()
    yield
    saml_context_forget()
    cache.clear()


@pytest.fixture(scope="session")
def idp_keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return make_keypair(tmp_path_factory.mktemp("idp"), "Test IdP")


@pytest.fixture(scope="session")
def other_idp_keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return make_keypair(tmp_path_factory.mktemp("idp2"), "Other IdP")


def default_attrs(email: str, **extra: list[str]) -> dict[str, list[str]]:
    attrs = {"email": [email], "firstName": ["Alice"], "lastName": ["Doe"]}
    attrs.update(extra)
    return attrs


@dataclass
class SamlHarness:
    """One tenant connected to one test IdP."""

    tenant: Tenant
    idp: TestIdP
    host: str
    origin: str
    sp_entity_id: str
    acs_url: str
    sls_url: str
    clients: list[Client] = field(default_factory=list)

    def client(self) -> Client:
        return Client(HTTP_HOST=self.host)

    # -- SP-initiated -------------------------------------------------------

    def start(self, client: Client, next_path: str | None = None) -> str:
        """GET /sso/saml/login/; returns the IdP Redirect URL."""
        url = "/sso/saml/login/" + (f"?next={next_path}" if next_path else "")
        response = client.get(url)
        assert response.status_code == 302, (
            response.status_code,
            response.content[:300],
        )
        return str(response["Location"])

    def answer(self, login_url: str, email: str, **kw: Any) -> tuple[str, str | None]:
        attrs = kw.pop("attrs", None) or default_attrs(email)
        return self.idp.answer(login_url, email=email, attrs=attrs, **kw)

    def request_id(self, login_url: str) -> str:
        return self.idp.parse_authn_request_url(login_url).id

    def relay_state(self, login_url: str) -> str:
        return parse_qs(urlsplit(login_url).query)["RelayState"][0]

    # -- the ACS and the finish step ---------------------------------------------

    def post(
        self,
        saml_response: str,
        relay_state: str = "",
        *,
        client: Client | None = None,
        **extra: Any,
    ) -> Any:
        """POST to the ACS from a cookie-less client (or the given one)."""
        poster = client or self.client()
        data = {"SAMLResponse": saml_response}
        if relay_state:
            data["RelayState"] = relay_state
        return poster.post("/sso/saml/acs/", data, **extra)

    def post_xml(self, xml: str, relay_state: str = "", **kw: Any) -> Any:
        return self.post(base64.b64encode(xml.encode()).decode(), relay_state, **kw)

    def finish(self, client: Client, acs_response: Any) -> Any:
        assert acs_response.status_code == 303, (
            acs_response.status_code,
            acs_response.content[:400],
        )
        return client.get(acs_response["Location"])

    def login(
        self, client: Client, email: str, *, next_path: str | None = None, **kw: Any
    ) -> Any:
        """The whole SP-initiated flow; returns the finish step's response."""
        login_url = self.start(client, next_path)
        saml_response, relay = self.answer(login_url, email, **kw)
        return self.finish(client, self.post(saml_response, relay or ""))

    # -- IdP-initiated and hand-made responses -----------------------------------

    def response_xml(self, email: str, **kw: Any) -> str:
        attrs = kw.pop("attrs", None) or default_attrs(email)
        return self.idp.response(
            sp_id=kw.pop("sp_id", self.sp_entity_id),
            acs=kw.pop("acs", self.acs_url),
            email=email,
            attrs=attrs,
            **kw,
        )

    def events(self, action: str) -> list[AuditEvent]:
        with tenant_context(self.tenant):
            return list(AuditEvent.objects.filter(action=action).order_by("pk"))


def connect(
    tenant: Tenant,
    keypair: tuple[str, str],
    *,
    entity_id: str = IDP_ID,
    idp: TestIdP | None = None,
    **policies: Any,
) -> SamlHarness:
    """Wire `tenant` to a test IdP through the same service as the page."""
    with tenant_context(tenant):
        sp_metadata = sp_metadata_xml()
        if idp is None:
            idp = TestIdP(sp_metadata, keypair[0], keypair[1], entity_id=entity_id)
        else:
            idp.add_sp_metadata(sp_metadata)
        idp_configure_from_metadata(data=idp.metadata().encode(), actor=None)
        settings = {
            "jit_enabled": True,
            "allowed_email_domains": [CORP],
            "preset": "okta",
        }
        settings.update(policies)
        idp_policies_set(actor=None, operator=True, **settings)
    return harness(tenant, idp)


def harness(tenant: Tenant, idp: TestIdP) -> SamlHarness:
    """A `SamlHarness` for `tenant` and an IdP it is (or will be) wired to."""
    with tenant_context(tenant):
        host = tenant.domains.first().domain  # type: ignore[union-attr]
    origin = f"http://{host}"
    return SamlHarness(
        tenant=tenant,
        idp=idp,
        host=host,
        origin=origin,
        sp_entity_id=f"{origin}/sso/saml/metadata/",
        acs_url=f"{origin}/sso/saml/acs/",
        sls_url=f"{origin}/sso/saml/sls/",
    )


@pytest.fixture
def saml(tenant: Tenant, idp_keypair: tuple[str, str]) -> SamlHarness:
    return connect(tenant, idp_keypair)


@pytest.fixture
def other_saml(other_tenant: Tenant, idp_keypair: tuple[str, str]) -> SamlHarness:
    """`other_tenant` on its own IdP object with the same key and entity ID."""
    return connect(other_tenant, idp_keypair)


# Fixtures of the security suite (tests/sso/test_security*.py, test_replay.py).


@pytest.fixture
def saml_rate_counters(settings: Any) -> Iterator[None]:
    """A private local-memory cache, so rate counters start at zero."""
    from tests.sso.test_security import private_cache

    yield from private_cache(settings)


@pytest.fixture
def saml_no_xml_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """SSO-S18: fail the test if its logs hold SAML XML."""
    from tests.sso.test_security import logs_hold_no_message

    yield from logs_hold_no_message(caplog)


@pytest.fixture
def idp_on(saml: SamlHarness) -> SamlHarness:
    """`saml` with IdP-initiated sign-in allowed (reaches python3-saml)."""
    from tests.sso.test_security import allow_idp_initiated

    return allow_idp_initiated(saml)


@pytest.fixture
def python3_saml_calls(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Records every python3-saml Response construction (a spy, no change)."""
    from tests.sso.test_security import spy_python3_saml

    return spy_python3_saml(monkeypatch)
