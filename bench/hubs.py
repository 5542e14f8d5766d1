"""The contenders: our spawner and stock DockerSpawner behind real hubs, and the floor.

Every contender uses the same image, the same Docker network (``gpuws-bench``, reached from
the host by container IP as the hub reaches it), the same uid and a named home volume. Time to
ready is measured the same way for each: from the moment the spawn is asked for until a
request *through the proxy* gets the server's own answer (``/user/<name>/api``); the floor has
no hub or proxy, so it is asked directly at the container's address.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.server
import json
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import requests
from harness import Hub
from jupyterhub import __version__ as jupyterhub_version

from .env import (
    BENCH_LABEL,
    BENCH_NETWORK,
    POLL_INTERVAL,
    answers,
    container_cpu_seconds,
    cpu_seconds,
    images,
    log,
)

OURS = "ours"
STOCK = "stock"
FLOOR = "floor"  # plain `jupyter server`
FLOOR_SU = "floor-singleuser"  # the image's own command, jupyterhub-singleuser
FLOOR_LAZY_OFF = "floor-lazy-off"  # plain `jupyter server`, the image's lazy imports off
LAZY_OFF = {"GPUWS_LAZY_IMPORTS": "0"}
# Variants of our spawner, to see what each setting is worth:
OURS_1THREAD = "ours-1thread"  # stock's single Docker thread
OURS_ALL_AT_ONCE = "ours-all-at-once"  # no start_concurrency limit (as before it existed)
VARIANT_CONFIG = {
    OURS_1THREAD: "c.GPUDockerSpawner.docker_threads = 1\n",
    OURS_ALL_AT_ONCE: "c.GPUDockerSpawner.start_concurrency = 0\n",
}

# Settings both hubs share: quiet logs (DEBUG costs the hub CPU), same timeouts.
COMMON_CONFIG = """
c.JupyterHub.log_level = "INFO"
c.JupyterHub.concurrent_spawn_limit = 0
"""


def stock_config(prefix: str, image: str) -> str:
    """Stock DockerSpawner with the settings our config gives GPUDockerSpawner."""
    return f"""
c.JupyterHub.spawner_class = "docker"
c.DockerSpawner.image = {image!r}
c.DockerSpawner.network_name = {BENCH_NETWORK!r}
c.DockerSpawner.use_internal_ip = True
c.DockerSpawner.remove = True
c.DockerSpawner.pull_policy = "ifnotpresent"
c.DockerSpawner.prefix = {prefix!r}
c.DockerSpawner.volumes = {{{prefix + "-home-{username}"!r}: "/home/jovyan"}}
c.DockerSpawner.notebook_dir = "/home/jovyan"
c.DockerSpawner.default_url = "/lab"
c.DockerSpawner.http_timeout = 60
c.DockerSpawner.start_timeout = 600
# only so that the bench can find and remove what this hub made
c.DockerSpawner.extra_create_kwargs = {{"labels": {{"io.gpu-workspaces.prefix": {prefix!r}}}}}
"""


def fake_inventory(n: int) -> str:
    """``n`` fake GPUs with indexes from 100: the pool counts every container on the engine,
    and other hubs' test containers on this engine hold GPUs "0", "1", …"""
    return json.dumps(
        [{"id": f"GPU-{i:08x}-0000-4000-8000-0000000be7c4", "index": 100 + i} for i in range(n)]
    )


@dataclass
class Outcome:
    """One server's spawn: seconds from request to answer through the proxy, or why not."""

    name: str
    seconds: float | None = None
    error: str | None = None
    # CPU seconds the hub process spent during the whole batch this spawn was part of
    hub_cpu_s: float | None = None
    # CPU seconds the server's container used from its start until it answered (floors)
    server_cpu_s: float | None = None


