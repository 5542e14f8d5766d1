"""Operating a shared GPU server, on the real engine: idle reclaim, the admin GPU dashboard
(in chromium), Prometheus metrics and the spawn progress page.

GPUs are fake (the recording hook) and listed in a static inventory whose GPUs have indexes
no other test uses, so containers of other suites on the same engine never hold them.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from datetime import datetime
from typing import Any

import docker
import pytest
import requests
from harness import Hub, visible_gpus, wait_for
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

pytestmark = pytest.mark.docker


def gpus(count: int, first_index: int) -> str:
    """A static inventory of ``count`` GPUs (UUID ids) starting at ``first_index``."""
    return json.dumps(
        [
            {
                "id": f"GPU-0e5a{first_index + i:04d}-7e57-4000-8000-00000000{i:04d}",
                "index": first_index + i,
                "name": "Test A100-SXM4-80GB",
                "memory": "80g",
            }
            for i in range(count)
        ]
    )


def _unix(stamp: str) -> float:
    """Unix time of a time the REST API shows (ISO 8601, UTC, with a Z)."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def last_activity(hub: Hub, user: str) -> str:
    model = hub.server_model(user)
    assert model is not None, f"{user} has no server"
    return str(model["last_activity"])


def start_busy_kernel(hub: Hub, user: str, seconds: int = 900) -> str:
    """Start a kernel in the user's server and leave it executing a long cell."""
    token = hub.user_token(user)
    headers = {"Authorization": f"token {token}"}
    kernels = f"{hub.url}/user/{user}/api/kernels"
    r = requests.post(kernels, headers=headers, json={"name": "python3"}, timeout=60)
    assert r.status_code == 201, r.text
    kernel_id = r.json()["id"]
    msg_id = uuid.uuid4().hex

    async def execute() -> None:
        url = kernels.replace("http", "ws", 1) + f"/{kernel_id}/channels"
        conn = await websocket_connect(HTTPRequest(url, headers=headers, request_timeout=60))
        await conn.write_message(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "msg_type": "execute_request",
                        "session": uuid.uuid4().hex,
                        "username": user,
                        "version": "5.3",
                        "date": "",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "channel": "shell",
                    "content": {
                        "code": f"import time\ntime.sleep({seconds})",
                        "silent": False,
                        "store_history": True,
                        "user_expressions": {},
                        "allow_stdin": False,
                        "stop_on_error": True,
                    },
                }
            )
        )
        while True:
            raw = await asyncio.wait_for(conn.read_message(), timeout=60)
            assert raw is not None, "kernel websocket closed"
            message = json.loads(raw)
            if (
                message.get("msg_type") == "status"
                and message["parent_header"].get("msg_id") == msg_id
                and message["content"]["execution_state"] == "busy"
            ):
                break
        conn.close()

    asyncio.run(execute())
    return str(kernel_id)


def kernel_state(hub: Hub, user: str) -> list[str]:
    token = hub.user_token(user)
    r = requests.get(
        f"{hub.url}/user/{user}/api/kernels",
        headers={"Authorization": f"token {token}"},
        timeout=30,
    )
    r.raise_for_status()
    return [k["execution_state"] for k in r.json()]


# -- idle reclaim --------------------------------------------------------------------------


