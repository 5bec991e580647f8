"""Headless Chromium for the browser tests and docs/screenshot.py: Debian's chromium driven by
its chromedriver, so Selenium never downloads a browser or a driver."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from selenium.webdriver import Chrome

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# As root in a container, without a network: no sandbox, no background calls to Google's hosts.
CHROME_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--hide-scrollbars",
)


def headless_chromium(profile: Path, width: int = 1280, height: int = 1000) -> Chrome:
    """A browser whose page is `width` x `height`, with its console kept for `get_log("browser")`.
    Selenium is imported here, so that the paths above can be checked without it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as ChromeService

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (*CHROME_ARGS, f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not try to download anything
    driver = webdriver.Chrome(service=ChromeService(str(CHROMEDRIVER)), options=options)
    # The page itself gets width x height (--window-size includes the window's frame).
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    return driver
