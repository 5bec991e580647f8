"""The web page at `/` in a real headless Chromium (Selenium), against the real stack: redis-server,
a Celery worker and uvicorn (the shared stack). Skipped, saying what is missing, where Chromium,
chromedriver or Selenium is not installed."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.browser import CHROMEDRIVER, CHROMIUM
from tests.conftest import SAMPLES
from tests.services import HANG, Service, is_final, poll, submit

pytestmark = pytest.mark.browser

_missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
if _missing:
    pytest.skip(f"no headless browser: {', '.join(_missing)} missing", allow_module_level=True)
pytest.importorskip("selenium.webdriver", reason="selenium is not installed")

from selenium.common.exceptions import JavascriptException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from tests.api.browser import headless_chromium  # noqa: E402

COFFEE = SAMPLES / "coffee.png"
STARRY = SAMPLES / "starry_night.jpg"
SCREAM = SAMPLES / "the_scream.jpg"
LONG = {"iterations": 20000, "height": 32, "width": 32}  # runs until canceled
WAIT = HANG  # seconds, the ceiling of every wait for the page: only a hang reaches it


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    browser = headless_chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield browser
    finally:
        browser.quit()


class Console:
    """The browser's console during one test; `allow` names an error the test causes on purpose."""

    def __init__(self, driver: WebDriver) -> None:
        self.driver = driver
        self.allowed: list[str] = []
        driver.get_log("browser")  # drop what came before this test

    def allow(self, pattern: str) -> None:
        self.allowed.append(pattern)

    def allow_failed_request(self, url: str, status: int) -> None:
        """Chrome logs every answer >= 400 as a SEVERE "Failed to load resource" entry, also the
        ones a test provokes on purpose: this allows exactly that URL and status."""
        self.allow(rf"^{re.escape(url)} - Failed to load resource: the server responded with a status of {status} ")

    def severe(self) -> list[dict[str, Any]]:
        entries = [e for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]
        return [e for e in entries if not any(re.search(p, e["message"]) for p in self.allowed)]


@pytest.fixture
def console(driver: WebDriver) -> Iterator[Console]:
    """Fails the test if the page logged any SEVERE entry it did not allow."""
    watcher = Console(driver)
    yield watcher
    assert watcher.severe() == [], "errors in the browser console"


def wait(driver: WebDriver, condition: Callable[[WebDriver], Any], timeout: float = WAIT, what: str = "") -> Any:
    waiter = WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException])
    return waiter.until(condition, what)


def by_testid(driver: WebDriver, testid: str) -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, f"[data-testid='{testid}']")


def text_of(driver: WebDriver, testid: str) -> str:
    return by_testid(driver, testid).get_attribute("textContent") or ""


def chart_points(driver: WebDriver) -> int:
    return int(driver.find_element(By.ID, "loss-chart").get_attribute("data-points") or 0)


def image_loaded(driver: WebDriver, testid: str) -> bool:
    return driver.execute_script(
        "const img = document.querySelector(`[data-testid='${arguments[0]}']`);"
        "return Boolean(img && img.getAttribute('src') && img.complete && img.naturalWidth > 0);",
        testid,
    )


def open_form(driver: WebDriver, service: Service) -> None:
    """The form page, once it has been built from GET /parameters."""
    driver.get(f"{service.url}/")
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid='param-iterations']"), what="no form")


def set_param(driver: WebDriver, name: str, value: str) -> None:
    field = by_testid(driver, f"param-{name}")
    field.clear()
    field.send_keys(value)


def job_id_in_url(driver: WebDriver) -> str | None:
    match = re.search(r"/#/jobs/([0-9a-f]+)$", driver.current_url)
    return match.group(1) if match else None


def job_ids(client: httpx.Client) -> list[str]:
    return [job["id"] for job in client.get("/jobs", params={"limit": 100}).json()["items"]]


