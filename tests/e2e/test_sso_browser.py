"""SAML sign-in against a live server: Chromium and plain HTTP (sso.md §4).

The portal runs on `<slug>.localhost:<port>` (Django's LiveServerThread) and
the test IdP (`tests/sso/idp_server.py`, pysaml2 behind wsgiref) on
`127.0.0.1:<other port>`: another site, so Chromium really withholds the
portal's SameSite=Lax session cookie on the IdP's cross-site POST to the
ACS. The SP-initiated login therefore works only through the server-side
RelayState token (SSO-S12), and it finishes in the session that started it
only because the ACS answers 303 to a same-site GET (SSO-S16).

The usual e2e guards stay on: requests leaving loopback, console errors,
page errors and Content-Security-Policy violations fail the test. The IdP's
pages send no CSP (their inline auto-submit script is theirs), so the
listener has nothing to report there; the portal's own pages must be clean.
Screenshots go to tests/e2e/screenshots/sso_*.png.
"""

from __future__ import annotations

import http.client
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import pytest
from django.conf import settings
from django.test.utils import override_settings
from django_tenants.utils import tenant_context
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT

from portal.db import use_public_schema
from portal.models import AuditEvent, Member
from sso.models import SsoLink, SsoSession
from sso.services.config import (
    group_mappings_set,
    idp_configure_from_metadata,
    idp_policies_set,
    saml_context_forget,
    sp_metadata_xml,
)
from tenants.models import Tenant
from tests.conftest import OWNER_PASSWORD
from tests.e2e.conftest import LiveServer, PageProblems, Shot
from tests.sso.idp import TestIdP, make_keypair
from tests.sso.idp_server import start_idp_server

pytestmark = pytest.mark.e2e

CORP = "corp.test"
ALICE = "alice@corp.test"  # in "Portal Admins": mapped to admin
ADMIN_GROUP = "Portal Admins"
SESSION_COOKIE = settings.SESSION_COOKIE_NAME
TIMEOUT_MS = 15_000


def attrs_for_email(email: str) -> dict[str, list[str]]:
    """What the test IdP asserts: Okta-style names, alice in the admin group."""
    groups = [ADMIN_GROUP, "Everyone"] if email == ALICE else ["Everyone"]
    return {
        "email": [email],
        "firstName": ["Alice" if email == ALICE else "Bob"],
        "lastName": ["Doe"],
        "groups": groups,
    }


@dataclass
class SsoSite:
    tenant: Tenant
    host: str
    owner_email: str
    server: LiveServer
    idp: TestIdP
    idp_base: str
    entity_id: str
    acs_url: str
    sls_url: str
    trusted_fingerprint: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)

    def url(self, path: str = "/") -> str:
        return self.server.url(self.host, path)

    def origin(self) -> str:
        return self.server.url(self.host, "")


class _ServerErrors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.records.append(text)


@pytest.fixture(autouse=True)
def no_server_errors() -> Iterator[None]:
    """Fail on any 5xx the live server logs (with its traceback)."""
    handler = _ServerErrors()
    logger = logging.getLogger("django.request")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    assert not handler.records, "server errors:\n" + "\n".join(handler.records)


@pytest.fixture(scope="module")
def idp_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    folder = tmp_path_factory.mktemp("e2e-idp")
    return {
        "good": make_keypair(folder, "E2E Test IdP"),
        "rogue": make_keypair(folder, "E2E Rogue IdP"),
    }


