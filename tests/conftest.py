"""Fixtures: the real Docker engine (with a fake GPU hook), the images, and hubs."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest
from harness import (
    Hub,
    build_images,
    ensure_docker_engine,
    nvidia_driver_registered,
    versions,
)

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    client = ensure_docker_engine()
    yield client
    client.close()


@pytest.fixture(scope="session")
def notebook_images(docker_client: docker.DockerClient) -> dict[str, str]:
    """The CPU and CUDA notebook images, built once per machine and reused after."""
    build_images("notebook-cpu", "notebook-cuda")
    v = versions()
    return {"cpu": v["NOTEBOOK_CPU_IMAGE"], "cuda": v["NOTEBOOK_CUDA_IMAGE"]}


@pytest.fixture(scope="session")
def fake_gpu_hook(docker_client: docker.DockerClient, notebook_images: dict[str, str]) -> None:
    """Docker's nvidia driver is live, backed by the recording test double of the hook."""
    if not nvidia_driver_registered(docker_client, notebook_images["cpu"]):
        pytest.fail(
            "dockerd runs without nvidia-container-runtime-hook on its PATH, so --gpus fails. "
            "Stop it and let the tests start it (they put tests/fakes/ on its PATH), or start "
            "it with DOCKERD_EXTRA_PATH=/usr/local/libexec/gpu-workspaces-test "
            "scripts/install-docker.sh"
        )


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def start_hub(
    docker_client: docker.DockerClient,
    notebook_images: dict[str, str],
    fake_gpu_hook: None,
    tmp_path: Path,
) -> Iterator[Callable[..., Hub]]:
    """Start hubs from the project's jupyterhub_config.py; everything they made is removed."""
    hubs: list[Hub] = []

    def start(env: dict[str, str] | None = None, extra_config: str = "") -> Hub:
        prefix = f"gpuwst{secrets.token_hex(3)}"
        workdir = tmp_path / prefix
        workdir.mkdir()
        hub = Hub(prefix=prefix, workdir=workdir, env=env or {}, extra_config=extra_config)
        hubs.append(hub)
        return hub.start()

    yield start
    for hub in hubs:
        hub.cleanup(docker_client)
