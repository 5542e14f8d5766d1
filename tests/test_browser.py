"""The data scientist's path in a real browser (Debian's chromium), on the default login.

The admin (whose account the hub made at start-up, with GPUWS_ADMIN_PASSWORD) logs in after
a sign-up under the admin's name is refused; a second person signs up and is approved at
/hub/authorize; each picks the 1-GPU profile on the spawn form, watches the progress page,
gets JupyterLab and runs a cell that prints the GPU their container was given and the size
of its /dev/shm; the admin's GPU dashboard then shows each GPU held by one of them. The GPUs
are a static inventory of two named (fake) GPUs. The spawn form's and the dashboard's
screenshots are the ones in docs/images/.
"""

from __future__ import annotations

import json
import re
import secrets

import pytest
from browser import (
    chromium,
    log_in,
    new_page,
    run_in_new_notebook,
    screenshot_on_failure,
    sign_up,
    start_profile,
)

pytestmark = [pytest.mark.browser, pytest.mark.docker]

INVENTORY = [{"id": str(i), "name": "Tesla T4", "memory": "16g"} for i in range(2)]
MEM_LIMIT = "3g"
SHM_BYTES = 3 * 2**30 // 2  # half the memory limit
# NVIDIA_VISIBLE_DEVICES is set by Docker's nvidia driver on process 1 only.
CELL = """import os
env = dict(v.split("=", 1) for v in open("/proc/1/environ").read().split("\\0") if "=" in v)
print("NVIDIA_VISIBLE_DEVICES=" + env.get("NVIDIA_VISIBLE_DEVICES", "unset"))
shm = os.statvfs("/dev/shm")
print("SHM_BYTES=%d" % (shm.f_blocks * shm.f_frsize))"""


def _cell_values(output: str) -> dict[str, str]:
    return dict(re.findall(r"^(NVIDIA_VISIBLE_DEVICES|SHM_BYTES)=(\S+)$", output, re.M))


def test_sign_up_spawn_a_gpu_and_run_a_cell(start_hub, docker_client, artifacts_dir):
    admin_password = secrets.token_urlsafe(12)
    hub = start_hub(
        env={
            "GPUWS_AUTHENTICATOR": "native",
            "GPUWS_ADMIN_USERS": "boss",
            "GPUWS_ADMIN_PASSWORD": admin_password,
            "GPUWS_GPU_INVENTORY": json.dumps(INVENTORY),
            "GPUWS_MEM_LIMIT": MEM_LIMIT,
        },
        # The form's POST answers at once with the progress page, however fast the spawn is
        # (JupyterHub otherwise waits up to 10 s and skips the page when the server is up).
        extra_config='c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}\n',
    )
    password = secrets.token_urlsafe(12)
    seen: dict[str, dict[str, str]] = {}
    with chromium() as browser:
        boss = new_page(browser)
        assert "belongs to an administrator" in sign_up(boss, hub.url, "boss", password)
        log_in(boss, hub.url, "boss", admin_password)

        # The spawn form: every default profile, with the GPU model and free counts.
        boss.wait_for_url("**/hub/spawn**")
        cards = boss.locator("label.gpuws-card")
        assert cards.evaluate_all("cs => cs.map(c => c.dataset.profile)") == [
            "cpu",
            "gpu-1",
            "gpu-2",
        ]
        one_gpu = boss.locator('label.gpuws-card[data-profile="gpu-1"]')
        text = " ".join(one_gpu.inner_text().split())
        assert "2 of 2 GPUs free" in text and "Tesla T4" in text and "16 GiB" in text, text
        boss.screenshot(path=str(artifacts_dir / "browser-spawn-form.png"), full_page=True)

        visited = start_profile(boss, "gpu-1")
        assert any("/hub/spawn-pending/boss" in url for url in visited), visited
        with screenshot_on_failure(boss, str(artifacts_dir / "browser-failed-boss.png")):
            output = run_in_new_notebook(boss, CELL, expect="SHM_BYTES=")
        seen["boss"] = _cell_values(output)
        boss.screenshot(path=str(artifacts_dir / "browser-jupyterlab.png"))

        # A second person signs up, waits for approval, and gets the other GPU.
        carla = new_page(browser)
        assert "sent to the admin" in sign_up(carla, hub.url, "carla", password)
        boss.goto(f"{hub.url}/hub/authorize")
        boss.locator("tr#carla").get_by_role("button", name="Authorize", exact=True).click()
        boss.locator("tr#carla", has_text="Yes").wait_for()
        log_in(carla, hub.url, "carla", password)
        carla.wait_for_url("**/hub/spawn**")
        card = carla.locator('label.gpuws-card[data-profile="gpu-1"]')
        text = " ".join(card.inner_text().split())
        assert "1 of 2 GPUs free" in text, text
        start_profile(carla, "gpu-1")
        with screenshot_on_failure(carla, str(artifacts_dir / "browser-failed-carla.png")):
            seen["carla"] = _cell_values(run_in_new_notebook(carla, CELL, expect="SHM_BYTES="))

        # The admin's GPU dashboard: one card per GPU, each held by one of them.
        boss.goto(f"{hub.url}/hub/gpus")
        boss.locator(".gpu-card.held").nth(1).wait_for()
        holders = boss.locator(".gpu-card.held .gpu-holder").all_inner_texts()
        assert sorted(holders) == ["boss", "carla"], holders
        boss.screenshot(path=str(artifacts_dir / "browser-gpu-dashboard.png"), full_page=True)

        # Not signed in: someone else's JupyterLab sends you to the login page.
        stranger = new_page(browser)
        stranger.goto(f"{hub.url}/user/carla/lab")
        stranger.locator("#login_submit").wait_for()
        assert "/hub/login" in stranger.url
        assert stranger.locator(".jp-LabShell").count() == 0

    # What the page showed is what Docker gave each container.
    for user, values in seen.items():
        (container,) = [
            c for c in hub.containers(docker_client) if c.labels["io.gpu-workspaces.user"] == user
        ]
        assert values["NVIDIA_VISIBLE_DEVICES"] == container.labels["io.gpu-workspaces.gpus"]
        assert int(values["SHM_BYTES"]) == SHM_BYTES == container.attrs["HostConfig"]["ShmSize"]
    assert {seen["boss"]["NVIDIA_VISIBLE_DEVICES"], seen["carla"]["NVIDIA_VISIBLE_DEVICES"]} == {
        "0",
        "1",
    }
