"""Sweeps on the web page, in a real headless Chromium against the real stack (the shared one):
the sweep form, the live grid of a sweep, its cancel, and a finished job's timelapse. Skipped,
saying what is missing, where Chromium, chromedriver or Selenium is not installed."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.browser import CHROMEDRIVER, CHROMIUM
from tests.services import Service

pytestmark = pytest.mark.browser

_missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
if _missing:
    pytest.skip(f"no headless browser: {', '.join(_missing)} missing", allow_module_level=True)
pytest.importorskip("selenium.webdriver", reason="selenium is not installed")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

from tests.api.browser import headless_chromium  # noqa: E402
from tests.api.test_browser import (  # noqa: E402
    COFFEE,
    LONG,
    SCREAM,
    STARRY,
    Console,
    by_testid,
    image_loaded,
    job_ids,
    open_form,
    set_param,
    text_of,
    wait,
)

SMALL = {"iterations": "4", "height": "32", "width": "32"}


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    browser = headless_chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def console(driver: WebDriver) -> Iterator[Console]:
    """Fails the test if the page logged any SEVERE entry it did not allow."""
    watcher = Console(driver)
    yield watcher
    assert watcher.severe() == [], "errors in the browser console"


def sweep_id_in_url(driver: WebDriver) -> str | None:
    match = re.search(r"/#/sweeps/([0-9a-f]+)$", driver.current_url)
    return match.group(1) if match else None


def cells(driver: WebDriver) -> list[dict[str, Any]]:
    """Each cell of the grid: its status, label, link, which picture it shows and whether it loaded."""
    found: list[dict[str, Any]] = driver.execute_script("""
        return [...document.querySelectorAll("[data-testid='sweep-cell']")].map((a) => {
            const img = a.querySelector("img");
            return {
                status: a.dataset.status, job: a.dataset.job, image: a.dataset.image,
                href: a.getAttribute("href"), label: a.querySelector(".cell-label").textContent,
                src: img.getAttribute("src"), shown: !img.hidden,
                loaded: Boolean(img.getAttribute("src") && img.complete && img.naturalWidth > 0),
            };
        });
    """)
    return found


def succeeded_cells(driver: WebDriver) -> list[dict[str, Any]] | None:
    """The cells once every one has succeeded and shows its loaded result; None until then."""
    found = cells(driver)
    return found if all(c["status"] == "succeeded" and c["loaded"] for c in found) else None


def fill_images(driver: WebDriver, styles: int = 1) -> None:
    by_testid(driver, "content-input").send_keys(str(COFFEE))
    by_testid(driver, "style-input").send_keys("\n".join(str(s) for s in [STARRY, SCREAM][:styles]))


def open_sweep_part(driver: WebDriver) -> None:
    driver.find_element(By.CSS_SELECTOR, "details.sweep > summary").click()


def sweep_of(client: httpx.Client, sweep_id: str) -> dict[str, Any]:
    answer = client.get(f"/sweeps/{sweep_id}")
    assert answer.status_code == 200, answer.text
    sweep: dict[str, Any] = answer.json()
    return sweep


def test_a_sweep_submitted_through_the_page_fills_its_grid_and_its_jobs_offer_a_timelapse(
    driver: WebDriver, service: Service, client: httpx.Client, console: Console
) -> None:
    open_form(driver, service)
    fill_images(driver)
    for name, value in SMALL.items():
        set_param(driver, name, value)
    open_sweep_part(driver)
    Select(by_testid(driver, "sweep-axis-0-name")).select_by_value("style_weight")
    by_testid(driver, "sweep-axis-0-values").send_keys("100, 10000")
    by_testid(driver, "submit-sweep").click()

    sweep_id = wait(driver, sweep_id_in_url, what="the page did not go to the sweep's URL")
    wait(driver, lambda d: len(cells(d)) == 2, what="the grid has no two cells")
    finished = wait(driver, succeeded_cells, what="the grid did not fill in with two results")
    assert [c["label"] for c in finished] == ["style weight = 100", "style weight = 10000"]
    assert all(c["image"] == "result" and c["src"] == f"/jobs/{c['job']}/result" for c in finished), finished
    wait(driver, lambda d: text_of(d, "sweep-status") == "finished", what="the sweep did not finish")
    rows = driver.find_elements(By.CSS_SELECTOR, "[data-testid='sweep-grid'] tbody th[scope='row']")
    assert [row.text for row in rows] == ["style weight = 100", "style weight = 10000"]  # the first axis: rows
    assert by_testid(driver, "sweep-cancel").get_attribute("disabled") is not None
    assert by_testid(driver, "sweep-sheet").get_attribute("href") == f"{service.url}/sweeps/{sweep_id}/sheet"
    assert "2 succeeded" in text_of(driver, "sweep-counts")
    assert text_of(driver, "error") == ""

    # What the page sent: the form's parameters as the base, one job per value of the axis.
    sweep = sweep_of(client, sweep_id)
    assert sweep["axes"][0]["name"] == "style_weight" and sweep["axes"][0]["values"] == [100, 10000]
    assert {c["id"] for c in sweep["jobs"]} == {c["job"] for c in finished}
    for cell in sweep["jobs"]:
        params = client.get(f"/jobs/{cell['id']}").json()["params"]
        assert (params["iterations"], params["height"], params["width"]) == (4, 32, 32)
        assert params["style_weight"] == cell["values"]["style_weight"]

    # A cell opens its job, whose page offers the timelapse of its snapshots now that it has ended.
    first = finished[0]["job"]
    driver.find_element(By.CSS_SELECTOR, f"[data-testid='sweep-cell'][data-job='{first}']").click()
    wait(driver, lambda d: text_of(d, "status") == "succeeded", what="the cell's job page was not shown")
    timelapse = by_testid(driver, "timelapse")
    assert timelapse.is_displayed()
    assert not by_testid(driver, "timelapse-image").get_attribute("src")  # made only when asked for
    timelapse.find_element(By.TAG_NAME, "summary").click()
    wait(driver, lambda d: image_loaded(d, "timelapse-image"), what="the timelapse did not load")
    assert by_testid(driver, "timelapse-image").get_attribute("src") == f"{service.url}/jobs/{first}/timelapse"
    assert by_testid(driver, "timelapse-link").get_attribute("href") == f"{service.url}/jobs/{first}/timelapse"
    # A job whose view names its sweep links back to the grid.
    back = by_testid(driver, "job-sweep")
    if client.get(f"/jobs/{first}").json().get("sweep") != sweep_id:
        assert not back.is_displayed()
        return
    assert back.is_displayed() and back.get_attribute("href") == f"{service.url}/#/sweeps/{sweep_id}"
    back.click()
    wait(driver, lambda d: sweep_id_in_url(d) == sweep_id and len(cells(d)) == 2, what="back to the grid")


def test_a_running_job_offers_no_timelapse_until_it_ends(
    driver: WebDriver, service: Service, client: httpx.Client, console: Console
) -> None:
    files = [("content", (COFFEE.name, COFFEE.read_bytes())), ("style", (STARRY.name, STARRY.read_bytes()))]
    job = client.post("/jobs", files=files, data={"params": json.dumps(LONG)}).json()
    try:
        driver.get(f"{service.url}/#/jobs/{job['id']}")
        wait(driver, lambda d: text_of(d, "status") == "running", what="the job did not run")
        wait(driver, lambda d: image_loaded(d, "snapshot"), what="no snapshot was shown")
        assert not by_testid(driver, "timelapse").is_displayed()
        by_testid(driver, "cancel").click()
        wait(driver, lambda d: text_of(d, "status") == "canceled", what="the job was not canceled")
        wait(driver, lambda d: by_testid(d, "timelapse").is_displayed(), what="no timelapse once it ended")
    finally:
        client.post(f"/jobs/{job['id']}/cancel")


def test_a_running_sweep_shows_its_snapshots_live_and_is_canceled_from_a_narrow_page(
    driver: WebDriver, service: Service, client: httpx.Client, console: Console
) -> None:
    files = [("content", (COFFEE.name, COFFEE.read_bytes()))]
    files += [("style", (s.name, s.read_bytes())) for s in (STARRY, SCREAM)]
    data = {"params": json.dumps(LONG), "grid": json.dumps({"style_weight": [10, 1000]}), "each_style": "true"}
    answer = client.post("/sweeps", files=files, data=data)
    assert answer.status_code == 202, answer.text
    sweep_id = answer.json()["id"]
    narrow = {"width": 380, "height": 800, "deviceScaleFactor": 1, "mobile": True}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", narrow)
    try:
        driver.get(f"{service.url}/#/sweeps/{sweep_id}")
        wait(driver, lambda d: len(cells(d)) == 4, what="the grid has no four cells")
        labels = [c["label"] for c in cells(driver)]
        assert labels[0].startswith("style weight = 10, style = ") and STARRY.name in labels[0], labels
        heads = driver.find_elements(By.CSS_SELECTOR, "[data-testid='sweep-grid'] thead th[scope='col']")
        assert [h.get_attribute("textContent") for h in heads] == [f"style = {STARRY.name}", f"style = {SCREAM.name}"]
        wait(
            driver,
            lambda d: any(c["status"] == "running" and c["image"] == "snapshot" and c["loaded"] for c in cells(d)),
            what="no running cell showed its snapshot",
        )
        assert text_of(driver, "sweep-status") == "running"
        # The grid scrolls sideways in its own box; the page itself does not.
        page = "const page = document.documentElement; return [page.scrollWidth, page.clientWidth]"
        scrolled, visible = driver.execute_script(page)
        assert scrolled <= visible == narrow["width"]
        by_testid(driver, "sweep-cancel").click()
        wait(driver, lambda d: text_of(d, "sweep-status") == "canceled", what="the sweep was not canceled")
        wait(driver, lambda d: all(c["status"] == "canceled" for c in cells(d)), what="cells still run")
        assert by_testid(driver, "sweep-cancel").get_attribute("disabled") is not None
        assert text_of(driver, "error") == ""
    finally:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**narrow, "width": 1280, "mobile": False})
        client.post(f"/sweeps/{sweep_id}/cancel")
    assert {job["status"] for job in sweep_of(client, sweep_id)["jobs"]} == {"canceled"}


def test_a_sweep_without_an_axis_or_with_a_bad_one_says_why_next_to_it(
    driver: WebDriver, service: Service, client: httpx.Client, console: Console
) -> None:
    console.allow_failed_request(f"{service.url}/sweeps", 422)  # the refused sweep below, on purpose
    before = job_ids(client)
    open_form(driver, service)
    fill_images(driver)
    set_param(driver, "iterations", "4")
    open_sweep_part(driver)
    by_testid(driver, "submit-sweep").click()  # no axis: refused before uploading
    wait(driver, lambda d: "choose a parameter" in text_of(d, "error"), what="a sweep without an axis went on")
    assert driver.find_element(By.CSS_SELECTOR, ".sweep-error").is_displayed()

    Select(by_testid(driver, "sweep-axis-0-name")).select_by_value("iterations")
    values = by_testid(driver, "sweep-axis-0-values")
    values.send_keys("4, many")  # not a number: refused before uploading
    by_testid(driver, "submit-sweep").click()
    wait(driver, lambda d: "many" in text_of(d, "error"), what="a value that is not a number went on")
    assert values.get_attribute("aria-invalid") == "true"
    assert "many" in driver.find_element(By.ID, "sweep-axis-0-error").text

    values.clear()
    values.send_keys("4, 20001")  # past the maximum: the server says so, next to the axis
    by_testid(driver, "submit-sweep").click()
    wait(driver, lambda d: "20000" in text_of(d, "error"), what="the server's problem was not shown")
    axis_error = driver.find_element(By.ID, "sweep-axis-0-error")
    assert axis_error.is_displayed() and "20000" in axis_error.text, text_of(driver, "error")
    assert sweep_id_in_url(driver) is None
    assert job_ids(client) == before  # nothing was queued
