"""Each GPU to one server under churn, seen from outside.

4 fake GPUs, 10 users starting and stopping servers at random for 2 minutes (some stop while
their spawn is still pending), two readers hammering the spawn form and the dashboard JSON,
and a sampler that reads every running container's PID 1 environment (through the host's
/proc, the environment the NVIDIA runtime and driver act on) every 0.3 s. Asserted: no GPU in
two running containers at any sample, no 5xx from any request, and at the end the hub's
ledger (the dashboard JSON) equals what Docker runs. The figures go to
tests/artifacts/churn-figures.json.
"""

from __future__ import annotations

import collections
import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
from harness import Hub, wait_for

pytestmark = pytest.mark.docker

GPUS = 4
USERS = [f"churn{i}" for i in range(10)]
CHURN_SECONDS = 120
SAMPLE_EVERY = 0.3
PROFILES = ["gpu-1"] * 6 + ["gpu-2"] * 2 + ["cpu"] * 2
CONFIG = (
    "c.GPUDockerSpawner.poll_interval = 2\n"
    # answer spawn requests at once (202): a stop can then arrive while the spawn is pending
    'c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}\n'
)


def _pid1_gpus(pid: int) -> list[str] | None:
    """NVIDIA_VISIBLE_DEVICES of a process, from the host's /proc (None: gone or no GPUs)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    values = [v.split("=", 1)[1] for v in raw.decode(errors="replace").split("\0")
              if v.startswith("NVIDIA_VISIBLE_DEVICES=")]  # fmt: skip
    if not values or values[-1] in ("", "void", "none"):
        return None
    return values[-1].split(",")


class Sampler(threading.Thread):
    """Every 0.3 s: the GPUs of each running container of the hub; collisions are kept."""

    def __init__(self, hub: Hub, client: docker.DockerClient, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.hub, self.client, self.stop_event = hub, client, stop
        self.samples = 0
        self.collisions: list[dict[str, list[str]]] = []
        self.max_gpu_servers = 0
        self._pids: dict[str, int] = {}

    def run(self) -> None:
        label = f"io.gpu-workspaces.prefix={self.hub.prefix}"
        while not self.stop_event.is_set():
            started = time.monotonic()
            seen: dict[str, list[str]] = {}
            for summary in self.client.api.containers(filters={"label": label}):
                pid = self._pids.get(summary["Id"])
                if pid is None:
                    try:
                        pid = self.client.api.inspect_container(summary["Id"])["State"]["Pid"]
                    except docker.errors.NotFound:
                        continue
                    self._pids[summary["Id"]] = pid
                gpus = _pid1_gpus(pid) if pid else None
                if gpus:
                    seen[summary["Names"][0]] = gpus
            counts = collections.Counter(g for gpus in seen.values() for g in gpus)
            if any(n > 1 for n in counts.values()):
                self.collisions.append(seen)
            self.max_gpu_servers = max(self.max_gpu_servers, len(seen))
            self.samples += 1
            time.sleep(max(0.0, SAMPLE_EVERY - (time.monotonic() - started)))


def _hammer(
    get: Any, url: str, stop: threading.Event, codes: collections.Counter[int], lock: Any
) -> None:
    while not stop.is_set():
        try:
            status = get(url, timeout=30).status_code
        except requests.RequestException:
            status = 0
        with lock:
            codes[status] += 1
        time.sleep(0.2)


def test_churn_never_puts_one_gpu_in_two_running_containers(
    start_hub, docker_client, artifacts_dir
):
    hub = start_hub(
        env={"GPUWS_GPU_INVENTORY": str(GPUS), "GPUWS_GPU_WAIT_TIMEOUT": "5"},
        extra_config=CONFIG,
    )
    for user in USERS:
        hub.ensure_user(user)
    rng = random.Random(20261202)
    stop = threading.Event()
    lock = threading.Lock()
    codes: collections.Counter[int] = collections.Counter()
    actions: collections.Counter[str] = collections.Counter()
    sampler = Sampler(hub, docker_client, stop)
    viewer = hub.login("churn-viewer")
    admin = requests.Session()
    admin.headers["Authorization"] = f"token {hub.token}"
    readers = [
        threading.Thread(
            target=_hammer,
            args=(viewer.get, f"{hub.url}/hub/spawn/churn-viewer", stop, codes, lock),
            daemon=True,
        ),
        threading.Thread(
            target=_hammer,
            args=(admin.get, f"{hub.url}/hub/api/gpus", stop, codes, lock),
            daemon=True,
        ),
    ]
    sampler.start()
    for reader in readers:
        reader.start()

    def record(action: str, response: requests.Response) -> None:
        with lock:
            codes[response.status_code] += 1
        actions[action] += 1

    def act(user: str) -> None:
        model = hub.server_model(user)
        if model is None:
            record("spawn", hub.request_spawn(user, {"profile": rng.choice(PROFILES)}))
        elif model.get("pending") == "spawn" and rng.random() < 0.4:
            record("stop_while_pending", hub.api("DELETE", f"/users/{user}/server"))
        elif model.get("ready") and rng.random() < 0.5:
            record("stop", hub.api("DELETE", f"/users/{user}/server"))

    def churn(users: list[str], seed: int) -> None:
        local = random.Random(seed)
        deadline = time.monotonic() + CHURN_SECONDS
        while time.monotonic() < deadline:
            act(local.choice(users))
            time.sleep(local.uniform(0.1, 0.8))

    workers = [
        threading.Thread(target=churn, args=(USERS[i::3], rng.randrange(1 << 30)), daemon=True)
        for i in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(CHURN_SECONDS + 120)
    stop.set()
    sampler.join(30)
    for reader in readers:
        reader.join(60)

    def settled() -> bool:
        return all(not (hub.server_model(u) or {}).get("pending") for u in USERS)

    wait_for(settled, timeout=180, interval=1)
    time.sleep(3)  # clean-ups of cancelled spawns finish, a poll runs
    ledger = {
        g["id"]: g["holder"]["user"]
        for g in hub.api("GET", "/gpus").json()["gpus"]
        if g["state"] == "held"
    }
    running: dict[str, str] = {}
    for container in hub.containers(docker_client, status="running"):
        pid = container.attrs["State"]["Pid"]
        for gpu in _pid1_gpus(pid) or []:
            running[gpu] = container.labels["io.gpu-workspaces.user"]
    figures = {
        "seconds": CHURN_SECONDS,
        "users": len(USERS),
        "gpus": GPUS,
        "spawns": actions["spawn"],
        "stops": actions["stop"],
        "stops_while_pending": actions["stop_while_pending"],
        "samples": sampler.samples,
        "collisions": len(sampler.collisions),
        "most_gpu_servers_at_once": sampler.max_gpu_servers,
        "responses": dict(sorted(codes.items())),
        "5xx": sum(n for code, n in codes.items() if code >= 500),
        "ledger_equals_docker": ledger == running,
    }
    (artifacts_dir / "churn-figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    print("churn figures:", json.dumps(figures))
    assert sampler.samples > CHURN_SECONDS, figures
    assert actions["spawn"] > 20 and actions["stop_while_pending"] > 0, figures
    assert not sampler.collisions, sampler.collisions[:3]
    assert figures["5xx"] == 0, figures
    assert codes[0] == 0, "requests that got no answer"
    assert ledger == running, (ledger, running)
