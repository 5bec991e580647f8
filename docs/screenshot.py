"""Make docs/page.png: the web page following a job mid-way, from a real service.

Run by hand from the repository root (it takes a minute or two on a CPU):

    PYTHONPATH=. .venv/bin/python docs/screenshot.py

It starts Redis, one worker and the API (tests.services.serve), submits a job through the page
in headless Chromium, waits until the job has at least three snapshots and is still running,
and saves a screenshot of the job view. Without ImageNet weights on this machine the worker
uses random ones (the page says so); pass `--weights imagenet` where they are available.
"""

from __future__ import annotations

import argparse
import io
import logging
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.api.browser import headless_chromium
from tests.services import serve

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "examples" / "images"
log = logging.getLogger("screenshot")


def submit_through_the_page(driver: webdriver.Chrome, url: str, iterations: int, side: int) -> str:
    """Fill the form as a person would; returns the job id from the page's new URL."""
    driver.get(f"{url}/")
    wait = WebDriverWait(driver, 60)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid='param-iterations']"))
    driver.find_element(By.CSS_SELECTOR, "[data-testid='content-input']").send_keys(str(SAMPLES / "coffee.png"))
    driver.find_element(By.CSS_SELECTOR, "[data-testid='style-input']").send_keys(str(SAMPLES / "starry_night.jpg"))
    for name, value in {"iterations": iterations, "height": side, "width": side, "seed": 7}.items():
        field = driver.find_element(By.CSS_SELECTOR, f"[data-testid='param-{name}']")
        field.clear()
        field.send_keys(str(value))
    driver.find_element(By.CSS_SELECTOR, "[data-testid='submit']").click()
    wait.until(lambda d: "#/jobs/" in d.current_url)
    return driver.current_url.rsplit("/", 1)[-1]


def wait_mid_job(client: httpx.Client, job_id: str, snapshots: int, timeout: float) -> dict:
    """The job once it has `snapshots` snapshots; fails if it ends first (ask for more iterations)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            raise SystemExit(f"the job {job['status']} before {snapshots} snapshots: use more --iterations")
        if len(job["snapshots"]) >= snapshots:
            return job
        time.sleep(0.5)
    raise SystemExit(f"no {snapshots} snapshots after {timeout} s")


def save_png(png: bytes, out: Path, budget: int = 400_000) -> None:
    """Chrome's PNG, optimised; reduced to 256 colours only if it is still over `budget` bytes."""
    with Image.open(io.BytesIO(png)) as shot:
        image = shot.convert("RGB")
    image.save(out, optimize=True)
    if out.stat().st_size > budget:
        image.quantize(256, method=Image.Quantize.FASTOCTREE).save(out, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "page.png")
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--size", type=int, default=128, help="working height and width")
    parser.add_argument("--snapshots", type=int, default=3, help="how many snapshots to wait for")
    parser.add_argument("--weights", default="random", help="NST_VGG_WEIGHTS for the worker")
    parser.add_argument("--window", default="1280x1000", help="browser window, WIDTHxHEIGHT")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    width, height = (int(n) for n in args.window.split("x"))

    with tempfile.TemporaryDirectory(prefix="nst-screenshot-") as tmp:
        root = Path(tmp)
        (root / "service").mkdir()
        with serve(root / "service", {"NST_VGG_WEIGHTS": args.weights}, workers=1) as service:
            log.info("service at %s", service.url)
            driver = headless_chromium(root / "profile", width, height)
            try:
                job_id = submit_through_the_page(driver, service.url, args.iterations, args.size)
                log.info("job %s submitted through the page", job_id)
                with httpx.Client(base_url=service.url, timeout=30) as client:
                    latest = wait_mid_job(client, job_id, args.snapshots, timeout=600)["snapshots"][-1]["url"]
                # Let the page catch up: that snapshot (or a newer one) shown and loaded, the chart drawn.
                WebDriverWait(driver, 30).until(
                    lambda d: d.execute_script(
                        "const img = document.querySelector(\"[data-testid='snapshot']\");"
                        "const last = (url) => Number(url.split('/').pop());"
                        "const chart = document.getElementById('loss-chart');"
                        "return img.complete && img.naturalWidth > 0 && Number(chart.dataset.points) > 2"
                        " && last(img.src) >= last(arguments[0]);",
                        latest,
                    )
                )
                time.sleep(0.5)  # one more animation frame for the chart
                save_png(driver.get_screenshot_as_png(), args.out)
                status = driver.find_element(By.CSS_SELECTOR, "[data-testid='status']").text
                log.info("saved %s (%d bytes), job %s", args.out, args.out.stat().st_size, status)
            finally:
                driver.quit()


if __name__ == "__main__":
    main()