@pytest.fixture
def sso_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Per-test switches for `sso_site` (indirect parametrisation)."""
    return dict(getattr(request, "param", {}))


@pytest.fixture
def sso_site(
    committed_tenant: Tenant,
    live_server_thread: LiveServer,
    idp_keys: dict[str, tuple[str, str]],
    sso_options: dict[str, Any],
) -> Iterator[SsoSite]:
    """The committed tenant connected to a test IdP served on 127.0.0.1.

    The SP URLs carry the live server's port (PORTAL_PUBLIC_PORT), so the
    SP metadata is taken after the port is set. `wrong_cert=True` trusts the
    "good" key from the metadata while the served IdP signs with "rogue"
    (same entityID and URLs): every Response is then `signature_invalid`.
    `post_binding=True` publishes only an HTTP-POST SSO endpoint, so the
    portal sends its AuthnRequest through its own auto-posting page.
    Requested before `browser_page`: ORM work must precede Playwright.
    """
    host = f"{committed_tenant.slug}.localhost"
    with override_settings(PORTAL_PUBLIC_PORT=str(live_server_thread.port)):
        saml_context_forget()
        with tenant_context(committed_tenant):
            sp_metadata = sp_metadata_xml()
            serving_keys = idp_keys[
                "rogue" if sso_options.get("wrong_cert") else "good"
            ]
            idp = TestIdP(sp_metadata, *serving_keys)
            idp_base, stop = start_idp_server(idp, attrs_for_email)
            try:
                trusted = TestIdP(sp_metadata, *idp_keys["good"], base_url=idp_base)
                bindings = (
                    (BINDING_HTTP_POST,)
                    if sso_options.get("post_binding")
                    else (BINDING_HTTP_REDIRECT,)
                )
                # The IdP lives on http://127.0.0.1, and the metadata parser
                # admits http URLs only under settings.DEBUG, which
                # pytest-django switches off: DEBUG for this one call only.
                with override_settings(DEBUG=True):
                    configured = idp_configure_from_metadata(
                        data=trusted.metadata(sso_bindings=bindings).encode(),
                        actor=None,
                    )
                idp_policies_set(
                    actor=None,
                    operator=True,
                    jit_enabled=True,
                    allowed_email_domains=[CORP],
                    preset="okta",
                    role_mapping_enabled=True,
                    allow_idp_initiated=bool(sso_options.get("idp_initiated")),
                )
                group_mappings_set(mappings=[(ADMIN_GROUP, "admin")], actor=None)
                fingerprint = configured.certificates.get().fingerprint
                origin = live_server_thread.url(host, "")
                site = SsoSite(
                    tenant=committed_tenant,
                    host=host,
                    owner_email=f"owner@{committed_tenant.slug}.test",
                    server=live_server_thread,
                    idp=idp,
                    idp_base=idp_base,
                    entity_id=f"{origin}/sso/saml/metadata/",
                    acs_url=f"{origin}/sso/saml/acs/",
                    sls_url=f"{origin}/sso/saml/sls/",
                    trusted_fingerprint=fingerprint,
                    events=idp.events,
                )
                assert sp_metadata.count(site.acs_url) == 1
            except BaseException:
                stop()
                raise
        use_public_schema()
        saml_context_forget()
        try:
            yield site
        finally:
            stop()
            saml_context_forget()
            use_public_schema()


# --- browser helpers -------------------------------------------------------------


def password_sign_in(page: Any, site: SsoSite) -> None:
    page.goto(site.url("/accounts/login/"))
    page.get_by_label("Email").fill(site.owner_email)
    page.get_by_label("Password").fill(OWNER_PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(site.url("/"))


def idp_sign_in(page: Any, site: SsoSite, email: str, shot: Shot | None = None) -> None:
    """On the IdP's login page: type the email, submit (auto-POST follows)."""
    page.wait_for_url(f"{site.idp_base}/sso**", timeout=TIMEOUT_MS)
    page.get_by_role("heading", name="Test IdP").wait_for()
    if shot is not None:
        shot(page, "sso_idp_login")
    page.get_by_label("Email").fill(email)
    page.get_by_role("button", name="Sign in").click()


def session_cookie(page: Any, site: SsoSite) -> str | None:
    for cookie in page.context.cookies(site.url("/")):
        if cookie["name"] == SESSION_COOKIE:
            return str(cookie["value"])
    return None


def me(page: Any, site: SsoSite) -> tuple[int, Any]:
    """GET /api/v1/me/ as a page load (Playwright's request context resolves
    names itself and knows nothing of *.localhost)."""
    response = page.goto(site.url("/api/v1/me/"))
    return response.status, response.json()


def assert_signed_out(page: Any, site: SsoSite) -> None:
    # Not via /api/v1/me/: a 401 document load is a console error in Chromium.
    page.goto(site.url("/members/"))
    assert "/accounts/login/" in page.url


@dataclass
class SeenRequest:
    method: str
    url: str
    cookie: str


def watch_portal_requests(page: Any, site: SsoSite) -> list[Any]:
    """Every request to the SAML endpoints (header reads happen later)."""
    seen: list[Any] = []

    def on_request(request: Any) -> None:
        if request.url.startswith(site.origin() + "/sso/saml/"):
            seen.append(request)

    page.on("request", on_request)
    return seen


