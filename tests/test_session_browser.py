"""Issue 17 in a real browser (Debian's chromium): the GPU in JupyterLab's status bar, the
warning before idle reclaim with "Keep running", the reclaim without a click handing the GPU
to a waiting user whose progress page gave an estimate and asked to notify, a session limit
stopping a busy server after its warning, and a removed profile leading back to the form.
Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import pytest
from browser import chromium, log_in, new_page, screenshot_on_failure, start_profile
from harness import Hub, wait_for
from test_operations import gpus, start_busy_kernel

pytestmark = [pytest.mark.browser, pytest.mark.docker]

# JupyterHub notes activity from the proxy every 5 min: far from these tests' deadlines
QUIET = (
    'c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}\n'
    "c.JupyterHub.last_activity_interval = 3600\n"
)

#: Records the page's notification calls where the test can read them after a reload.
NOTIFICATION_SPY = """
(() => {
  const Real = window.Notification;
  if (!Real) return;
  const log = (entry) => {
    const seen = JSON.parse(localStorage.getItem("gpuws-spy") || "[]");
    seen.push(entry);
    localStorage.setItem("gpuws-spy", JSON.stringify(seen));
  };
  class Spy extends Real {
    constructor(title, options) { super(title, options); log({shown: title}); }
  }
  Spy.requestPermission = (...args) => {
    log({asked: true});
    return Real.requestPermission(...args);
  };
  Object.defineProperty(Spy, "permission", {get: () => Real.permission});
  window.Notification = Spy;
})();
"""


def _unix(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _session(hub: Hub, user: str) -> dict[str, Any]:
    r = hub.api("GET", f"/gpus/servers/{user}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def _status_item(page: Any) -> Any:
    item = page.locator("#gpuws-status")
    item.wait_for()
    return item


def _spy(page: Any) -> list[dict[str, Any]]:
    return list(json.loads(page.evaluate("localStorage.getItem('gpuws-spy') || '[]'")))


def test_the_status_bar_the_warning_keep_running_and_the_queue(
    start_hub: Any, docker_client: docker.DockerClient, artifacts_dir: Path
) -> None:
    hub = start_hub(
        env={
            "GPUWS_GPU_INVENTORY": gpus(1, 70),
            "GPUWS_GPU_WAIT_TIMEOUT": "400",
            "GPUWS_GPU_IDLE_TIMEOUT": "60",
            "GPUWS_IDLE_TIMEOUT": "3600",
            "GPUWS_IDLE_CHECK_INTERVAL": "1",
            "GPUWS_STOP_WARNING": "40",
            "GPUWS_STATUS_POLL_INTERVAL": "2",
        },
        extra_config=QUIET,
    )
    with chromium() as browser:
        ada = new_page(browser)
        log_in(ada, hub.url, "ada", "any")
        ada.wait_for_url("**/hub/spawn**")
        start_profile(ada, "gpu-1")
        with screenshot_on_failure(ada, str(artifacts_dir / "session-ada-failed.png")):
            # the status bar: the allocated GPU, its model and the time left
            doc = _session(hub, "ada")
            (gpu,) = doc["gpus"]
            item = _status_item(ada)
            wait_for(lambda: "left" in item.inner_text(), timeout=30)
            text = item.inner_text()
            assert f"GPU {gpu['index']}" in text and "A100" in text, text
            ada.screenshot(path=str(artifacts_dir / "session-status-bar.png"))
            # its panel: the ids, the profile, the rule, the queue
            item.click()
            panel = ada.locator("#gpuws-panel")
            panel.wait_for()
            shown = panel.inner_text()
            assert gpu["id"] in shown and "1 GPU" in shown and "idle for 1 min" in shown, shown
            ada.screenshot(path=str(artifacts_dir / "session-panel.png"))

            # the warning, before the idle deadline; "Keep running" moves the deadline
            first_deadline = _unix(_session(hub, "ada")["idle"]["deadline"])
            keep = ada.get_by_role("button", name="Keep running")
            keep.wait_for(timeout=60_000)
            assert time.time() < first_deadline, "the warning came after the deadline"
            ada.screenshot(path=str(artifacts_dir / "session-warning.png"))
            keep.click()
            moved = wait_for(
                lambda: _unix(_session(hub, "ada")["idle"]["deadline"]) > first_deadline + 5,
                timeout=20,
            )
            assert moved
            second_deadline = _unix(_session(hub, "ada")["idle"]["deadline"])

        # bo waits for ada's GPU: an estimate, and a notification when his server is ready
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.add_init_script(NOTIFICATION_SPY)
        bo = context.new_page()
        bo.set_default_timeout(60_000)
        with screenshot_on_failure(bo, str(artifacts_dir / "session-bo-failed.png")):
            log_in(bo, hub.url, "bo", "any")
            bo.wait_for_url("**/hub/spawn**")
            bo.check('input[name="profile"][value="gpu-1"]')
            bo.get_by_role("button", name="Start").click()
            bo.get_by_role("button", name="Notify me when it's ready").click()
            wait_for(lambda: {"asked": True} in _spy(bo), timeout=10)
            # headless chromium has no prompt to click "Allow" in: the test allows it
            context.grant_permissions(["notifications"], origin=hub.url)
            message = bo.locator("#progress-message")
            wait_for(lambda: "frees up by then" in message.inner_text(), timeout=60)
            said = message.inner_text()
            left = second_deadline - time.time()
            minutes = re.search(r"~(\d+) min|under a minute", said)
            assert minutes, said
            shown_min = int(minutes.group(1)) if minutes.group(1) else 0
            assert abs(shown_min - left / 60) <= 1, (said, left)
            bo.screenshot(path=str(artifacts_dir / "session-queue.png"))
            # ada's first deadline passes: Keep running kept her server
            wait_for(lambda: time.time() > first_deadline + 3, timeout=60)
            assert hub.server_model("ada")["ready"], "ada was reclaimed despite Keep running"

            # without a second click ada's server is reclaimed and bo gets the GPU
            bo.wait_for_url("**/lab**", timeout=240_000)
            reclaimed_at = time.time()
            assert reclaimed_at >= second_deadline - 1, "reclaimed before its deadline"
            assert hub.server_model("ada") is None
            spy = _spy(bo)
            assert {"asked": True} in spy and {"shown": "Your server is ready"} in spy, spy
        assert _session(hub, "bo")["gpus"][0]["id"] == gpu["id"]


def test_a_session_limit_warns_then_stops_a_busy_server(
    start_hub: Any, artifacts_dir: Path, tmp_path: Path
) -> None:
    profiles = tmp_path / "profiles.json"
    profiles.write_text(
        json.dumps(
            [
                {"slug": "cpu", "display_name": "CPU only", "default": True},
                {"slug": "gpu-1", "display_name": "1 GPU", "gpus": 1, "max_age": 70},
            ]
        )
    )
    hub = start_hub(
        env={
            "GPUWS_GPU_INVENTORY": gpus(1, 71),
            "GPUWS_PROFILES_FILE": str(profiles),
            "GPUWS_GPU_IDLE_TIMEOUT": "1800",
            "GPUWS_IDLE_CHECK_INTERVAL": "1",
            "GPUWS_STOP_WARNING": "50",
            "GPUWS_STATUS_POLL_INTERVAL": "2",
        },
        extra_config=QUIET,
    )
    with chromium() as browser:
        page = new_page(browser)
        log_in(page, hub.url, "cy", "any")
        page.wait_for_url("**/hub/spawn**")
        start_profile(page, "gpu-1")
        with screenshot_on_failure(page, str(artifacts_dir / "session-limit-failed.png")):
            # the helper runs its own event loop: not in Playwright's thread
            with ThreadPoolExecutor(1) as thread:
                thread.submit(start_busy_kernel, hub, "cy").result()
            deadline = _unix(_session(hub, "cy")["session"]["deadline"])
            warning = page.locator(".Toastify__toast", has_text="Session limit")
            warning.wait_for(timeout=60_000)
            assert time.time() < deadline
            # the profile allows no extension: no button to keep it
            assert page.get_by_role("button", name="Keep running").count() == 0
            page.screenshot(path=str(artifacts_dir / "session-limit-warning.png"))
    hub.wait_gone("cy", timeout=90)
    assert time.time() >= deadline - 1


def test_a_removed_profile_leads_back_to_the_form_with_the_reason(
    start_hub: Any, artifacts_dir: Path, tmp_path: Path
) -> None:
    profiles = tmp_path / "profiles.json"

    def write(*extra: dict[str, Any]) -> None:
        base = [{"slug": "cpu", "display_name": "CPU only", "default": True}]
        profiles.write_text(json.dumps([*base, *extra]))

    write({"slug": "old-gpu", "display_name": "Old GPU", "gpus": 1})
    hub = start_hub(env={"GPUWS_GPU_INVENTORY": gpus(1, 72), "GPUWS_PROFILES_FILE": str(profiles)})
    hub.spawn("dee", {"profile": "old-gpu"})
    hub.stop_server("dee")
    write()
    hub.restart()
    with chromium() as browser:
        page = new_page(browser)
        log_in(page, hub.url, "dee", "any")
        with screenshot_on_failure(page, str(artifacts_dir / "session-stale-failed.png")):
            page.goto(f"{hub.url}/hub/home")
            page.locator("#start").click()  # "Start My Server" (or "My Server" once started)
            page.wait_for_url("**/hub/spawn**")
            note = page.locator(".gpuws-note", has_text="'old-gpu'")
            note.wait_for()
            assert "'cpu' is preselected" in note.inner_text()
            assert page.is_checked('input[name="profile"][value="cpu"]')
            page.screenshot(path=str(artifacts_dir / "session-stale-profile.png"))
