"""GPU allocation and profiles on the real engine: each GPU to one server, queue, quotas, form.

GPUs are fake (the recording hook) and listed in a static inventory; everything else is real:
Docker's nvidia driver, JupyterHub, the proxy, the REST API and the spawn form.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from harness import visible_gpus, wait_for

pytestmark = pytest.mark.docker


def test_two_users_on_one_gpu_profiles_get_different_gpus(start_hub, docker_client):
    hub = start_hub(env={"GPUWS_GPU_INVENTORY": "4"})
    hub.spawn("ann", {"profile": "gpu-1"})
    hub.spawn("ben", {"profile": "gpu-1"})
    ann = hub.server_container(docker_client, "ann")
    ben = hub.server_container(docker_client, "ben")
    ann_gpus, ben_gpus = visible_gpus(docker_client, ann.id), visible_gpus(docker_client, ben.id)
    assert len(ann_gpus) == len(ben_gpus) == 1
    assert ann_gpus != ben_gpus
    # the choice is recorded on the container and reads back
    assert ann.labels["io.gpu-workspaces.gpus"] == ",".join(ann_gpus)
    assert ann.labels["io.gpu-workspaces.profile"] == "gpu-1"


def test_twenty_concurrent_spawns_for_eight_gpus(start_hub, docker_client, artifacts_dir):
    hub = start_hub(env={"GPUWS_GPU_INVENTORY": "8", "GPUWS_GPU_WAIT_TIMEOUT": "3"})
    users = [f"u{i:02d}" for i in range(20)]
    for user in users:
        hub.ensure_user(user)
    started = time.monotonic()
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda u: hub.request_spawn(u, {"profile": "gpu-1"}), users))
    assert all(a.status_code in (201, 202, 503) for a in answers), [a.status_code for a in answers]

    def settled():
        models = [hub.server_model(u) for u in users]
        return models if all(m is None or not m.get("pending") for m in models) else None

    models = wait_for(settled, timeout=240, interval=0.5)
    wall = time.monotonic() - started
    ready = [u for u, m in zip(users, models, strict=True) if m and m.get("ready")]
    running = hub.containers(docker_client, status="running")
    gpus = [g for c in running for g in visible_gpus(docker_client, c.id)]

    assert len(ready) == 8
    assert len(running) == 8
    assert sorted(gpus) == [str(i) for i in range(8)], "a GPU was handed out twice"
    assert len(hub.containers(docker_client)) == 8, "refused spawns left containers behind"
    figures = {
        "requests": 20,
        "granted": len(ready),
        "refused_after_queueing": 20 - len(ready),
        "immediate_5xx": sum(a.status_code >= 500 for a in answers),
        "wall_seconds": round(wall, 1),
    }
    (artifacts_dir / "concurrency.json").write_text(json.dumps(figures, indent=2))
    print("concurrency figures:", figures)


def test_gpu_held_by_a_hand_started_container_stays_out_of_the_pool(
    start_hub, docker_client, notebook_images
):
    intruder = docker_client.containers.run(
        notebook_images["cpu"],
        ["sleep", "600"],
        detach=True,
        remove=True,
        device_requests=[
            __import__("docker").types.DeviceRequest(device_ids=["0"], capabilities=[["gpu"]])
        ],
    )
    try:
        hub = start_hub(env={"GPUWS_GPU_INVENTORY": "2", "GPUWS_GPU_WAIT_TIMEOUT": "0"})
        hub.spawn("hal", {"profile": "gpu-1"})
        assert visible_gpus(docker_client, hub.server_container(docker_client, "hal").id) == ["1"]
        refused = hub.request_spawn("ivy", {"profile": "gpu-1"})
        assert refused.status_code == 503, refused.text
        assert "GPU" in refused.json()["message"]
        assert "Traceback" not in refused.text
    finally:
        intruder.remove(force=True)


def test_killed_container_gives_its_gpu_back(start_hub, docker_client):
    hub = start_hub(
        env={"GPUWS_GPU_INVENTORY": "1", "GPUWS_GPU_WAIT_TIMEOUT": "60"},
        extra_config="c.GPUDockerSpawner.poll_interval = 2\n",
    )
    hub.spawn("kai", {"profile": "gpu-1"})
    hub.server_container(docker_client, "kai").kill()
    # the pool sees the container gone and hands GPU 0 on; poll marks kai's server stopped
    hub.spawn("lea", {"profile": "gpu-1"}, timeout=60)
    assert visible_gpus(docker_client, hub.server_container(docker_client, "lea").id) == ["0"]
    hub.wait_gone("kai", timeout=30)


def test_hub_restart_keeps_servers_and_their_gpus(start_hub, docker_client):
    hub = start_hub(env={"GPUWS_GPU_INVENTORY": "3", "GPUWS_GPU_WAIT_TIMEOUT": "0"})
    hub.spawn("max", {"profile": "gpu-1"})
    hub.spawn("mia", {"profile": "gpu-1"})
    hub.spawn("moe", {"profile": "cpu"})
    before = {c.id: c.labels.get("io.gpu-workspaces.gpus") for c in hub.containers(docker_client)}

    hub.restart()

    after = {c.id: c.labels.get("io.gpu-workspaces.gpus") for c in hub.containers(docker_client)}
    assert after == before, "containers were replaced or lost across the hub restart"
    for user in ("max", "mia", "moe"):
        model = hub.server_model(user)
        assert model and model["ready"], f"{user} lost their server"
        token = hub.user_token(user)
        r = requests.get(
            f"{hub.url}/user/{user}/api/status", headers={"Authorization": f"token {token}"}
        )
        assert r.status_code == 200
    # the one GPU nobody holds goes to the next user; then none is left
    hub.spawn("ned", {"profile": "gpu-1"})
    held = {
        g
        for c in hub.containers(docker_client, status="running")
        for g in (c.labels.get("io.gpu-workspaces.gpus") or "").split(",")
        if g
    }
    assert held == {"0", "1", "2"}
    assert hub.request_spawn("ola", {"profile": "gpu-1"}).status_code == 503


def test_quota_refuses_before_any_container_is_made(start_hub, docker_client):
    hub = start_hub(
        env={"GPUWS_GPU_INVENTORY": "4", "GPUWS_GPU_QUOTA_PER_USER": "1"},
        extra_config="c.JupyterHub.allow_named_servers = True\n",
    )
    hub.spawn("quinn", {"profile": "gpu-1"})
    over = hub.request_spawn("quinn", {"profile": "gpu-1"}, server="second")
    assert over.status_code == 403, over.text
    assert "quota" in over.json()["message"].lower()
    too_big = hub.request_spawn("rex", {"profile": "gpu-2"})
    assert too_big.status_code == 403, too_big.text
    assert len(hub.containers(docker_client)) == 1
    # a CPU server is never limited by the GPU quota
    hub.spawn("quinn", {"profile": "cpu"}, server="notes")


def test_group_quota_counts_all_members_together(start_hub, docker_client):
    hub = start_hub(
        env={"GPUWS_GPU_INVENTORY": "4"},
        extra_config='c.GPUDockerSpawner.gpu_quota_per_group = {"interns": 1}\n',
    )
    for user in ("ivan", "iris"):
        hub.ensure_user(user)
    r = hub.api("POST", "/groups/interns", json={"users": ["ivan", "iris"]})
    assert r.status_code == 201, r.text
    hub.spawn("ivan", {"profile": "gpu-1"})
    refused = hub.request_spawn("iris", {"profile": "gpu-1"})
    assert refused.status_code == 403
    assert "interns" in refused.json()["message"]


@pytest.mark.parametrize(
    "options, status",
    [
        ({"profile": "no-such-profile"}, 400),
        ({"profile": 5}, 400),
        ({"profile": "gpu-1", "image": "evil/image"}, 400),
        ({"profile": "x" * 10_000}, 400),
        ({"profile": "staff-only"}, 400),
    ],
)
def test_junk_user_options_get_a_clear_4xx(start_hub, docker_client, tmp_path, options, status):
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(
        """
