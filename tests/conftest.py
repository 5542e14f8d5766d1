"""Fixtures: the tests' private Docker engine (with a fake GPU hook), the images, and hubs.

The machine's own engine is only read: at the start of the run and again by the run's last
test (tests/test_host_engine.py), which fails if its containers, networks or volumes changed.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import host_engine
import pytest
from harness import (
    Hub,
    build_images,
    nvidia_driver_registered,
    private_engine_client,
    versions,
)

from spawner.runtime.runtime import reset_runtime

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def pytest_configure(config: pytest.Config) -> None:
    # Before any test acts: what the machine's engine holds now (or the snapshot the test
    # command took before it started the private engine).
    config.stash[host_engine.BEFORE] = host_engine.before_this_run()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The check of the machine's engine runs last, after everything that could change it.
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)


@pytest.fixture(autouse=True)
def fresh_hub_runtime() -> Iterator[None]:
    """Spawners built in this process share one hub runtime; each test starts without one
    and its runtime (threads, observers, the metrics collector) is stopped afterwards."""
    reset_runtime()
    yield
    reset_runtime()


@pytest.fixture(scope="session")
def host_engine_before(request: pytest.FixtureRequest) -> host_engine.Snapshot:
    return request.config.stash[host_engine.BEFORE]


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """The tests' private engine (tests/engine.py); never the machine's own."""
    try:
        client = private_engine_client()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    yield client
    client.close()


@pytest.fixture(scope="session")
def notebook_images(docker_client: docker.DockerClient) -> dict[str, str]:
    """The CPU and CUDA notebook images, built once per machine and reused after."""
    build_images("notebook-cpu", "notebook-cuda")
    v = versions()
    return {"cpu": v["NOTEBOOK_CPU_IMAGE"], "cuda": v["NOTEBOOK_CUDA_IMAGE"]}


@pytest.fixture(scope="session")
def datascience_images(
    docker_client: docker.DockerClient, notebook_images: dict[str, str]
) -> dict[str, str]:
    """The default profiles' images (the data-science stack), built once per machine."""
    build_images("datascience-cpu", "datascience-cuda")
    v = versions()
    return {"cpu": v["DATASCIENCE_CPU_IMAGE"], "cuda": v["DATASCIENCE_CUDA_IMAGE"]}


@pytest.fixture(scope="session")
def fake_gpu_hook(docker_client: docker.DockerClient, notebook_images: dict[str, str]) -> None:
    """Docker's nvidia driver is live, backed by the recording test double of the hook."""
    if not nvidia_driver_registered(docker_client, notebook_images["cpu"]):
        pytest.fail(
            "the tests' private dockerd runs without nvidia-container-runtime-hook on its "
            "PATH, so --gpus fails; stop it with `python tests/engine.py down` and run the "
            "tests again (tests/engine.py puts the test double on its PATH)"
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
