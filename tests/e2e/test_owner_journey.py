"""An owner's journey in a real browser (PORTAL-18, -28, -30).

Every page is loaded by Chromium from a live server on loopback: requests to
any other host are blocked and fail the test, as do console errors, page
errors and Content-Security-Policy violations. Screenshots of each page go
to tests/e2e/screenshots/ for a human to look at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from portal.selectors.members import MEMBER_EXPORT_COLUMNS
from tests.conftest import OWNER_PASSWORD
from tests.e2e.conftest import SEEDED, PageProblems, Shot, Site

pytestmark = pytest.mark.e2e


def sign_in(page: Any, site: Site, shot: Shot | None = None) -> None:
    page.goto(site.url("/"))
    # Anonymous visitors land on the sign-in page with `next` kept.
    assert "/accounts/login/" in page.url
    if shot is not None:
        shot(page, "login")
    page.get_by_label("Email").fill(site.owner_email)
    page.get_by_label("Password").fill(OWNER_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(site.url("/"))


def test_owner_journey(
    demo_site: Site, browser_page: tuple[Any, PageProblems], screenshot: Shot
) -> None:
    page, problems = browser_page
    sign_in(page, demo_site, screenshot)

    # Dashboard: the seat card counts the seeded members plus the owner.
    page.get_by_role("heading", name="Dashboard", level=1).wait_for()
    seats = page.locator("section.card-seats")
    assert f"{SEEDED + 1} members in all" in seats.inner_text()
    assert page.get_by_role("heading", name="Recent activity").is_visible()
    screenshot(page, "dashboard")

    # Members: the list shows seeded rows and the export downloads CSV.
    page.get_by_role("navigation", name="Main").get_by_role(
        "link", name="Members"
    ).click()
    page.get_by_role("heading", name="Members", level=1).wait_for()
    rows = page.locator("table.data tbody tr")
    assert rows.count() >= 20
    assert f"{SEEDED + 1} matching" in page.locator(".page-head").inner_text()
    screenshot(page, "members")

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Export CSV").click()
    download = download_info.value
    assert download.suggested_filename == "members.csv"
    data = Path(download.path()).read_bytes()
    header = ",".join(f'"{column}"' for column in MEMBER_EXPORT_COLUMNS)
    assert data.startswith(b"\xef\xbb\xbf" + header.encode() + b"\r\n")
    # Every member, the owner included, is one line after the header.
    assert data.count(b"\r\n") == SEEDED + 2

    # Member detail, reached by clicking the first member's email.
    first = rows.first.locator("td a").first
    email = first.inner_text()
    first.click()
    page.get_by_text(email).first.wait_for()
    assert "/members/" in page.url
    screenshot(page, "member_detail")

    # Audit log: the seed and the export are there.
    page.get_by_role("navigation", name="Main").get_by_role(
        "link", name="Audit log"
    ).click()
    page.get_by_role("heading", name="Audit log", level=1).wait_for()
    log = page.locator("table.data").inner_text()
    assert "portal.member.exported" in log
    assert "portal.demo.seeded" in log
    screenshot(page, "audit_log")

    problems.assert_clean()


def test_audit_export_progress_live(
    demo_site: Site, browser_page: tuple[Any, PageProblems], screenshot: Shot
) -> None:
    """PORTAL-18: the job page follows a real worker to "Succeeded" in place."""
    from tests.worker import running_worker, use_test_broker

    page, problems = browser_page
    with use_test_broker() as broker, running_worker(broker, start=False) as worker:
        sign_in(page, demo_site)
        page.goto(demo_site.url("/audit/"))
        page.get_by_role("button", name="Export CSV").click()
        page.wait_for_url("**/jobs/*/")
        status = page.locator(".job-status [data-field=status]")
        assert status.inner_text() == "Queued"
        # A marker on the window survives only if the page is never reloaded.
        page.evaluate("window.__stayed = true")
        navigations: list[str] = []
        page.on("framenavigated", lambda frame: navigations.append(frame.url))

        # Only now does a worker exist to pick the job up.
        worker.start()
        status.filter(has_text="Succeeded").wait_for(timeout=30_000)

        assert page.evaluate("window.__stayed === true")
        assert navigations == []
        assert page.locator("progress").evaluate("bar => bar.value") == 100
        download_link = page.locator(".job-download a")
        download_link.wait_for(state="visible")
        screenshot(page, "job")

        with page.expect_download() as download_info:
            download_link.click()
        data = Path(download_info.value.path()).read_bytes()
        assert data.startswith(b"\xef\xbb\xbf")
        assert b"portal.audit.export_requested" in data
    problems.assert_clean()
