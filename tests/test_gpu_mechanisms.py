"""GPU access on an nvidia-docker2 host (``gpu_mechanism = "nvidia-runtime"``), for real.

The tests' engine registers a runtime named ``nvidia`` (runc under that name, the stand-in
for nvidia-docker2's). The notebook image here says ``NVIDIA_VISIBLE_DEVICES=all`` in its own
environment, as images built on the public ``nvidia/cuda`` base do: each GPU server must still
carry exactly its own ids, and the hub must read them back, so servers get distinct GPUs
whether they arrive at once or one after another.
"""

from __future__ import annotations

import contextlib
import io
from concurrent.futures import ThreadPoolExecutor

import docker
import pytest
from harness import visible_gpus

pytestmark = pytest.mark.docker

RUNTIME_CONFIG = 'c.GPUDockerSpawner.gpu_mechanism = "nvidia-runtime"\n'


@pytest.fixture(scope="module")
def all_gpus_image(docker_client: docker.DockerClient, notebook_images: dict[str, str]) -> str:
    """The CPU notebook image with ``NVIDIA_VISIBLE_DEVICES=all`` in its environment."""
    tag = "gpuws-test/notebook-all-gpus:latest"
    dockerfile = f"FROM {notebook_images['cpu']}\nENV NVIDIA_VISIBLE_DEVICES=all\n"
    docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
    return tag


def _runtime_hub(start_hub, image: str, inventory: str):
    return start_hub(
        env={
            "GPUWS_GPU_INVENTORY": inventory,
            "GPUWS_GPU_IMAGE": image,
            "GPUWS_GPU_WAIT_TIMEOUT": "0",
        },
        extra_config=RUNTIME_CONFIG,
    )


def test_runtime_servers_arriving_at_once_get_distinct_gpus(
    start_hub, docker_client, all_gpus_image
):
    hub = _runtime_hub(start_hub, all_gpus_image, "4")
    users = ["rt-a", "rt-b", "rt-c", "rt-d"]
    for user in users:
        hub.ensure_user(user)
    with ThreadPoolExecutor(len(users)) as pool:
        answers = list(pool.map(lambda u: hub.request_spawn(u, {"profile": "gpu-1"}), users))
    assert all(a.status_code in (201, 202) for a in answers), [a.text for a in answers]
    for user in users:
        hub.wait_ready(user)
    gpus = {}
    for user in users:
        container = hub.server_container(docker_client, user)
        assert container.attrs["HostConfig"]["Runtime"] == "nvidia"
        assert not container.attrs["HostConfig"].get("DeviceRequests")
        gpus[user] = visible_gpus(docker_client, container.id)
    assert sorted(g for ids in gpus.values() for g in ids) == ["0", "1", "2", "3"], gpus
    # all four are held: a fifth is refused with a sentence, not handed a used GPU
    refused = hub.request_spawn("rt-e", {"profile": "gpu-1"})
    assert refused.status_code == 503, refused.text
    assert "GPU" in refused.json()["message"]


def test_runtime_servers_one_after_another_and_a_hand_run_container(
    start_hub, docker_client, all_gpus_image
):
    # `docker run --runtime=nvidia -e NVIDIA_VISIBLE_DEVICES=2 …`, started by hand
    by_hand = docker_client.containers.run(
        all_gpus_image,
        ["sleep", "600"],
        detach=True,
        runtime="nvidia",
        environment={"NVIDIA_VISIBLE_DEVICES": "2"},
    )
    try:
        hub = _runtime_hub(start_hub, all_gpus_image, "3")
        hub.spawn("seq-a", {"profile": "gpu-1"})
        hub.spawn("seq-b", {"profile": "gpu-1"})
        held = sorted(
            g
            for user in ("seq-a", "seq-b")
            for g in visible_gpus(docker_client, hub.server_container(docker_client, user).id)
        )
        assert held == ["0", "1"]  # GPU 2 is the hand-run container's
        refused = hub.request_spawn("seq-c", {"profile": "gpu-1"})
        assert refused.status_code == 503, refused.text
        # once it is gone, its GPU is handed out
        by_hand.remove(force=True)
        hub.spawn("seq-c", {"profile": "gpu-1"})
        container = hub.server_container(docker_client, "seq-c")
        assert visible_gpus(docker_client, container.id) == ["2"]
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            by_hand.remove(force=True)


def test_two_hubs_on_one_engine_never_share_a_gpu(start_hub, docker_client):
    """A staging hub beside production: 3 users on each at the same moment, 4 GPUs. Each hub
    has its own ledger; after creating a container each checks that no other hub's container,
    created earlier, claims the same GPU, and tries other GPUs if one does."""
    hubs = [
        start_hub(env={"GPUWS_GPU_INVENTORY": "4", "GPUWS_GPU_WAIT_TIMEOUT": "0"}) for _ in range(2)
    ]
    requests_ = [(hub, f"two{h}-{i}") for h, hub in enumerate(hubs) for i in range(3)]
    for hub, user in requests_:
        hub.ensure_user(user)
    with ThreadPoolExecutor(len(requests_)) as pool:
        answers = list(
            pool.map(lambda r: r[0].request_spawn(r[1], {"profile": "gpu-1"}), requests_)
        )
    assert all(a.status_code in (201, 202, 503) for a in answers), [a.text for a in answers]
    for (hub, user), answer in zip(requests_, answers, strict=True):
        if answer.status_code != 503:
            model = hub.server_model(user)
            if model and model.get("pending"):
                with contextlib.suppress(AssertionError):
                    hub.wait_ready(user)
    held: list[str] = []
    for hub in hubs:
        for container in hub.containers(docker_client, status="running"):
            held += visible_gpus(docker_client, container.id)
    assert sorted(held) == sorted(set(held)), f"a GPU went to two servers: {held}"
    assert len(held) == 4, held  # all four GPUs serve someone; two requests were refused
    # neither hub touched the other's containers: each one's are labelled with its prefix
    for hub in hubs:
        for container in hub.containers(docker_client):
            assert container.name.startswith(hub.prefix)


def test_a_second_hub_with_the_same_prefix_refuses_to_start(start_hub, docker_client):
    """Each hub keeps an id of its own in its state folder and puts it on its containers: a
    second hub with the first one's container prefix does not start, and the first one's
    server is left alone."""
    first = start_hub(env={"GPUWS_GPU_INVENTORY": "2"})
    first.spawn("one", {"profile": "gpu-1"})
    container = first.server_container(docker_client, "one")
    assert container.labels["io.gpu-workspaces.hub-instance"]
    with pytest.raises(RuntimeError) as refused:
        start_hub(
            env={"GPUWS_GPU_INVENTORY": "2"},
            extra_config=f"c.GPUDockerSpawner.prefix = {first.prefix!r}\n",
        )
    assert f"runs servers with the container prefix {first.prefix!r}" in str(refused.value)
    assert "Traceback" not in str(refused.value)
    container.reload()
    assert container.status == "running"
    assert first.server_model("one")["ready"]
