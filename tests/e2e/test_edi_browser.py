"""The `/edi/` page in a real browser with a real worker (edi.md EDI-C1, P8).

Chromium drops a 10,000-row file on the drop zone, watches the upload bar
reach 100 % and the processing bar follow the pipeline on a real Celery
worker, reads the preview, applies it and downloads the results. A full
file that would deactivate most members is held, and approved. The usual
e2e guards stay on (loopback only, no console or page errors, no CSP
violation, no failed sub-resource). Screenshots go to
tests/e2e/screenshots/edi_*.png.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.conftest import OWNER_PASSWORD
from tests.e2e.conftest import SEEDED, PageProblems, Shot, Site
from tests.worker import RealWorker, WorkerBroker, running_worker, use_test_broker

pytestmark = pytest.mark.e2e

ROWS = 10_000
TIMEOUT_MS = 90_000
HEADER = "employee_id,email,first_name,last_name,department,seat\n"


@pytest.fixture
def worker() -> Iterator[tuple[WorkerBroker, RealWorker]]:
    with use_test_broker() as broker, running_worker(broker) as real:
        yield broker, real


def employees(n: int, start: int = 1) -> str:
    rows = "".join(
        f"X{i},person{i}@corp.test,First{i},Last{i},Sales,active\n"
        for i in range(start, start + n)
    )
    return HEADER + rows


def sign_in(page: Any, site: Site) -> None:
    page.goto(site.url("/edi/"))
    assert "/accounts/login/" in page.url
    page.get_by_label("Email").fill(site.owner_email)
    page.get_by_label("Password").fill(OWNER_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(site.url("/edi/"))


def drop_file(page: Any, name: str, content: str) -> None:
    """Drag a file onto the drop zone, as a person dragging from a folder."""
    transfer = page.evaluate_handle(
        """([name, content]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([content], name, {type: "text/csv"}));
            return transfer;
        }""",
        [name, content],
    )
    zone = page.locator("[data-dropzone]")
    zone.dispatch_event("dragenter", {"dataTransfer": transfer})
    zone.dispatch_event("dragover", {"dataTransfer": transfer})
    zone.dispatch_event("drop", {"dataTransfer": transfer})


def throttle_uploads(page: Any, bytes_per_second: int) -> Any:
    """Slow the browser's uploads so the bar can be seen moving."""
    session = page.context.new_cdp_session(page)
    session.send("Network.enable")
    session.send(
        "Network.emulateNetworkConditions",
        {
            "offline": False,
            "latency": 0,
            "downloadThroughput": -1,
            "uploadThroughput": bytes_per_second,
        },
    )
    return session


def unthrottle(session: Any) -> None:
    session.send(
        "Network.emulateNetworkConditions",
        {
            "offline": False,
            "latency": 0,
            "downloadThroughput": -1,
            "uploadThroughput": -1,
        },
    )


def wait_for_status(page: Any, status: str) -> None:
    page.locator(f".page-head .edi-status-{status}").wait_for(timeout=TIMEOUT_MS)


