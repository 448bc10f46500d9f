"""Headless Chromium for the HTML tests, driven by Selenium with the system's browser and driver.

Use the ``chrome`` fixture in a test module (``chrome = browser.chrome``; one browser per module).
Nothing is ever downloaded: the driver is given by path, so Selenium Manager never runs. Without
selenium, a browser or a driver the tests skip with the reason; when the environment variable
``CI`` is set they fail instead, since CI installs Debian's ``chromium`` and ``chromium-driver``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1440,1000",
)


def _unavailable(reason: str) -> None:
    """Skip, or fail under CI, where the browser tests must run."""
    if os.environ.get("CI"):
        pytest.fail(f"browser tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def _which(env: str, names: tuple[str, ...]) -> str | None:
    """The executable named by ``env``, else the first of ``names`` on PATH or in /usr/bin."""
    if os.environ.get(env):
        return os.environ[env] if os.access(os.environ[env], os.X_OK) else None
    for name in names:
        found = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
        if found:
            return found
    return None


def start_chrome(profile: Path) -> Any:
    """A headless Chromium WebDriver with browser and performance logs, profile in ``profile``."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed (pip install selenium)")
    binary = _which("SELFATTENTION_CHROME", BROWSERS)
    driver_path = _which("SELFATTENTION_CHROMEDRIVER", ("chromedriver",))
    if binary is None:
        _unavailable("no Chromium found (apt-get install chromium, or set SELFATTENTION_CHROME)")
    if driver_path is None:
        _unavailable("no chromedriver found (apt-get install chromium-driver, "
                     "or set SELFATTENTION_CHROMEDRIVER)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    try:
        return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    except Exception as err:  # a driver/browser mismatch, a sandbox problem, …
        _unavailable(f"headless Chromium did not start: {type(err).__name__}: {err}".splitlines()[0])


@pytest.fixture(scope="module")
def chrome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium for the whole test module, with a fresh profile."""
    driver = start_chrome(tmp_path_factory.mktemp("chrome-profile"))
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver: Any) -> list[str]:
    """SEVERE browser-log entries since the last call (reading the log empties it)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def requested_urls(driver: Any) -> list[str]:
    """Every URL the page asked for since the last call (Network.requestWillBeSent events)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls
