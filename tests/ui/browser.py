"""Headless Chromium for the UI tests: start-up, waits, screenshots and Airflow's login, once.

Selenium drives the system's Chromium and chromedriver (never a downloaded browser: Selenium
Manager is kept offline). Screenshots go to $RENKEI_ARTIFACTS (default tests/artifacts/ui/).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ui_stack import REPO, need_tool

ARTIFACTS = Path(os.environ.get("RENKEI_ARTIFACTS", REPO / "tests" / "artifacts" / "ui"))
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WAIT_S = 60
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--lang=ja")
# Every host but 127.0.0.1 unresolvable, and any other request sent to a port where nothing listens.
OFFLINE_FLAGS = ("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                 "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1")


@contextmanager
def chromium(profile: Path, *, window: str = "1500,1000", offline: bool = False) -> Iterator:
    """A headless Chromium driver with its profile in ``profile``; ``offline``: it reaches
    127.0.0.1 only. Skips (or fails under RENKEI_REQUIRE_SERVICES) without Chromium."""
    need_tool("Chromium", CHROMIUM)
    need_tool("chromedriver", CHROMEDRIVER)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never fetch a browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*FLAGS, *(OFFLINE_FLAGS if offline else ()), f"--window-size={window}", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, condition, what: str):
    """``condition``'s first truthy value within WAIT_S, or the test fails naming ``what``."""
    from selenium.common.exceptions import TimeoutException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        # WebDriverException too: the single-page apps navigate on their own ("aborted by navigation")
        return WebDriverWait(driver, WAIT_S, ignored_exceptions=(WebDriverException,)).until(condition)
    except TimeoutException:
        pytest.fail(f"browser: {what} did not happen within {WAIT_S}s (url {driver.current_url})")


def shot(driver, name: str) -> Path:
    """A screenshot of the page as ARTIFACTS/<name>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def login(driver, server, role: str = "viewer", *, screenshot: str | None = None) -> None:
    """Sign in through Airflow's login page as ``role`` (the stack's SimpleAuthManager user);
    ``screenshot``: the login form's screenshot name."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    driver.get(f"{server.url}/auth/login?next=/")
    user = wait(driver, ec.presence_of_element_located((By.CSS_SELECTOR, "input[name=username]")), "the login form")
    if screenshot:
        shot(driver, screenshot)
    user.send_keys(role)
    driver.find_element(By.CSS_SELECTOR, "input[name=password]").send_keys(server.passwords[role])
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(driver, lambda d: d.get_cookie("_token") and "/auth/login" not in d.current_url, "the login")


def logged_in(driver, server, role: str = "viewer") -> None:
    """Sign in as ``role`` unless this browser holds a session already (its cookie stays)."""
    if not driver.get_cookie("_token"):
        login(driver, server, role)


def open_in_airflow(driver, server, route: str) -> str:
    """Open a Renkei nav entry in the Airflow UI, enter its iframe, return the page's HTML."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    driver.switch_to.default_content()
    driver.get(f"{server.url}/plugin/{route}")
    wait(driver, ec.frame_to_be_available_and_switch_to_it((By.CSS_SELECTOR, "iframe")), f"the {route} iframe")
    wait(driver, ec.presence_of_element_located((By.CSS_SELECTOR, "main h1")), f"the {route} page")
    return driver.page_source


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium for a test module's tests, in order: a test may leave the session it
    logged in with to the next. (A fixture here, not in a tests/ui conftest: ui_stack imports
    the root conftest by name.)"""
    with chromium(tmp_path_factory.mktemp("chromium")) as driver:
        yield driver
