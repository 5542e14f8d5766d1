"""The first click on the default 1-GPU profile, in a real browser: JupyterLab opens on the
data-science image, a notebook cell imports torch, numpy and pandas, trains one step of a tiny
model on the CPU and prints the GPUs the container was given (fake ones here), which must be
the hub's allocation. The status bar's memory meter (jupyter-resource-usage) and the GPU
dashboards' panel (jupyterlab-nvdashboard) are on the page, and the managed-site settings
hold: no news, no update checks. Screenshots go to tests/artifacts/.
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
    start_profile,
)

pytestmark = [pytest.mark.browser, pytest.mark.docker]

INVENTORY = [{"id": str(i), "name": "Tesla T4", "memory": "16g"} for i in range(2)]
CELL = """import numpy as np, pandas as pd, torch
env = dict(v.split("=", 1) for v in open("/proc/1/environ").read().split("\\0") if "=" in v)
torch.manual_seed(0)
x, y = torch.randn(64, 8), torch.randn(64, 1)
model = torch.nn.Linear(8, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
before = torch.nn.functional.mse_loss(model(x), y)
optimizer.zero_grad(); before.backward(); optimizer.step()
after = torch.nn.functional.mse_loss(model(x), y).item()
frame = pd.DataFrame({"loss": [before.item(), after]})
print("TORCH=" + torch.__version__)
print("NUMPY=" + np.__version__)
print("LOSS_DOWN=%s" % bool(frame["loss"].diff().iloc[1] < 0))
print("CUDA=%s" % torch.cuda.is_available())
print("NVIDIA_VISIBLE_DEVICES=" + env.get("NVIDIA_VISIBLE_DEVICES", "unset"))"""


def test_default_gpu_profile_runs_a_training_step_with_the_meters_on_the_page(
    start_hub, docker_client, datascience_images, artifacts_dir
):
    password = secrets.token_urlsafe(12)
    # The images of jupyterhub_config.py's defaults (test_datascience.py checks they are).
    hub = start_hub(
        env={
            "GPUWS_AUTHENTICATOR": "native",
            "GPUWS_ADMIN_USERS": "ada",
            "GPUWS_ADMIN_PASSWORD": password,
            "GPUWS_GPU_INVENTORY": json.dumps(INVENTORY),
            "GPUWS_NOTEBOOK_IMAGE": datascience_images["cpu"],
            "GPUWS_GPU_IMAGE": datascience_images["cuda"],
        }
    )
    with chromium() as browser:
        page = new_page(browser)
        log_in(page, hub.url, "ada", password)
        page.wait_for_url("**/hub/spawn**")
        start_profile(page, "gpu-1")
        with screenshot_on_failure(page, str(artifacts_dir / "datascience-failed.png")):
            output = run_in_new_notebook(page, CELL, expect="NVIDIA_VISIBLE_DEVICES=")
            seen = dict(re.findall(r"^([A-Z_]+)=(\S+)$", output, re.M))
            # jupyter-resource-usage: memory against the container's limit, in the status bar
            meter = page.locator("#jp-main-statusbar", has_text="Mem: ")
            meter.wait_for()
            page.screenshot(path=str(artifacts_dir / "datascience-notebook.png"))
            # jupyterlab-nvdashboard: its panel in the left sidebar
            page.locator('.jp-SideBar [data-id="gpu-dashboard"]').click()
            header = page.locator("#gpu-dashboard .gpu-dashboard-header")
            header.wait_for()
            assert "GPU Dashboards" in header.inner_text()
            page.screenshot(path=str(artifacts_dir / "datascience-gpu-dashboards.png"))

            # The managed-site settings, as JupyterLab serves them to this page.
            base = page.url.split("/lab", 1)[0]
            # overrides.json becomes the schema's defaults, as the server sends them
            schema = page.request.get(
                f"{base}/lab/api/settings/@jupyterlab/apputils-extension:notification"
            ).json()["schema"]["properties"]
            manager = page.request.get(
                f"{base}/lab/api/settings/@jupyterlab/extensionmanager-extension:plugin"
            ).json()["schema"]["properties"]
            news = page.request.get(f"{base}/lab/api/news").json()
            update = page.request.get(f"{base}/lab/api/update").json()

    (container,) = hub.containers(docker_client)
    assert container.attrs["Config"]["Image"] == datascience_images["cuda"]
    assert seen["NVIDIA_VISIBLE_DEVICES"] == container.labels["io.gpu-workspaces.gpus"]
    assert seen["NVIDIA_VISIBLE_DEVICES"] in {"0", "1"}
    assert seen["LOSS_DOWN"] == "True" and seen["CUDA"] == "False"
    assert seen["TORCH"].startswith(container.image.labels["io.gpu-workspaces.torch"])
    assert (schema["fetchNews"]["default"], schema["checkForUpdates"]["default"]) == (
        "false",
        False,
    )
    assert manager["enabled"]["default"] is False
    assert news == {"news": []}
    assert update == {"notification": None}