def test_a_job_submitted_through_the_page_runs_live_to_its_result(
    driver: WebDriver, service: Service, client: httpx.Client, console: Console
) -> None:
    open_form(driver, service)
    iterations = by_testid(driver, "param-iterations")
    schema = client.get("/parameters").json()["parameters"]["properties"]
    assert iterations.get_attribute("value") == str(schema["iterations"]["default"]) == "2500"
    assert iterations.get_attribute("max") == str(schema["iterations"]["maximum"]) == "20000"
    assert by_testid(driver, "param-tv_weight").get_attribute("type") == "number"  # an advanced one
    assert by_testid(driver, "param-init").tag_name == "select"
    assert by_testid(driver, "param-keep_aspect").get_attribute("type") == "checkbox"
    assert by_testid(driver, "param-seed").get_attribute("value") == ""  # nullable: empty is null
    assert not driver.find_elements(By.CSS_SELECTOR, "[data-testid='param-style_blend_weights']")

    by_testid(driver, "content-input").send_keys(str(COFFEE))
    by_testid(driver, "style-input").send_keys("\n".join([str(STARRY), str(SCREAM)]))
    assert len(driver.find_elements(By.CSS_SELECTOR, ".style-picker .thumb img")) == 2
    assert len(driver.find_elements(By.CSS_SELECTOR, ".content-picker .thumb img")) == 1
    # Long enough (several seconds even on a fast machine) for the page to see it run.
    for name, value in {"iterations": "300", "height": "32", "width": "32"}.items():
        set_param(driver, name, value)
    driver.find_element(By.CSS_SELECTOR, "details.advanced > summary").click()
    set_param(driver, "snapshot_every", "40")  # not its default (50): proves the advanced inputs are sent

    # Record every snapshot URL and progress value the page shows, however fast they come.
    driver.execute_script("""
        window.seen = {snapshots: [], progress: []};
        const img = document.querySelector("[data-testid='snapshot']");
        const bar = document.querySelector("[data-testid='progress']");
        new MutationObserver(() => window.seen.snapshots.push(img.getAttribute("src")))
            .observe(img, {attributes: true, attributeFilter: ["src"]});
        new MutationObserver(() => window.seen.progress.push(bar.value))
            .observe(bar, {attributes: true, attributeFilter: ["value"]});
    """)
    by_testid(driver, "submit").click()

    job_id = wait(driver, job_id_in_url, what="the page did not go to the job's URL")
    wait(driver, lambda d: text_of(d, "status") == "succeeded", what="the job did not succeed")
    wait(driver, lambda d: image_loaded(d, "result"), what="the result image did not load")
    seen = driver.execute_script("return window.seen")
    assert len(set(seen["snapshots"])) >= 2, seen
    assert all(f"/jobs/{job_id}/snapshots/" in url for url in seen["snapshots"])
    assert len(set(seen["progress"])) >= 2 and seen["progress"] == sorted(seen["progress"]), seen
    assert len(driver.find_elements(By.CSS_SELECTOR, "[data-testid='snapshot']")) == 1  # replaced, not added
    assert by_testid(driver, "progress").get_attribute("value") == "300"
    assert wait(driver, lambda d: chart_points(d) > 1, what="the loss chart stayed empty")
    assert by_testid(driver, "cancel").get_attribute("disabled") is not None
    assert text_of(driver, "error") == ""
    download = driver.find_element(By.CSS_SELECTOR, "a[download]")
    assert download.get_attribute("href") == f"{service.url}/jobs/{job_id}/result"
    assert "random" in driver.find_element(By.ID, "job-weights").text

    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "succeeded"
    assert {k: job["params"][k] for k in ("iterations", "height", "width", "snapshot_every")} == {
        "iterations": 300,
        "height": 32,
        "width": 32,
        "snapshot_every": 40,
    }
    assert job["params"]["style_blend_weights"] is None  # no weight was changed: not sent