def as_seen(requests: list[Any]) -> list[SeenRequest]:
    return [
        SeenRequest(r.method, r.url, r.all_headers().get("cookie", ""))
        for r in requests
    ]


def sso_sign_in(
    page: Any, site: SsoSite, email: str = ALICE, shot: Shot | None = None
) -> list[SeenRequest]:
    """SP-initiated from /members/; returns the SAML requests the browser sent."""
    requests = watch_portal_requests(page, site)
    page.goto(site.url("/members/"))
    assert "/accounts/login/" in page.url
    sso_button = page.get_by_role("link", name="Sign in with SSO")
    sso_button.wait_for()
    if shot is not None:
        shot(page, "sso_login")
    sso_button.click()
    idp_sign_in(page, site, email, shot)
    page.wait_for_url(site.url("/members/"), timeout=TIMEOUT_MS)
    return as_seen(requests)


# --- SP-initiated ------------------------------------------------------------------


def test_sp_initiated_login_in_chromium(
    sso_site: SsoSite, browser_page: tuple[Any, PageProblems], screenshot: Shot
) -> None:
    page, problems = browser_page
    seen = sso_sign_in(page, sso_site, shot=screenshot)

    page.get_by_role("heading", name="Members", level=1).wait_for()
    who = page.locator(".who").inner_text()
    assert ALICE in who
    assert "Admin" in who
    screenshot(page, "sso_landing")

    status, body = me(page, sso_site)
    assert status == 200, body
    assert body["email"] == ALICE
    assert body["role"] == "admin"
    assert body["auth_method"] == "saml"

    # What the browser itself sent (SSO-S12, SSO-S16): the login start set
    # the anonymous session; the IdP's cross-site POST carried no cookie;
    # the 303 to the finish step was a same-site GET that carried it.
    methods = [(r.method, urlsplit(r.url).path) for r in seen]
    assert methods == [
        ("GET", "/sso/saml/login/"),
        ("POST", "/sso/saml/acs/"),
        ("GET", "/sso/saml/finish/"),
    ], methods
    start, acs, finish = seen
    assert SESSION_COOKIE not in acs.cookie, acs.cookie
    assert f"{SESSION_COOKIE}=" in finish.cookie
    anonymous_key = SimpleCookie(finish.cookie)[SESSION_COOKIE].value
    signed_in_key = session_cookie(page, sso_site)
    assert signed_in_key
    assert signed_in_key != anonymous_key  # login() rotated the session key

    kinds = [event["kind"] for event in sso_site.events]
    assert kinds == ["authn_request", "response"]
    assert sso_site.events[1]["in_response_to"] == sso_site.events[0]["id"]
    assert sso_site.events[0]["acs"] == sso_site.acs_url
    problems.assert_clean()


@pytest.mark.parametrize("sso_options", [{"post_binding": True}], indirect=True)
def test_sp_initiated_login_post_binding_in_chromium(
    sso_site: SsoSite, browser_page: tuple[Any, PageProblems], screenshot: Shot
) -> None:
    """A POST-only IdP (some ADFS farms, SSO-F1): the portal's own page posts
    the AuthnRequest to the IdP (data-autosubmit, no inline script), which
    its CSP `form-action` must allow."""
    page, problems = browser_page
    seen = sso_sign_in(page, sso_site)
    assert ALICE in page.locator(".who").inner_text()
    assert [event.get("binding") for event in sso_site.events[:1]] == ["post"]
    assert [(r.method, urlsplit(r.url).path) for r in seen] == [
        ("GET", "/sso/saml/login/"),
        ("POST", "/sso/saml/acs/"),
        ("GET", "/sso/saml/finish/"),
    ]
    problems.assert_clean()