- {slug: cpu, display_name: CPU, default: true}
- {slug: gpu-1, display_name: 1 GPU, gpus: 1}
- {slug: staff-only, display_name: Staff, gpus: 1, groups: [staff]}
"""
    )
    hub = start_hub(env={"GPUWS_GPU_INVENTORY": "2", "GPUWS_PROFILES_FILE": str(profiles)})
    r = hub.request_spawn("junk", options)
    assert r.status_code == status, r.text
    message = r.json()["message"]
    assert message and "Traceback" not in message and len(message) < 400
    assert not hub.containers(docker_client)


def test_queue_tells_the_user_where_they_are_then_runs(start_hub, docker_client):
    hub = start_hub(env={"GPUWS_GPU_INVENTORY": "1", "GPUWS_GPU_WAIT_TIMEOUT": "60"})
    hub.spawn("first", {"profile": "gpu-1"})
    r = hub.request_spawn("second", {"profile": "gpu-1"})
    assert r.status_code == 202
    with ThreadPoolExecutor(1) as pool:
        events_future = pool.submit(hub.progress_events, "second")
        time.sleep(2)  # "second" is queued behind "first" by now
        hub.stop_server("first")
        events = events_future.result(timeout=90)
    messages = [e.get("message", "") for e in events]
    assert any("Waiting for 1 GPU, 0 requests ahead of you" in m for m in messages), messages
    assert events[-1].get("ready"), messages
    assert visible_gpus(docker_client, hub.server_container(docker_client, "second").id) == ["0"]


def test_wait_runs_out_with_a_message_and_nothing_left(start_hub, docker_client):
    hub = start_hub(env={"GPUWS_GPU_INVENTORY": "1", "GPUWS_GPU_WAIT_TIMEOUT": "2"})
    hub.spawn("owner", {"profile": "gpu-1"})
    r = hub.request_spawn("late", {"profile": "gpu-1"})
    assert r.status_code in (202, 503)
    if r.status_code == 202:
        events = hub.progress_events("late")
        assert events[-1].get("failed")
        assert "became free within 2 seconds" in events[-1]["message"]
    else:
        assert "GPU" in r.json()["message"]
    wait_for(lambda: hub.server_model("late") is None or not hub.server_model("late")["pending"])
    assert len(hub.containers(docker_client)) == 1


def test_spawn_form_lists_allowed_profiles_with_live_counts(start_hub, docker_client, tmp_path):
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(
        """