def test_idle_gpu_server_is_reclaimed_and_its_gpu_goes_to_the_waiting_user(
    start_hub: Any, docker_client: docker.DockerClient
) -> None:
    hub = start_hub(
        env={
            "GPUWS_GPU_INVENTORY": gpus(1, 50),
            "GPUWS_GPU_WAIT_TIMEOUT": "300",
            "GPUWS_GPU_IDLE_TIMEOUT": "12",
            "GPUWS_IDLE_TIMEOUT": "3600",
            "GPUWS_IDLE_CHECK_INTERVAL": "1",
        },
        # answer the spawn request at once (202), so the progress page shows every phase
        extra_config='c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}\n',
    )
    hub.spawn("ann", {"profile": "gpu-1"})
    ann = hub.server_container(docker_client, "ann")
    (gpu,) = visible_gpus(docker_client, ann.id)

    # ann's idle deadline, as the session endpoint gives it to her JupyterLab
    session = hub.api("GET", "/gpus/servers/ann").json()
    deadline = _unix(session["idle"]["deadline"])
    assert deadline == pytest.approx(_unix(last_activity(hub, "ann")) + 12, abs=1), session

    r = hub.request_spawn("ben", {"profile": "gpu-1"})
    assert r.status_code == 202, r.text
    # ben's progress page, while he waits for ann's GPU to be reclaimed
    events = hub.progress_events("ben")
    ready_at = time.time()

    assert events[-1].get("ready"), events
    messages = [str(e.get("message", "")) for e in events]
    waiting = next(i for i, m in enumerate(messages) if m.startswith("Waiting for 1 GPU, 0 req"))
    # the estimate is ann's reclaim deadline (within the check interval), in words and as data
    estimate = events[waiting]["gpuws_estimate"]
    assert estimate["freed"] == 1 and estimate["at"] == pytest.approx(deadline, abs=1), events
    assert "1 GPU frees up by then through idle reclaim" in messages[waiting], messages
    assert deadline - 1 <= ready_at, "ben got the GPU before ann's deadline"
    creating = messages.index("Creating the container")
    starting = messages.index("Starting the notebook server")
    assert waiting < creating < starting, messages

    hub.wait_gone("ann")
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(ann.id)
    assert visible_gpus(docker_client, hub.server_container(docker_client, "ben").id) == [gpu]
    log = hub.log_path.read_text()
    assert "GPU reclaimer: stopping ann" in log
    # stopped through the REST API, as the service gpu-reclaimer
    assert " DELETE /hub/api/users/ann/server (gpu-reclaimer@" in log


def test_a_busy_kernel_is_never_culled_as_idle(
    start_hub: Any, docker_client: docker.DockerClient
) -> None:
    hub = start_hub(
        env={
            "GPUWS_GPU_INVENTORY": gpus(2, 52),
            "GPUWS_GPU_IDLE_TIMEOUT": "10",
            "GPUWS_IDLE_TIMEOUT": "15",  # the idle culler's (CPU) timeout
            "GPUWS_IDLE_CHECK_INTERVAL": "1",
        }
    )
    # cat (GPU) and eve (CPU) start a long cell at once, then nothing happens in their servers
    hub.spawn("cat", {"profile": "gpu-1"})
    start_busy_kernel(hub, "cat")
    hub.spawn("eve", {"profile": "cpu"})
    start_busy_kernel(hub, "eve")
    # dan (GPU) and fay (CPU) start later and stay idle: once they are stopped, cat and eve
    # have been without user activity for longer than the timeouts too
    hub.spawn("dan", {"profile": "gpu-1"})
    hub.spawn("fay", {"profile": "cpu"})
    dan_last, fay_last = last_activity(hub, "dan"), last_activity(hub, "fay")

    hub.wait_gone("dan", timeout=120)  # by the GPU reclaimer
    hub.wait_gone("fay", timeout=120)  # by jupyterhub-idle-culler

    for user in ("cat", "eve"):
        assert hub.server_model(user)["ready"], f"{user}'s busy server was culled"
        assert kernel_state(hub, user) == ["busy"]
        hub.server_container(docker_client, user)
    # their busy kernels counted as activity, after the idle servers' last activity
    assert last_activity(hub, "cat") > dan_last
    assert last_activity(hub, "eve") > fay_last
    log = hub.log_path.read_text()
    assert "GPU reclaimer: stopping dan" in log
    assert "GPU reclaimer: stopping cat" not in log


# -- the admin GPU dashboard -----------------------------------------------------------------


def login_in_browser(page: Any, hub: Hub, name: str) -> None:
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", name)
    page.fill("#password_input", "any password")
    page.click("#login_submit")
    page.wait_for_url(lambda url: "/hub/login" not in url)


