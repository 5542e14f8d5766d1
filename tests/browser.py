"""A person in Debian's chromium, driven by Playwright: sign up, log in, pick a profile,
run a notebook cell in JupyterLab. Only selectors a person would see (form fields, buttons,
the launcher), with generous waits: a spawn and a first JupyterLab load take seconds.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-gpu",
]
PAGE_TIMEOUT_MS = 60_000
SPAWN_TIMEOUT_MS = 180_000
RUN_ATTEMPTS = 3
RUN_WAIT_MS = 30_000


def chromium_path() -> str | None:
    """Debian's chromium (scripts/run-tests.sh installs it); never Playwright's download."""
    return CHROMIUM if shutil.which(CHROMIUM) else shutil.which("chromium")


@contextmanager
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    if path is None:
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, headless=True, args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Any) -> Any:
    """A page in a fresh context: its own cookies, as a second person on another computer."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    return context.new_page()


def sign_up(page: Any, base_url: str, username: str, password: str) -> str:
    """Follow the login page's "Sign up" link and create the account; returns the message."""
    page.goto(f"{base_url}/hub/login")
    page.get_by_role("link", name="Sign up").click()
    page.wait_for_url("**/hub/signup")
    page.fill("#username_input", username)
    page.fill("#password_input", password)
    page.fill("#password_confirmation_input", password)
    page.click("#signup_submit")
    alert = page.locator("div.alert")
    alert.wait_for()
    return " ".join(alert.inner_text().split())


def log_in(page: Any, base_url: str, username: str, password: str) -> None:
    page.goto(f"{base_url}/hub/login")
    page.fill("#username_input", username)
    page.fill("#password_input", password)
    page.click("#login_submit")
    page.wait_for_url(lambda url: "/hub/login" not in url)


def start_profile(page: Any, slug: str) -> list[str]:
    """On the spawn form, pick a profile and press Start; returns the URLs the page went
    through until JupyterLab was up (the progress page among them)."""
    visited: list[str] = []
    page.on("framenavigated", lambda frame: visited.append(frame.url))
    page.check(f'input[name="profile"][value="{slug}"]')
    page.get_by_role("button", name="Start").click()
    wait_for_lab(page)
    return visited


def wait_for_lab(page: Any) -> None:
    page.wait_for_url("**/lab**", timeout=SPAWN_TIMEOUT_MS)
    page.locator(".jp-LauncherCard").first.wait_for(timeout=SPAWN_TIMEOUT_MS)


@contextmanager
def screenshot_on_failure(page: Any, path: str) -> Iterator[None]:
    """Keep a picture of the page when a step fails (tests/artifacts/ in CI)."""
    try:
        yield
    except Exception:
        page.screenshot(path=path, full_page=True)
        raise


def run_in_new_notebook(page: Any, code: str, expect: str) -> str:
    """Open a notebook from the launcher, run one cell, return its output once ``expect``
    shows in it.

    A new notebook's first kernel can be replaced by a second one while JupyterLab settles
    its session, and a cell sent in that moment never runs (its prompt stays ``[ ]``); like
    a person, run it again when nothing came back.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.locator('.jp-LauncherCard[data-category="Notebook"]').first.click()
    notebook = page.locator(".jp-NotebookPanel:visible")
    editor = notebook.locator(".jp-Cell .cm-content").first
    editor.wait_for(timeout=SPAWN_TIMEOUT_MS)
    notebook.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').wait_for(
        timeout=SPAWN_TIMEOUT_MS
    )
    editor.click()
    page.keyboard.insert_text(code)
    output = notebook.locator(".jp-Cell").first.locator(".jp-OutputArea-output")
    for attempt in range(RUN_ATTEMPTS):
        editor.click()
        page.keyboard.press("Control+Enter")  # run the cell, stay on it
        try:
            output.filter(has_text=expect).first.wait_for(timeout=RUN_WAIT_MS)
            break
        except PlaywrightTimeout:
            if attempt == RUN_ATTEMPTS - 1:
                raise
    return str(output.first.inner_text())