- {slug: cpu, display_name: CPU only, default: true}
- {slug: gpu-1, display_name: One GPU, gpus: 1}
- {slug: gpu-2, display_name: Two GPUs, gpus: 2}
- {slug: staff-big, display_name: Staff four, gpus: 4, groups: [staff]}
"""
    )
    hub = start_hub(
        env={
            "GPUWS_GPU_INVENTORY": json.dumps(
                [{"id": str(i), "name": "Tesla T4", "memory": "16g"} for i in range(4)]
            ),
            "GPUWS_PROFILES_FILE": str(profiles),
        }
    )
    hub.spawn("holder", {"profile": "gpu-1"})
    browser = hub.login("viewer")
    page = browser.get(f"{hub.url}/hub/spawn/viewer", timeout=30)
    assert page.status_code == 200
    html = page.text
    shown = re.findall(r'data-profile="([^"]+)"', html)
    assert shown == ["cpu", "gpu-1", "gpu-2"]
    assert re.search(r'value="cpu"[^>]*checked|checked[^>]*value="cpu"', html)
    assert "3 of 4 GPUs free" in html
    assert "Tesla T4" in html and "16 GiB" in html

    r = hub.api("POST", "/groups/staff", json={"users": ["viewer"]})
    assert r.status_code == 201
    page = browser.get(f"{hub.url}/hub/spawn/viewer", timeout=30)
    assert re.findall(r'data-profile="([^"]+)"', page.text) == [
        "cpu",
        "gpu-1",
        "gpu-2",
        "staff-big",
    ]