def test_a_finished_job_opened_directly_or_reloaded_shows_its_result_and_whole_history(
    driver: WebDriver, service: Service, client: httpx.Client, console: Console
) -> None:
    job = submit(client, COFFEE, [STARRY], {"iterations": 40, "height": 32, "width": 32, "snapshot_every": 20}).json()
    assert poll(client, job["id"], is_final, timeout=WAIT)["status"] == "succeeded", service.logs()
    history = len(client.get(f"/jobs/{job['id']}/losses").json()["iteration"])
    assert history > 1

    driver.get("about:blank")  # a new document, not a hash change of the current one
    driver.get(f"{service.url}/#/jobs/{job['id']}")
    for _ in range(2):
        wait(driver, lambda d: text_of(d, "status") == "succeeded", what="the finished job was not shown")
        wait(driver, lambda d: image_loaded(d, "result"), what="the result image did not load")
        wait(driver, lambda d: chart_points(d) == history, what="the chart lacks part of the history")
        assert by_testid(driver, "progress").get_attribute("value") == "40"
        driver.refresh()

    # The form page lists it among the recent jobs, with a thumbnail, linking to its page.
    driver.get(f"{service.url}/")
    link = wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f"a[href='#/jobs/{job['id']}']"))[0]
    assert "succeeded" in link.text
    assert link.find_elements(By.TAG_NAME, "img")
    link.click()
    wait(driver, lambda d: job_id_in_url(d) == job["id"] and text_of(d, "status") == "succeeded")


def test_a_running_job_opened_mid_way_shows_its_history_and_is_canceled_from_the_page(
    driver: WebDriver, service: Service, client: httpx.Client, console: Console
) -> None:
    job = submit(client, COFFEE, [STARRY], LONG).json()
    try:
        poll(client, job["id"], lambda j: j["status"] == "running" and j["progress"]["iteration"] >= 10, WAIT)
        before = len(client.get(f"/jobs/{job['id']}/losses").json()["iteration"])
        driver.get(f"{service.url}/#/jobs/{job['id']}")
        wait(driver, lambda d: text_of(d, "status") == "running", what="the running job was not shown")
        assert wait(driver, lambda d: chart_points(d) >= max(before, 2), what="the history was not loaded")
        assert by_testid(driver, "cancel").is_enabled()
        by_testid(driver, "cancel").click()
        wait(driver, lambda d: text_of(d, "status") == "canceled", what="the job was not canceled")
        assert by_testid(driver, "cancel").get_attribute("disabled") is not None
        assert text_of(driver, "error") == ""
        assert not by_testid(driver, "result").is_displayed()
    finally:
        client.post(f"/jobs/{job['id']}/cancel")
    assert client.get(f"/jobs/{job['id']}").json()["status"] == "canceled"


def test_a_page_without_event_source_follows_the_job_by_polling(
    driver: WebDriver, service: Service, client: httpx.Client, console: Console
) -> None:
    script = driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": "delete window.EventSource;"})
    try:
        job = submit(client, COFFEE, [STARRY], {"iterations": 40, "height": 32, "width": 32, "snapshot_every": 20})
        driver.get("about:blank")
        driver.get(f"{service.url}/#/jobs/{job.json()['id']}")
        assert driver.execute_script("return typeof window.EventSource") == "undefined"
        wait(driver, lambda d: text_of(d, "status") == "succeeded", what="polling did not follow the job")
        wait(driver, lambda d: image_loaded(d, "result"), what="the result image did not load")
        assert chart_points(driver) > 1
    finally:
        driver.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": script["identifier"]})