def test_drop_preview_apply_and_download_results(
    demo_site: Site,
    worker: tuple[WorkerBroker, RealWorker],
    browser_page: tuple[Any, PageProblems],
    screenshot: Shot,
) -> None:
    page, problems = browser_page
    sign_in(page, demo_site)
    page.get_by_role("heading", name="Employee data", level=1).wait_for()
    assert page.get_by_label(
        "Preview first (nothing changes until you apply)"
    ).is_checked()

    content = employees(ROWS)
    drop_file(page, "people-10k.csv", content)
    page.get_by_text("Chosen: people-10k.csv").wait_for()
    session = throttle_uploads(page, 256 * 1024)
    page.get_by_role("button", name="Upload").click()

    # The transfer's bar moves, then reaches 100 % and stays there while
    # the processing bar follows the worker.
    page.wait_for_function(
        "() => { const v = document.querySelector('[data-bar=upload]').value;"
        " return v > 10 && v < 90; }",
        timeout=TIMEOUT_MS,
    )
    screenshot(page, "edi_upload_progress")
    page.wait_for_function(
        "() => document.querySelector('[data-bar=upload]').value === 100",
        timeout=TIMEOUT_MS,
    )
    unthrottle(session)
    assert "100 %" in page.locator('[data-text="upload"]').inner_text()

    # The preview: the file page opens by itself once the file is validated.
    page.wait_for_url("**/edi/files/*/", timeout=TIMEOUT_MS)
    wait_for_status(page, "validated")
    page.get_by_text("Preview: nothing has changed yet.").wait_for()
    counts = page.locator(".edi-counts").first.inner_text()
    assert f"{ROWS:,}\nRows" in counts
    assert "New members" in counts
    assert page.locator("#sample-create tbody tr").count() == 50
    screenshot(page, "edi_preview")

    page.get_by_role("button", name="Apply", exact=True).click()
    page.get_by_text("Approved: the file is applied now.").wait_for()
    if page.locator("[data-edi-status-url]").count():
        screenshot(page, "edi_applying")
    wait_for_status(page, "completed")
    page.get_by_text("Every row's outcome is in the results CSV.").wait_for()
    created = page.locator(".edi-count", has_text="Created").inner_text()
    assert created.split()[0] == f"{ROWS:,}"
    screenshot(page, "edi_completed")

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download results CSV").click()
    data = Path(download_info.value.path()).read_bytes().decode("utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(data)))
    assert len(rows) == ROWS
    assert {row["outcome"] for row in rows} == {"created"}
    assert rows[0]["email"] == "person1@corp.test"
    problems.assert_clean()


def test_a_held_full_file_is_approved(
    demo_site: Site,
    worker: tuple[WorkerBroker, RealWorker],
    browser_page: tuple[Any, PageProblems],
    screenshot: Shot,
) -> None:
    page, problems = browser_page
    sign_in(page, demo_site)
    # A full file naming 10 of the demo members: the rest would go.
    content = HEADER + "".join(
        f"E{10000 + n},keep{n}@corp.test,Keep,{n},Sales,active\n" for n in range(10)
    )
    page.get_by_label("Mode").select_option("full")
    page.get_by_label("Preview first (nothing changes until you apply)").uncheck()
    drop_file(page, "full-hr.csv", content)
    page.get_by_role("button", name="Upload").click()

    page.wait_for_url("**/edi/files/*/", timeout=TIMEOUT_MS)
    wait_for_status(page, "held")
    banner = page.locator(".banner-warn").inner_text()
    assert "Held for approval: nothing has changed." in banner
    assert "It would deactivate" in banner
    assert page.locator("#sample-deactivate tbody tr").count() > 10
    screenshot(page, "edi_held")

    page.get_by_role("button", name="Approve and apply").click()
    wait_for_status(page, "completed")
    deactivated = page.locator(".edi-count", has_text="Deactivated").inner_text()
    assert int(deactivated.split()[0]) > SEEDED // 2
    page.get_by_text("Approved by").wait_for()
    problems.assert_clean()


def test_rejected_file_settings_and_history(
    demo_site: Site,
    worker: tuple[WorkerBroker, RealWorker],
    browser_page: tuple[Any, PageProblems],
    screenshot: Shot,
) -> None:
    page, problems = browser_page
    sign_in(page, demo_site)

    # An empty file is refused in the page, before anything is sent.
    drop_file(page, "empty.csv", "")
    page.get_by_role("button", name="Upload").click()
    page.locator(".form-errors").get_by_text("The file is empty.").wait_for()
    assert page.url == demo_site.url("/edi/")

    # A file without an email column: rejected with its code.
    drop_file(page, "export.csv", "name,department\nAda,Sales\nAlan,Research\n")
    page.get_by_role("button", name="Upload").click()
    page.wait_for_url("**/edi/files/*/", timeout=TIMEOUT_MS)
    wait_for_status(page, "rejected")
    assert "HEADER_MISSING_EMAIL" in page.locator(".edi-problems").inner_text()
    screenshot(page, "edi_rejected")

    # Settings: a key is refused with a reason, then one is added.
    page.get_by_role("link", name="← Employee data").click()
    page.get_by_role("link", name="Settings, SFTP and tokens").click()
    page.get_by_role("heading", name="SFTP drop box").wait_for()
    page.get_by_label("OpenSSH public key").fill("ssh-dss AAAAB3NzaC1kc3M= old@hr")
    page.get_by_role("button", name="Add key").click()
    page.get_by_text("DSA keys are refused.").first.wait_for()
    screenshot(page, "edi_settings_error")
    # The page with the form error answers 400, which Chromium logs.
    assert problems.console_errors == [
        "error: Failed to load resource: the server responded with a status "
        "of 400 (Bad Request)"
    ]
    problems.console_errors.clear()
    key = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        .decode()
        + " hr-system@corp"
    )
    page.get_by_label("OpenSSH public key").fill(key)
    page.get_by_role("button", name="Add key").click()
    page.get_by_text("Key “hr-system@corp” added").wait_for()

    # A token, shown once, then used over HTTPS.
    page.get_by_label("Token name").fill("Workday")
    page.get_by_role("button", name="Create token").click()
    page.get_by_text("Copy it now: it is shown only this once.").wait_for()
    secret = page.locator("#token-value").input_value()
    screenshot(page, "edi_token_created")
    assert secret.startswith("edi_")
    page.get_by_role("link", name="Done").click()
    page.get_by_role("heading", name="HTTPS tokens").wait_for()
    assert secret not in page.content()
    screenshot(page, "edi_settings")

    # An HR system's call over HTTPS (from the page: Chromium resolves
    # *.localhost, Playwright's own HTTP client does not).
    status = page.evaluate(
        """([token, body]) => fetch("/api/v1/edi/files/?mode=delta&dry_run=true", {
            method: "POST", credentials: "omit", body: body,
            headers: {"Authorization": "Bearer " + token, "Content-Type": "text/csv"}
        }).then((response) => response.status)""",
        [secret, employees(25)],
    )
    assert status == 202

    page.get_by_role("link", name="Files", exact=True).click()
    page.get_by_role("heading", name="Files received").wait_for()
    for _ in range(60):  # the list does not poll: look again until validated
        if page.locator("table.edi-files .edi-status-validated").count():
            break
        page.wait_for_timeout(500)
        page.reload()
    history = page.locator("table.edi-files").inner_text()
    assert "HTTPS" in history
    assert "token “Workday”" in history
    assert "Browser" in history
    assert "Rejected" in history
    screenshot(page, "edi_history")
    problems.assert_clean()
