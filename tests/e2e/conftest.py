"""Real-browser fixtures: a live WSGI server and Debian's Chromium (PORTAL-30/28).

The server runs Django's WSGI handler in a thread of the test process
(Django's LiveServerThread: one connection per request thread, closed after
each request), so it sees the same settings (the test database, the test
password hasher) as the fixtures that committed the data. Chromium is driven
through Playwright's own protocol client; `playwright install` is never
needed because Debian's binary is used.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.contrib.staticfiles.handlers import StaticFilesHandler
from django.test.testcases import LiveServerThread

from portal.db import use_public_schema
from tests.conftest import ci_requires

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    # Chromium maps *.localhost to loopback already; this makes it explicit.
    "--host-resolver-rules=MAP *.localhost 127.0.0.1",
]
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "[::1]", "::1"}


def is_loopback(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in {"data", "blob", "about"}:
        return True
    host = (parts.hostname or "").lower()
    return host in LOOPBACK_HOSTS or host.endswith(".localhost")


@dataclass
class LiveServer:
    port: int

    def url(self, host: str, path: str = "/") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture
def live_server_thread(committed_tenant: Any) -> Iterator[LiveServer]:
    """Serve the app (and its static files) on 127.0.0.1:<free port>.

    Depends on `committed_tenant` so the server stops before the tenant's
    schema is dropped. pytest-django's `live_server` is not used: it
    flushes with TRUNCATE, which the append-only audit trigger refuses.
    """
    use_public_schema()
    thread = LiveServerThread("127.0.0.1", StaticFilesHandler)
    thread.daemon = True
    thread.start()
    thread.is_ready.wait(timeout=10)
    if thread.error is not None:
        raise thread.error
    try:
        yield LiveServer(port=thread.port)
    finally:
        thread.terminate()


@pytest.fixture
def playwright_browser(live_server_thread: LiveServer) -> Iterator[Any]:
    """A headless Chromium per test (fails on CI when it is missing).

    Playwright's sync API leaves an event loop marked running in this
    thread, which makes Django refuse ORM calls here. So the browser starts
    after the server and its committed data (fixtures this one depends on)
    and stops before they are torn down; test modules do their ORM work in
    fixtures requested before this one.
    """
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        ci_requires("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - dev extra missing
        ci_requires("playwright")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class PageProblems:
    """What the browser complained about; a clean page leaves all empty."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    failed_responses: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert not self.blocked, f"non-loopback requests: {self.blocked}"
        assert not self.page_errors, f"page errors: {self.page_errors}"
        assert not self.console_errors, f"console errors: {self.console_errors}"
        assert not self.failed_responses, f"failed responses: {self.failed_responses}"


# Reports Content-Security-Policy violations even where Chromium would only
# log a warning (e.g. report-only), so the console listener sees each one.
CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", function (e) {
  console.error("Content Security Policy violation: " + e.violatedDirective
    + " blocked " + e.blockedURI);
});
"""


@pytest.fixture
def browser_page(playwright_browser: Any) -> Iterator[tuple[Any, PageProblems]]:
    """A fresh context and page: loopback only, console and CSP watched."""
    context = playwright_browser.new_context(
        accept_downloads=True, viewport={"width": 1280, "height": 900}
    )
    problems = PageProblems()

    def route(route: Any) -> None:
        if is_loopback(route.request.url):
            route.continue_()
        else:
            problems.blocked.append(route.request.url)
            route.abort()

    def on_console(message: Any) -> None:
        text = message.text
        if message.type == "error" or "Content Security Policy" in text:
            problems.console_errors.append(f"{message.type}: {text}")

    def on_response(response: Any) -> None:
        # 4xx/5xx on a sub-resource (CSS, script, API poll) is a defect.
        if response.status >= 400 and response.request.resource_type != "document":
            problems.failed_responses.append(f"{response.status} {response.url}")

    context.route("**/*", route)
    context.add_init_script(CSP_LISTENER)
    page = context.new_page()
    page.on("console", on_console)
    page.on("pageerror", lambda exc: problems.page_errors.append(str(exc)))
    page.on("response", on_response)
    try:
        yield page, problems
    finally:
        context.close()


Shot = Callable[[Any, str], Path]


@pytest.fixture
def screenshot() -> Shot:
    """Save a full-page screenshot as tests/e2e/screenshots/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(page: Any, name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


SEEDED = 60


@dataclass
class Site:
    host: str
    owner_email: str
    server: LiveServer

    def url(self, path: str = "/") -> str:
        return self.server.url(self.host, path)


@pytest.fixture
def demo_site(committed_tenant: Any, live_server_thread: LiveServer) -> Site:
    """The committed tenant with 60 demo members (EDI-managed), served live.

    Requested before `browser_page`: ORM work must happen before Playwright
    starts.
    """
    from django_tenants.utils import tenant_context

    from portal.services.demo import demo_members_seed

    slug = committed_tenant.slug
    with tenant_context(committed_tenant):
        demo_members_seed(count=SEEDED, domain=f"{slug}.test")
    use_public_schema()
    return Site(
        host=f"{slug}.localhost",
        owner_email=f"owner@{slug}.test",
        server=live_server_thread,
    )