def test_bad_submissions_show_the_problem_next_to_its_cause(
    driver: WebDriver, service: Service, client: httpx.Client, console: Console, tmp_path: Path
) -> None:
    console.allow_failed_request(f"{service.url}/jobs", 422)  # the refused submissions below, on purpose
    console.allow_failed_request(f"{service.url}/jobs", 415)
    before = job_ids(client)
    open_form(driver, service)
    by_testid(driver, "content-input").send_keys(str(COFFEE))
    by_testid(driver, "style-input").send_keys(str(STARRY))
    # Past the maximum: the browser would only mark it :invalid; the server's answer is what shows.
    driver.execute_script("arguments[0].value = '20001'", by_testid(driver, "param-iterations"))
    by_testid(driver, "submit").click()
    error = wait(driver, lambda d: text_of(d, "error"), what="no error was shown")
    assert "params.iterations" in error and "20000" in error
    field_error = driver.find_element(By.CSS_SELECTOR, "[data-param='iterations'] .field-error")
    assert field_error.is_displayed() and "20000" in field_error.text
    assert by_testid(driver, "param-iterations").get_attribute("aria-invalid") == "true"
    assert job_id_in_url(driver) is None

    # Not an image as content: 415, shown next to the content picker.
    set_param(driver, "iterations", "10")
    text = tmp_path / "notes.txt"
    text.write_text("plain text, not an image")
    by_testid(driver, "content-input").send_keys(str(text))
    by_testid(driver, "submit").click()
    wait(driver, lambda d: "content" in text_of(d, "error"), what="the 415 problem was not shown")
    assert not driver.find_element(By.CSS_SELECTOR, "[data-param='iterations'] .field-error").is_displayed()
    content_error = driver.find_element(By.CSS_SELECTOR, ".content-picker > .field-error")
    assert content_error.is_displayed() and "image" in content_error.text
    assert job_id_in_url(driver) is None

    # Checked before uploading: no style image.
    driver.find_element(By.CSS_SELECTOR, ".style-picker .thumb .remove").click()
    by_testid(driver, "submit").click()
    style_error = driver.find_element(By.CSS_SELECTOR, ".style-picker > .field-error")
    wait(driver, lambda d: style_error.is_displayed(), what="a missing style image was not flagged")
    assert "style" in text_of(driver, "error")
    assert job_ids(client) == before  # nothing was queued


def test_an_unknown_job_says_so(driver: WebDriver, service: Service, console: Console) -> None:
    unknown = "0" * 32
    console.allow_failed_request(f"{service.url}/jobs/{unknown}", 404)  # on purpose
    driver.get(f"{service.url}/#/jobs/{unknown}")
    wait(driver, lambda d: "no such job" in text_of(d, "error"), what="the 404 problem was not shown")
    assert text_of(driver, "status") == ""
    assert by_testid(driver, "cancel").get_attribute("disabled") is not None


def other_hosts(driver: WebDriver, service: Service) -> list[str]:
    """Every resource the page asked for from anywhere but the service."""
    try:
        urls = driver.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
    except JavascriptException:  # pragma: no cover - a page without the Performance API
        return []
    return [url for url in urls if not url.startswith((service.url, "data:", "blob:"))]


def test_the_api_docs_render_offline(driver: WebDriver, service: Service, console: Console) -> None:
    driver.get(f"{service.url}/docs")
    title = wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .info .title"), what="no Swagger UI")
    assert "neural-style-service" in title[0].text
    wait(driver, lambda d: d.find_elements(By.ID, "operations-jobs-submit_job"), what="no operations listed")
    assert other_hosts(driver, service) == []
    assert console.severe() == []

    # ReDoc's bundle links its "Redocly" logo from cdn.redoc.ly; the page's Content-Security-Policy
    # blocks it (nothing loads from another host), as being offline would.
    console.allow(r"^https://cdn\.redoc\.ly/\S+ - Failed to load resource: net::")
    console.allow(r"/redoc - Loading the image 'https://cdn\.redoc\.ly/\S+' violates the following Content Security")
    driver.get(f"{service.url}/redoc")
    heading = wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".api-info h1"), what="no ReDoc")
    assert "neural-style-service" in heading[0].text
    wait(driver, lambda d: "submit_job" in d.page_source or "Queue a style transfer job" in d.page_source)
    assert [url for url in other_hosts(driver, service) if not url.startswith("https://cdn.redoc.ly/")] == []
