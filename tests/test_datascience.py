"""The data-science images (images/datascience) as a user and an offline site meet them.

- ``gpuws-selftest`` inside each image: the stack imports, one training step runs, and the GPUs
  Docker gave the container (fake ones here) are the ones it reports, without failing for
  want of a driver.
- A rebuild from the filled wheelhouse alone, inside the tests' network namespace with no
  proxy (nothing outside is reachable from there) and ``docker build --network none``; a
  wheelhouse that lacks a wheel fails the build with pip's own sentence naming it.
- The default profiles' images are these (jupyterhub_config.py, scripts/compose.sh).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import docker
import pytest
from harness import REPO, versions

pytestmark = pytest.mark.docker

WHEELHOUSE = REPO / ".cache" / "wheelhouse"
DATASCIENCE = ("numpy", "pandas", "scipy", "sklearn", "matplotlib", "ipywidgets", "torch")


def selftest(
    client: docker.DockerClient, image: str, gpus: list[str] | None = None
) -> tuple[int, dict]:
    requests = [docker.types.DeviceRequest(device_ids=gpus, capabilities=[["gpu"]])] if gpus else []
    container = client.containers.run(
        image,
        ["gpuws-selftest", "--json"],
        detach=True,
        network_mode="none",
        device_requests=requests,
    )
    try:
        code = container.wait(timeout=120)["StatusCode"]
        output = container.logs(stdout=True, stderr=False).decode()
    finally:
        container.remove(force=True)
    return code, json.loads(output.strip().splitlines()[-1])


def resolved_torch(flavor: str) -> str:
    """The torch version the host's pip put in the wheelhouse (the build takes that one)."""
    (wheel,) = (WHEELHOUSE / f"datascience-{flavor}").glob("torch-*.whl")
    return wheel.name.split("-")[1]


@pytest.mark.parametrize("flavor", ["cpu", "cuda"])
def test_selftest_runs_the_stack_and_reports_the_given_gpus(
    docker_client: docker.DockerClient,
    datascience_images: dict[str, str],
    fake_gpu_hook: None,
    flavor: str,
) -> None:
    gpus = ["1", "3"] if flavor == "cuda" else None
    code, report = selftest(docker_client, datascience_images[flavor], gpus)
    assert code == 0 and report["ok"], report
    assert not report["import_failures"]
    assert set(DATASCIENCE) <= set(report["modules"])
    assert "jupyter_resource_usage" in report["modules"]
    torch = report["torch"]
    assert torch["torch"] == report["modules"]["torch"] == resolved_torch(flavor)
    assert torch["step_ok"] and torch["losses"][1] < torch["losses"][0]
    # No GPU on this machine: reported, not a failure.
    assert torch["cuda_available"] is False
    if flavor == "cuda":
        assert report["visible_devices"]["NVIDIA_VISIBLE_DEVICES"] == "1,3"
        assert {"pynvml", "jupyterlab_nvdashboard"} <= set(report["modules"])
        assert report["nvml"]["available"] is False
        assert report["nvml"]["reason"].startswith("no NVIDIA driver here")
    else:
        assert report["visible_devices"]["NVIDIA_VISIBLE_DEVICES"] is None
        assert report["nvml"] == {"available": False, "reason": "nvidia-ml-py is not in this image"}


def test_the_lean_image_stays_lean(
    docker_client: docker.DockerClient, notebook_images: dict[str, str]
) -> None:
    code, report = selftest(docker_client, notebook_images["cpu"])
    assert code == 0 and report["ok"], report
    assert set(report["modules"]) == {"jupyterhub", "jupyterlab", "jupyter_server"}
    assert "torch" not in report
    lean = docker_client.images.get(notebook_images["cpu"])
    # The data-science image is the lean one plus a single layer (no wheels in it).
    ds = docker_client.images.get(versions()["DATASCIENCE_CPU_IMAGE"])
    lean_layers = lean.attrs["RootFS"]["Layers"]
    assert ds.attrs["RootFS"]["Layers"][: len(lean_layers)] == lean_layers
    assert len(ds.attrs["RootFS"]["Layers"]) == len(lean_layers) + 1


def test_default_profiles_use_the_datascience_images() -> None:
    v = versions()
    config = (REPO / "jupyterhub_config.py").read_text()
    assert f'"GPUWS_NOTEBOOK_IMAGE", "{v["DATASCIENCE_CPU_IMAGE"]}"' in config
    assert f'"GPUWS_GPU_IMAGE", "{v["DATASCIENCE_CUDA_IMAGE"]}"' in config
    shown = subprocess.run(
        [
            "bash",
            "-c",
            '. scripts/lib.sh; gpuws_load_config; . <(sed -n "/^export GPUWS_/p" '
            'scripts/compose.sh); echo "$GPUWS_NOTEBOOK_IMAGE $GPUWS_GPU_IMAGE"',
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={k: val for k, val in os.environ.items() if not k.startswith("GPUWS_")},
    ).stdout.split()
    assert shown == [v["DATASCIENCE_CPU_IMAGE"], v["DATASCIENCE_CUDA_IMAGE"]]


def _build(env: dict[str, str], *names: str) -> subprocess.CompletedProcess[str]:
    """scripts/build-images.sh with nothing reachable: no proxy, the wheelhouse as it is."""
    clean = {
        k: val
        for k, val in os.environ.items()
        if k.lower() not in {"http_proxy", "https_proxy"} and k != "GPUWS_BUILD_PROXY"
    }
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "build-images.sh"), "--force", *names],
        capture_output=True,
        text=True,
        env={**clean, "GPUWS_WHEELHOUSE_FILL": "0", "GPUWS_BUILD_NO_CACHE": "1", **env},
    )


def test_images_build_from_the_wheelhouse_with_no_network(
    docker_client: docker.DockerClient, datascience_images: dict[str, str], tmp_path: Path
) -> None:
    tags = {
        "NOTEBOOK_CPU_IMAGE": "gpuws-test/notebook-cpu:wheelhouse",
        "DATASCIENCE_CPU_IMAGE": "gpuws-test/datascience-cpu:wheelhouse",
    }
    try:
        done = _build(tags, "datascience-cpu")
        assert done.returncode == 0, done.stderr[-3000:]
        built = re.findall(r"^(\S+)\s+\S+\s+built\s.*network (\w+)\)$", done.stdout, re.M)
        assert built == [("notebook-cpu", "none"), ("datascience-cpu", "none")], done.stdout
        code, report = selftest(docker_client, tags["DATASCIENCE_CPU_IMAGE"])
        assert code == 0 and report["torch"]["torch"] == resolved_torch("cpu"), report

        # The same build from a wheelhouse without torch: pip has nowhere else to look.
        partial = tmp_path / "wheelhouse"
        shutil.copytree(WHEELHOUSE, partial, copy_function=os.link)
        for wheel in (partial / "datascience-cpu").glob("torch-*.whl"):
            wheel.unlink()
        done = _build({**tags, "GPUWS_WHEELHOUSE": str(partial)}, "datascience-cpu")
        assert done.returncode != 0
        assert "No matching distribution found for torch==" in done.stderr + done.stdout
    finally:
        for tag in tags.values():
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(tag, force=True)