def test_dashboard_shows_the_real_allocations_to_admins_only(
    start_hub: Any,
    docker_client: docker.DockerClient,
    notebook_images: dict[str, str],
    artifacts_dir: Any,
) -> None:
    inventory = json.loads(gpus(4, 60))
    outsider_gpu = inventory[3]["id"]
    outsider = docker_client.containers.run(
        notebook_images["cpu"],
        ["sleep", "900"],
        entrypoint=[],
        detach=True,
        remove=True,
        labels={"io.gpu-workspaces.test": "dashboard"},
        device_requests=[
            docker.types.DeviceRequest(device_ids=[outsider_gpu], capabilities=[["gpu"]])
        ],
    )
    try:
        hub = start_hub(
            env={"GPUWS_GPU_INVENTORY": json.dumps(inventory), "GPUWS_GPU_WAIT_TIMEOUT": "300"}
        )
        hub.spawn("ann", {"profile": "gpu-1"})
        hub.spawn("ben", {"profile": "gpu-2"})
        assert hub.request_spawn("cat", {"profile": "gpu-1"}).status_code == 202

        def data() -> dict[str, Any]:
            r = hub.api("GET", "/gpus")
            assert r.status_code == 200, r.text
            return dict(r.json())

        snapshot = wait_for(lambda: (d := data())["queue"] and d, timeout=60)

        # the JSON matches what Docker shows
        held = {
            g: c.labels["io.gpu-workspaces.user"]
            for c in hub.containers(docker_client, status="running")
            for g in visible_gpus(docker_client, c.id)
        }
        shown = {g["id"]: (g["state"], (g["holder"] or {}).get("user")) for g in snapshot["gpus"]}
        assert shown == {
            **{gpu: ("held", user) for gpu, user in held.items()},
            outsider_gpu: ("external", None),
        }
        assert sorted(held.values()) == ["ann", "ben", "ben"]
        assert [(q["user"], q["gpus"], q["position"]) for q in snapshot["queue"]] == [("cat", 1, 0)]
        assert snapshot["summary"] == {
            "total": 4,
            "allocated": 3,
            "free": 0,
            "external": 1,
            "queue_length": 1,
        }
        ann_gpu = next(g for g in snapshot["gpus"] if (g["holder"] or {}).get("user") == "ann")
        assert ann_gpu["holder"]["profile"] == "gpu-1"
        assert ann_gpu["holder"]["since"] and ann_gpu["name"] == "Test A100-SXM4-80GB"

        # non-admins get 403, on the page and the JSON, with a cookie or a token
        ann_session = hub.login("ann")
        assert ann_session.get(f"{hub.url}/hub/gpus", timeout=30).status_code == 403
        assert ann_session.get(f"{hub.url}/hub/api/gpus", timeout=30).status_code == 403
        assert hub.api("GET", "/gpus", token=hub.user_token("ann")).status_code == 403
        anonymous = requests.get(f"{hub.url}/hub/gpus", allow_redirects=False, timeout=30)
        assert anonymous.status_code == 302 and "/hub/login" in anonymous.headers["Location"]
        assert requests.get(f"{hub.url}/hub/api/gpus", timeout=30).status_code == 403

        # an admin sees it in a real browser, refreshed live
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path="/usr/bin/chromium",
                headless=True,
                args=[
                    "--no-sandbox",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-gpu",
                ],
            )
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                login_in_browser(page, hub, "admin")
                response = page.goto(f"{hub.url}/hub/gpus")
                assert response is not None and response.status == 200
                for gpu, user in held.items():
                    card = page.locator(f'.gpu-card[data-gpu="{gpu}"]')
                    assert card.get_attribute("data-state") == "held"
                    assert user in card.inner_text()
                outside = page.locator(f'.gpu-card[data-gpu="{outsider_gpu}"]')
                assert "outside the hub" in outside.inner_text().lower()
                assert "cat" in page.locator("#gpu-queue tbody").inner_text()
                assert "0 of 4 GPUs free" in page.locator("#gpu-summary").inner_text()
                page.screenshot(path=str(artifacts_dir / "dashboard.png"), full_page=True)

                # ben stops: cat gets one of his GPUs, the other is free; the page follows
                hub.stop_server("ben")
                hub.wait_ready("cat")
                page.wait_for_function(
                    "document.querySelector('#gpu-summary').textContent"
                    ".startsWith('1 of 4 GPUs free')",
                    timeout=30_000,
                )
                assert "Nobody is waiting" in page.locator("#gpu-queue tbody").inner_text()
                cat_gpu = visible_gpus(
                    docker_client, hub.server_container(docker_client, "cat").id
                )[0]
                assert "cat" in page.locator(f'.gpu-card[data-gpu="{cat_gpu}"]').inner_text()
            finally:
                browser.close()
    finally:
        outsider.remove(force=True)