@dataclass
class BenchHub:
    """A hub (our spawner or stock DockerSpawner) started from the project's config."""

    kind: str
    gpus: int = 40
    extra_config: str = ""
    env: dict[str, str] = field(default_factory=dict)
    prefix: str = field(default_factory=lambda: f"gpuwsb{secrets.token_hex(3)}")
    hub: Hub | None = None

    def start(self) -> BenchHub:
        workdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-", dir="/tmp"))
        config = COMMON_CONFIG + self.extra_config
        if self.kind == STOCK:
            config += stock_config(self.prefix, images()["cpu"])
        env = {
            "GPUWS_NETWORK": BENCH_NETWORK,
            "GPUWS_GPU_INVENTORY": fake_inventory(self.gpus),
            "GPUWS_GPU_WAIT_TIMEOUT": "120",
            "GPUWS_HTTP_TIMEOUT": "60",
            **self.env,
        }
        self.hub = Hub(prefix=self.prefix, workdir=workdir, env=env, extra_config=config)
        self.hub.start()
        return self

    @property
    def h(self) -> Hub:
        assert self.hub is not None, "hub not started"
        return self.hub

    def stop(self, client: docker.DockerClient) -> None:
        if self.hub is not None:
            self.hub.cleanup(client)
            shutil.rmtree(self.hub.workdir, ignore_errors=True)

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """The hub's REST API, with a long timeout (spawns under load answer late)."""
        return requests.request(
            method,
            f"{self.h.url}/hub/api{path}",
            headers={"Authorization": f"token {self.h.token}"},
            timeout=300,
            **kwargs,
        )

    # -- users and servers ----------------------------------------------------------------

    def ensure_users(self, names: Sequence[str]) -> None:
        existing = {u["name"] for u in self.api("GET", "/users").json()}
        missing = [n for n in names if n not in existing]
        if missing:
            r = self.api("POST", "/users", json={"usernames": missing})
            assert r.status_code == 201, r.text

    def routes(self, session: requests.Session) -> set[str]:
        r = session.get(
            f"http://127.0.0.1:{self.h.proxy_api_port}/api/routes",
            headers={"Authorization": f"token {self.h.token}proxy"},
            timeout=5,
        )
        r.raise_for_status()
        return {key.rstrip("/") for key in r.json()}

    def servers(self) -> dict[str, dict[str, Any] | None]:
        r = self.api("GET", "/users")
        r.raise_for_status()
        return {u["name"]: (u.get("servers") or {}).get("") for u in r.json()}

    def server_url(self, name: str) -> str:
        return f"{self.h.url}/user/{name}/api"

    def spawn_many(
        self, names: Sequence[str], options: dict[str, Any] | None = None, timeout: float = 240
    ) -> list[Outcome]:
        """Ask for every server at once; time each until it answers through the proxy."""
        self.ensure_users(names)
        outcomes = {n: Outcome(n) for n in names}
        started: dict[str, float] = {}
        posted: dict[str, int] = {}

        def post(name: str) -> None:
            started[name] = time.perf_counter()
            try:
                r = self.api("POST", f"/users/{name}/server", json=options or {})
            except requests.RequestException as e:
                posted[name] = -1
                outcomes[name].error = f"request failed: {e}"
                return
            posted[name] = r.status_code
            if r.status_code not in (201, 202):
                outcomes[name].error = f"HTTP {r.status_code}: {r.text[:200]}"

        session = requests.Session()
        pending = set(names)
        cpu_before = cpu_seconds(self.hub_pid())
        deadline = time.perf_counter() + timeout
        next_state_check = time.perf_counter() + 1.0
        with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
            for name in names:
                pool.submit(post, name)
            while pending and time.perf_counter() < deadline:
                pending -= {n for n in pending if outcomes[n].error}
                routed = self.routes(session) if pending else set()
                for name in sorted(pending):
                    if f"/user/{name}" in routed and answers(self.server_url(name), session):
                        outcomes[name].seconds = time.perf_counter() - started[name]
                        pending.discard(name)
                if pending and time.perf_counter() > next_state_check:
                    next_state_check = time.perf_counter() + 1.0
                    models = self.servers()
                    for name in pending:
                        if name in posted and models.get(name) is None:
                            outcomes[name].error = "server stopped while starting"
                time.sleep(POLL_INTERVAL)
        hub_cpu = cpu_seconds(self.hub_pid()) - cpu_before
        for outcome in outcomes.values():
            outcome.hub_cpu_s = hub_cpu
        for name in pending:
            if not outcomes[name].error:
                outcomes[name].error = f"not ready in {timeout:.0f}s"
        failed = [o for o in outcomes.values() if o.error]
        if failed:
            log(f"{self.kind}: {len(failed)} failed, e.g. {failed[0].name}: {failed[0].error}")
            log(self.h.log_tail(15))
        return [outcomes[n] for n in names]

    def stop_many(self, names: Sequence[str], timeout: float = 180) -> None:
        def delete(name: str) -> None:
            with contextlib.suppress(requests.RequestException):
                self.api("DELETE", f"/users/{name}/server")

        with concurrent.futures.ThreadPoolExecutor(max(1, len(names))) as pool:
            list(pool.map(delete, names))
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            models = self.servers()
            if all(models.get(n) is None for n in names):
                return
            time.sleep(0.25)
        raise RuntimeError(f"{self.kind}: servers still there after {timeout}s")

    def all_answer(self, names: Sequence[str], timeout: float = 240) -> float | None:
        """Seconds until every server answers through the proxy (None: not in time)."""
        started = time.perf_counter()
        session = requests.Session()
        pending = set(names)
        while pending and time.perf_counter() - started < timeout:
            pending -= {n for n in sorted(pending) if answers(self.server_url(n), session)}
            if pending:
                time.sleep(POLL_INTERVAL)
        return None if pending else time.perf_counter() - started

    def container_ids(self, client: docker.DockerClient) -> list[str]:
        return [c.id for c in self.h.containers(client, status="running")]

    def hub_pid(self) -> int:
        assert self.h.process is not None
        return self.h.process.pid