def test_sso_settings_and_test_connection(
    sso_site: SsoSite, browser_page: tuple[Any, PageProblems], screenshot: Shot
) -> None:
    page, problems = browser_page
    password_sign_in(page, sso_site)
    page.goto(sso_site.url("/sso/"))
    page.get_by_role("heading", name="Single sign-on (SAML 2.0)").wait_for()
    step1 = page.locator("#step-1").inner_text()
    assert sso_site.acs_url in step1
    assert sso_site.entity_id in step1
    assert sso_site.idp.sso_url in page.locator("#step-2").inner_text()
    screenshot(page, "sso_settings")

    page.get_by_role("button", name="Test connection").click()
    idp_sign_in(page, sso_site, ALICE)
    page.wait_for_url(sso_site.url("/sso/test/*/"), timeout=TIMEOUT_MS)
    heading = page.get_by_role("heading", level=1)
    assert "passed" in heading.inner_text()
    mapping = page.locator("section", has_text="What a real sign-in would do")
    assert ALICE in mapping.inner_text()
    assert "admin" in mapping.inner_text().lower()
    screenshot(page, "sso_test_passed")

    # Nobody was signed in: the owner is still the owner, by password.
    status, body = me(page, sso_site)
    assert status == 200
    assert body["email"] == sso_site.owner_email
    assert body["auth_method"] == "password"
    problems.assert_clean()


@pytest.mark.parametrize("sso_options", [{"wrong_cert": True}], indirect=True)
def test_test_connection_wrong_certificate(
    sso_site: SsoSite, browser_page: tuple[Any, PageProblems], screenshot: Shot
) -> None:
    """SSO-F14's failing case: the result names both fingerprints."""
    page, problems = browser_page
    password_sign_in(page, sso_site)
    page.goto(sso_site.url("/sso/"))
    page.get_by_role("button", name="Test connection").click()
    idp_sign_in(page, sso_site, ALICE)
    page.wait_for_url(sso_site.url("/sso/test/*/"), timeout=TIMEOUT_MS)
    assert "failed" in page.get_by_role("heading", level=1).inner_text()
    why = page.locator("section", has_text="Why it failed").inner_text()
    assert "signature_invalid" in why
    expected = sso_site.trusted_fingerprint.replace(":", "").lower()
    compact = why.replace(":", "").replace(" ", "").lower()
    assert expected[:16] in compact, why
    screenshot(page, "sso_test_failed")
    problems.assert_clean()


# --- single logout -----------------------------------------------------------------


def test_sp_initiated_logout_in_chromium(
    sso_site: SsoSite, browser_page: tuple[Any, PageProblems], screenshot: Shot
) -> None:
    page, problems = browser_page
    sso_sign_in(page, sso_site)
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(sso_site.url("/accounts/login/**"), timeout=TIMEOUT_MS)
    screenshot(page, "sso_logout_done")
    kinds = [event["kind"] for event in sso_site.events]
    assert kinds == ["authn_request", "response", "logout_request"], kinds
    logout = sso_site.events[-1]
    assert logout["name_id"] == ALICE
    assert logout["session_indexes"] == [sso_site.events[1]["session_index"]]
    assert page.get_by_text("You are signed out").count() >= 1
    assert_signed_out(page, sso_site)
    problems.assert_clean()


def test_idp_initiated_logout_in_chromium(
    sso_site: SsoSite, browser_page: tuple[Any, PageProblems], screenshot: Shot
) -> None:
    page, problems = browser_page
    sso_sign_in(page, sso_site)
    session_index = sso_site.events[1]["session_index"]
    query = urlencode(
        {"sls": sso_site.sls_url, "name_id": ALICE, "session_index": session_index}
    )
    page.goto(f"{sso_site.idp_base}/idp-logout?{query}")
    page.wait_for_url(f"{sso_site.idp_base}/slo?**", timeout=TIMEOUT_MS)
    page.get_by_role("heading", name="Signed out").wait_for()
    screenshot(page, "sso_idp_logout_done")
    answer = sso_site.events[-1]
    assert answer["kind"] == "logout_response"
    assert answer["signed"] is True
    assert answer["in_response_to"] == answer["expected_in_response_to"]
    assert answer["status"] == "urn:oasis:names:tc:SAML:2.0:status:Success"
    assert_signed_out(page, sso_site)
    problems.assert_clean()


# --- IdP-initiated, over plain HTTP -----------------------------------------------


class _FormReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form" and not self.action:
            self.action = values.get("action", "")
        if tag == "input" and values.get("name"):
            self.fields[values["name"]] = values.get("value", "")


@dataclass
class Reply:
    status: int
    location: str
    body: bytes