# -- Prometheus metrics ----------------------------------------------------------------------


def scrape(hub: Hub, token: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = requests.get(
        f"{hub.url}/hub/metrics", headers={"Authorization": f"token {token}"}, timeout=30
    )
    assert r.status_code == 200, r.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(r.text)
        for sample in family.samples
    }


def test_metrics_match_the_state_after_spawns_and_stops(
    start_hub: Any, docker_client: docker.DockerClient
) -> None:
    token = secrets.token_hex(16)
    hub = start_hub(
        env={
            "GPUWS_GPU_INVENTORY": gpus(3, 70),
            "GPUWS_GPU_WAIT_TIMEOUT": "300",
            "GPUWS_METRICS_TOKEN": token,
        }
    )
    assert requests.get(f"{hub.url}/hub/metrics", timeout=30).status_code == 403

    def gauges() -> dict[str, float]:
        values = scrape(hub, token)
        names = ("total", "allocated", "free", "external")
        result = {n: values[(f"jupyterhub_gpus_{n}", ())] for n in names}
        result["queue"] = values[("jupyterhub_gpu_queue_length", ())]
        return result

    assert gauges() == {"total": 3, "allocated": 0, "free": 3, "external": 0, "queue": 0}

    hub.spawn("ann", {"profile": "gpu-1"})
    hub.spawn("ben", {"profile": "gpu-2"})
    hub.spawn("dan", {"profile": "cpu"})
    assert gauges() == {"total": 3, "allocated": 3, "free": 0, "external": 0, "queue": 0}

    assert hub.request_spawn("cat", {"profile": "gpu-1"}).status_code == 202
    queued = wait_for(lambda: (g := gauges())["queue"] == 1 and g, timeout=60)
    assert queued == {"total": 3, "allocated": 3, "free": 0, "external": 0, "queue": 1}

    hub.stop_server("ann")
    hub.wait_ready("cat")
    hub.stop_server("ben")
    assert gauges() == {"total": 3, "allocated": 1, "free": 2, "external": 0, "queue": 0}

    values = scrape(hub, token)
    allocations = {
        dict(labels)["profile"]: value
        for (name, labels), value in values.items()
        if name == "jupyterhub_gpu_allocations_total"
    }
    assert allocations == {"gpu-1": 2, "gpu-2": 1}
    waits = {
        dict(labels)["status"]: value
        for (name, labels), value in values.items()
        if name == "jupyterhub_gpu_wait_duration_seconds_count"
    }
    assert waits == {"success": 3}
    assert values[("jupyterhub_gpu_idle_reclaimed_total", ())] == 0
    # JupyterHub's own metrics are still there, next to ours
    assert ("jupyterhub_running_servers", ()) in values


# -- after a hub restart ---------------------------------------------------------------------


def _server_token(docker_client: docker.DockerClient, hub: Hub, user: str) -> str:
    container = hub.server_container(docker_client, user)
    env = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"] if "=" in e)
    return env["JUPYTERHUB_API_TOKEN"]


def test_after_a_hub_restart_stop_revokes_the_token_and_idle_gpu_servers_are_reclaimed(
    start_hub: Any, docker_client: docker.DockerClient
) -> None:
    """Re-adopted servers get their API token back from the container: stopping one revokes
    it, and the GPU reclaimer can ask an idle one about its kernels and stop it."""
    hub = start_hub(
        env={
            "GPUWS_GPU_INVENTORY": gpus(2, 54),
            "GPUWS_GPU_IDLE_TIMEOUT": "8",
            "GPUWS_IDLE_TIMEOUT": "3600",
            "GPUWS_IDLE_CHECK_INTERVAL": "1",
        }
    )
    hub.spawn("rs-stop", {"profile": "cpu"})
    hub.spawn("rs-idle", {"profile": "gpu-1"})
    old_token = _server_token(docker_client, hub, "rs-stop")
    assert hub.api("GET", "/user", token=old_token).status_code == 200
    hub.restart()

    hub.stop_server("rs-stop")
    assert hub.api("GET", "/user", token=old_token).status_code == 403, "token still valid"
    hub.wait_gone("rs-idle", timeout=120)  # idle since before the restart
    log = hub.log_path.read_text()
    assert "GPU reclaimer: stopping rs-idle" in log