# -- the floor: plain `docker run` of the same image ---------------------------------------

SERVER = "server"  # floor command: plain `jupyter server`
SINGLEUSER = "singleuser"  # floor command: the image's own, jupyterhub-singleuser


class _StubHubHandler(http.server.BaseHTTPRequestHandler):
    """What jupyterhub-singleuser asks its hub for on its own: the version check and activity."""

    def _answer(self) -> None:
        body = json.dumps({"version": jupyterhub_version}).encode()
        self.send_response(200)
        self.send_header("X-JupyterHub-Version", jupyterhub_version)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class StubHubAPI:
    """A stand-in hub API on the bench network, so the floor can run jupyterhub-singleuser."""

    def __init__(self, client: docker.DockerClient) -> None:
        network = client.networks.get(BENCH_NETWORK)
        self.host = network.attrs["IPAM"]["Config"][0]["Gateway"]
        self.server = http.server.ThreadingHTTPServer((self.host, 0), _StubHubHandler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hub/api"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Floor:
    """The same image started with a plain create + start: no hub, proxy or spawner.

    ``command``: ``server`` runs plain ``jupyter server``; ``singleuser`` runs the image's own
    command (``jupyterhub-singleuser``) with the environment a hub would give it, talking to
    :class:`StubHubAPI` for its start-up version check. Same image, network, uid and a named
    home volume as the spawned servers. Readiness is asked at the container's address.
    """

    image: str
    mode: str = SERVER
    stub: StubHubAPI | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    prefix: str = field(default_factory=lambda: f"gpuwsf{secrets.token_hex(3)}")

    def command(self, name: str) -> list[str] | None:
        if self.mode == SINGLEUSER:
            return None  # the image's CMD
        return [
            "jupyter",
            "server",
            "--ip=0.0.0.0",
            "--port=8888",
            f"--ServerApp.base_url=/user/{name}/",
            "--ServerApp.root_dir=/home/jovyan",
            "--IdentityProvider.token=",
        ]

    def environment(self, name: str) -> dict[str, str]:
        if self.mode != SINGLEUSER:
            return dict(self.extra_env)
        assert self.stub is not None, "the singleuser floor needs a StubHubAPI"
        prefix = f"/user/{name}/"
        return {
            "JUPYTERHUB_API_TOKEN": secrets.token_hex(16),
            "JUPYTERHUB_API_URL": self.stub.url,
            "JUPYTERHUB_BASE_URL": "/",
            "JUPYTERHUB_CLIENT_ID": f"jupyterhub-user-{name}",
            "JUPYTERHUB_USER": name,
            "JUPYTERHUB_SERVER_NAME": "",
            "JUPYTERHUB_SERVICE_PREFIX": prefix,
            "JUPYTERHUB_SERVICE_URL": f"http://0.0.0.0:8888{prefix}",
            "JUPYTERHUB_OAUTH_CALLBACK_URL": f"{prefix}oauth_callback",
            "JUPYTERHUB_ACTIVITY_URL": f"{self.stub.url}/users/{name}/activity",
            "JUPYTERHUB_ROOT_DIR": "/home/jovyan",
            **self.extra_env,
        }

    def container_name(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def start(self, client: docker.DockerClient, name: str, timeout: float = 240) -> Outcome:
        api = client.api
        started = time.perf_counter()
        try:
            host_config = api.create_host_config(
                network_mode=BENCH_NETWORK,
                binds={f"{self.prefix}-home-{name}": {"bind": "/home/jovyan", "mode": "rw"}},
            )
            created = api.create_container(
                self.image,
                command=self.command(name),
                environment=self.environment(name),
                name=self.container_name(name),
                user="1000:100",
                labels={BENCH_LABEL: self.prefix},
                host_config=host_config,
            )
            api.start(created["Id"])
            info = api.inspect_container(created["Id"])
            ip = info["NetworkSettings"]["Networks"][BENCH_NETWORK]["IPAddress"]
        except docker.errors.APIError as e:
            return Outcome(name, error=str(e))
        url = f"http://{ip}:8888/user/{name}/api"
        session = requests.Session()
        while time.perf_counter() - started < timeout:
            if answers(url, session):
                seconds = time.perf_counter() - started
                cpu = container_cpu_seconds(client, created["Id"])
                return Outcome(name, seconds=seconds, server_cpu_s=cpu)
            time.sleep(POLL_INTERVAL)
        return Outcome(name, error=f"not ready in {timeout:.0f}s")

    def start_many(self, client: docker.DockerClient, names: Sequence[str]) -> list[Outcome]:
        with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
            return list(pool.map(lambda n: self.start(client, n), names))

    def stop_many(self, client: docker.DockerClient, names: Sequence[str]) -> None:
        def remove(name: str) -> None:
            with contextlib.suppress(docker.errors.APIError):
                client.api.remove_container(self.container_name(name), force=True)

        with concurrent.futures.ThreadPoolExecutor(max(1, len(names))) as pool:
            list(pool.map(remove, names))

    def container_ids(self, client: docker.DockerClient) -> list[str]:
        return [
            c.id for c in client.containers.list(filters={"label": f"{BENCH_LABEL}={self.prefix}"})
        ]

    def cleanup(self, client: docker.DockerClient) -> None:
        for container in client.containers.list(
            all=True, filters={"label": f"{BENCH_LABEL}={self.prefix}"}
        ):
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
        for volume in client.volumes.list(filters={"name": self.prefix}):
            with contextlib.suppress(docker.errors.APIError):
                volume.remove(force=True)


@contextlib.contextmanager
def contenders(
    client: docker.DockerClient, *kinds: str, gpus: int = 40
) -> Iterator[dict[str, Any]]:
    """Start the asked-for hubs (and the floor); remove everything they made afterwards."""
    made: dict[str, Any] = {}
    try:
        for kind in kinds:
            if kind == FLOOR:
                made[kind] = Floor(images()["cpu"])
            elif kind == FLOOR_LAZY_OFF:
                made[kind] = Floor(images()["cpu"], extra_env=LAZY_OFF)
            elif kind == FLOOR_SU:
                stub = StubHubAPI(client)
                made[kind] = Floor(images()["cpu"], mode=SINGLEUSER, stub=stub)
            else:
                log(f"starting the {kind} hub")
                extra = VARIANT_CONFIG.get(kind, "")
                made[kind] = BenchHub(kind, gpus=gpus, extra_config=extra).start()
        yield made
    finally:
        for thing in made.values():
            with contextlib.suppress(Exception):
                if isinstance(thing, Floor):
                    thing.cleanup(client)
                    if thing.stub is not None:
                        thing.stub.close()
                else:
                    thing.stop(client)