@dataclass
class HttpClient:
    """A tiny browser: one cookie jar, no redirects followed, loopback only."""

    cookies: dict[str, str] = field(default_factory=dict)

    def send(
        self,
        method: str,
        url: str,
        form: dict[str, str] | None = None,
        accept: str = "text/html",
    ) -> Reply:
        parts = urlsplit(url)
        assert parts.hostname in ("127.0.0.1",) or (parts.hostname or "").endswith(
            ".localhost"
        ), url
        headers = {"Host": parts.netloc, "Accept": accept}
        body = None
        if form is not None:
            body = urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if self.cookies and parts.hostname != "127.0.0.1":
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        connection = http.client.HTTPConnection("127.0.0.1", parts.port, timeout=20)
        try:
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            connection.request(method, target, body=body, headers=headers)
            reply = connection.getresponse()
            data = reply.read()
            if parts.hostname != "127.0.0.1":
                for header in reply.headers.get_all("Set-Cookie") or []:
                    jar: SimpleCookie = SimpleCookie()
                    jar.load(header)
                    for name, morsel in jar.items():
                        self.cookies[name] = morsel.value
            location = reply.getheader("Location") or ""
            return Reply(reply.status, urljoin(url, location) if location else "", data)
        finally:
            connection.close()


def idp_initiated(
    site: SsoSite, client: HttpClient, relay: str | None
) -> tuple[Reply, Reply]:
    """IdP's form → POST to the ACS → follow the 303; return both replies."""
    query = {"acs": site.acs_url, "sp": site.entity_id, "email": ALICE}
    if relay is not None:
        query["relay"] = relay
    form_page = client.send("GET", f"{site.idp_base}/idp-initiated?{urlencode(query)}")
    assert form_page.status == 200
    reader = _FormReader()
    reader.feed(form_page.body.decode())
    assert reader.action == site.acs_url
    assert "SAMLResponse" in reader.fields
    acs = client.send("POST", reader.action, reader.fields)
    assert acs.status == 303, acs.body[:500]
    assert acs.location.startswith(site.url("/sso/saml/finish/?t="))
    finish = client.send("GET", acs.location)
    return acs, finish


@pytest.mark.parametrize("sso_options", [{"idp_initiated": True}], indirect=True)
@pytest.mark.parametrize(
    ("relay", "landing"), [("/members/", "/members/"), (None, "/")]
)
def test_idp_initiated_login_over_http(
    sso_site: SsoSite, relay: str | None, landing: str
) -> None:
    client = HttpClient()
    _acs, finish = idp_initiated(sso_site, client, relay)
    assert finish.status == 302, finish.body[:500]
    assert finish.location == sso_site.url(landing)
    assert SESSION_COOKIE in client.cookies
    page = client.send("GET", finish.location)
    assert page.status == 200
    assert ALICE.encode() in page.body
    me_reply = client.send(
        "GET", sso_site.url("/api/v1/me/"), accept="application/json"
    )
    assert me_reply.status == 200
    assert json.loads(me_reply.body)["auth_method"] == "saml"
    with tenant_context(sso_site.tenant):
        member = Member.objects.get(email=ALICE)
        assert member.role == "admin"
        assert SsoLink.objects.filter(member=member).count() == 1
        assert SsoSession.objects.filter(
            session_key=client.cookies[SESSION_COOKIE]
        ).exists()
        assert AuditEvent.objects.filter(action="sso.login.succeeded").count() == 1
    use_public_schema()
    assert [event["in_response_to"] for event in sso_site.events] == [None]


def test_idp_initiated_refused_when_off_over_http(sso_site: SsoSite) -> None:
    """SSO-F8 off: 403 `idp_initiated_disabled`, no session cookie."""
    client = HttpClient()
    query = {"acs": sso_site.acs_url, "sp": sso_site.entity_id, "email": ALICE}
    form_page = client.send(
        "GET", f"{sso_site.idp_base}/idp-initiated?{urlencode(query)}"
    )
    reader = _FormReader()
    reader.feed(form_page.body.decode())
    acs = client.send("POST", reader.action, reader.fields)
    assert acs.status == 403
    assert b"idp_initiated_disabled" in acs.body
    assert client.cookies == {}
    with tenant_context(sso_site.tenant):
        assert not Member.objects.filter(email=ALICE).exists()
        assert not SsoLink.objects.exists()
        assert not SsoSession.objects.exists()
        failed = AuditEvent.objects.filter(action="sso.login.failed")
        assert [event.changes.get("reason") for event in failed] == [
            "idp_initiated_disabled"
        ]
    use_public_schema()
