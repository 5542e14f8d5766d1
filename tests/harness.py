"""The real parts the tests run against: a Docker engine with a fake GPU hook, the images,
and JupyterHub + configurable-http-proxy started from the project's own jupyterhub_config.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import engine
import requests

REPO = Path(__file__).resolve().parents[1]
FAKE_HOOK_CALLS = Path(os.environ.get("FAKE_GPU_HOOK_CALLS", "/run/fake-gpu-hook"))
TEST_NETWORK = "gpuws-test"
LABEL_PREFIX_NAME = "io.gpu-workspaces.prefix"


def versions() -> dict[str, str]:
    """images/versions.env as a dict (image names and pinned versions)."""
    values: dict[str, str] = {}
    for line in (REPO / "images" / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip('"').strip("'")
    return values


def in_engine_netns() -> bool:
    """Whether this process runs in the private engine's network namespace."""
    try:
        return os.stat("/proc/self/ns/net").st_ino == os.stat(engine.NETNS_PATH).st_ino
    except OSError:
        return False


def private_engine_problem() -> str | None:
    """Why the Docker tests cannot run here, as a sentence for the person running them."""
    how = (
        "run the tests with `make test` (or scripts/run-tests.sh, which passes its "
        "arguments to pytest): it starts the tests' private Docker engine and runs pytest "
        "in that engine's network namespace"
    )
    if os.environ.get("DOCKER_HOST") != engine.DOCKER_HOST:
        return f"DOCKER_HOST is not the tests' private engine ({engine.DOCKER_HOST}); {how}"
    if not in_engine_netns():
        return f"pytest does not run in the network namespace {engine.NETNS}; {how}"
    if not engine.answers():
        return f"the tests' private Docker engine does not answer; {how}"
    return None


def private_engine_client() -> docker.DockerClient:
    """A client of the tests' private engine; never of the machine's own engine."""
    if problem := private_engine_problem():
        raise RuntimeError(problem)
    return docker.DockerClient(base_url=engine.DOCKER_HOST, version="auto", timeout=120)


def build_images(*names: str) -> None:
    started = time.monotonic()
    subprocess.run(["bash", str(REPO / "scripts" / "build-images.sh"), *names], check=True)
    print(f"images {names} ready in {time.monotonic() - started:.1f}s", file=sys.stderr)


def nvidia_driver_registered(client: docker.DockerClient, image: str) -> bool:
    """Whether dockerd's nvidia device driver is on (i.e. it found the hook on its PATH).

    The probe container is removed whatever happens: a failed start leaves it "created".
    """
    request = docker.types.DeviceRequest(device_ids=["0"], capabilities=[["gpu"]])
    container = client.containers.create(image, ["true"], device_requests=[request])
    try:
        container.start()
        container.wait(timeout=60)
    except docker.errors.APIError as e:
        if "could not select device driver" in str(e):
            return False
        raise
    finally:
        container.remove(force=True)
    return True


def hook_calls_for(container_id: str) -> list[dict[str, Any]]:
    """OCI states the fake hook recorded for one container."""
    calls = []
    for path in sorted(FAKE_HOOK_CALLS.glob(f"{container_id}-*.json")):
        calls.append(json.loads(path.read_text()))
    return calls


_PORTS_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free port on 127.0.0.1, never one this process handed out before: the kernel may
    offer a just-closed port again, and a hub's proxy port and proxy API port once came out
    the same (EADDRINUSE)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _PORTS_HANDED_OUT:
            _PORTS_HANDED_OUT.add(port)
            return port


def container_env(client: docker.DockerClient, container_id: str) -> dict[str, str]:
    """The environment of the container's main process, as the kernel sees it.

    Docker's nvidia driver adds NVIDIA_VISIBLE_DEVICES to the OCI spec of process 1 only, so
    `docker exec env` would not show it.
    """
    container = client.containers.get(container_id)
    code, output = container.exec_run(["cat", "/proc/1/environ"])
    assert code == 0, output
    pairs = [item.split("=", 1) for item in output.decode().split("\0") if "=" in item]
    return {k: v for k, v in pairs}


def visible_gpus(client: docker.DockerClient, container_id: str) -> list[str]:
    """The GPU ids Docker's nvidia driver handed the container (NVIDIA_VISIBLE_DEVICES)."""
    return container_env(client, container_id)["NVIDIA_VISIBLE_DEVICES"].split(",")


@dataclass
class Hub:
    """A running JupyterHub (with its proxy) started from the project's config."""

    prefix: str
    workdir: Path
    env: dict[str, str]
    extra_config: str
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    port: int = field(default_factory=free_port)
    proxy_api_port: int = field(default_factory=free_port)
    hub_api_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "hub.log"

    def write_config(self) -> Path:
        path = self.workdir / "test_hub_config.py"
        path.write_text(
            f"""
c = get_config()
load_subconfig({str(REPO / "jupyterhub_config.py")!r})
c.JupyterHub.bind_url = {self.url!r}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.proxy_api_port}"
c.ConfigurableHTTPProxy.auth_token = {self.token + "proxy"!r}
# appended: the project's own services (the idle culler) keep running in tests
c.JupyterHub.services.append({{"name": "test-admin", "api_token": {self.token!r}}})
c.JupyterHub.load_roles.append({{
    "name": "test-admin",
    "scopes": ["admin:users", "admin:servers", "tokens", "access:servers", "list:users",
               "read:users", "admin:groups"],
    "services": ["test-admin"],
}})
c.GPUDockerSpawner.prefix = {self.prefix!r}
c.JupyterHub.log_level = "DEBUG"
{self.extra_config}
# Settings added after the project's config are checked the same way at start-up.
from spawner.hub.config import check_spawner_config
check_spawner_config(c)
"""
        )
        return path

    def start(self, timeout: float = 60) -> Hub:
        config = self.write_config()
        env = dict(os.environ)
        env.update(
            {
                "GPUWS_STATE_DIR": str(self.workdir / "state"),
                "GPUWS_NETWORK": TEST_NETWORK,
                "GPUWS_AUTHENTICATOR": "dummy",
                # dummy is refused on a non-loopback bind: say where this hub listens
                "GPUWS_BIND_URL": self.url,
                "GPUWS_HOME_VOLUME": f"{self.prefix}-home-{{username}}",
                "GPUWS_HUB_API_PORT": str(self.hub_api_port),
                "GPUWS_NOTEBOOK_IMAGE": versions()["NOTEBOOK_CPU_IMAGE"],
                "GPUWS_GPU_IMAGE": versions()["NOTEBOOK_CUDA_IMAGE"],
            }
        )
        env.update(self.env)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(config)],
            cwd=self.workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"hub exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/hub/health", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"hub did not answer in {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the hub and its proxy; notebook containers keep running (as in production)."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self.process = None

    def restart(self) -> Hub:
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- REST API ----------------------------------------------------------------------

    def api(
        self, method: str, path: str, *, token: str | None = None, **kwargs: Any
    ) -> requests.Response:
        headers = {"Authorization": f"token {token or self.token}"}
        return requests.request(
            method, f"{self.url}/hub/api{path}", headers=headers, timeout=60, **kwargs
        )

    def ensure_user(self, name: str, *, admin: bool = False) -> None:
        r = self.api("GET", f"/users/{name}")
        if r.status_code == 404:
            r = self.api("POST", f"/users/{name}", json={"admin": admin})
            assert r.status_code == 201, r.text

    def user_token(self, name: str) -> str:
        self.ensure_user(name)
        r = self.api("POST", f"/users/{name}/tokens", json={"note": "test"})
        assert r.status_code in (200, 201), r.text
        return str(r.json()["token"])

    def login(self, name: str, password: str = "any") -> requests.Session:
        """A browser-like session signed in through the login form (DummyAuthenticator)."""
        session = requests.Session()
        page = session.get(f"{self.url}/hub/login", timeout=30)
        page.raise_for_status()
        xsrf = session.cookies.get("_xsrf", "")
        r = session.post(
            f"{self.url}/hub/login",
            data={"username": name, "password": password, "_xsrf": xsrf},
            allow_redirects=False,
            timeout=30,
        )
        assert r.status_code == 302, f"login failed: {r.status_code}"
        return session

    def request_spawn(
        self, name: str, options: Any = None, *, server: str = "", raw: bytes | None = None
    ) -> requests.Response:
        self.ensure_user(name)
        path = f"/users/{name}/servers/{server}" if server else f"/users/{name}/server"
        if raw is not None:
            return self.api("POST", path, data=raw)
        return self.api("POST", path, json=options if options is not None else {})

    def server_model(self, name: str, server: str = "") -> dict[str, Any] | None:
        r = self.api("GET", f"/users/{name}")
        r.raise_for_status()
        return r.json().get("servers", {}).get(server)  # type: ignore[no-any-return]

    def wait_ready(self, name: str, server: str = "", timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.server_model(name, server)
            if model and model.get("ready"):
                return model
            if model is None or not model.get("pending"):
                raise AssertionError(f"{name}/{server} is not starting: {model}\n{self.log_tail()}")
            time.sleep(0.2)
        raise AssertionError(f"{name}/{server} not ready in {timeout}s\n{self.log_tail()}")

    def wait_gone(self, name: str, server: str = "", timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.server_model(name, server)
            if model is None:
                return
            time.sleep(0.2)
        raise AssertionError(f"{name}/{server} still there after {timeout}s")

    def spawn(
        self, name: str, options: Any = None, *, server: str = "", timeout: float = 120
    ) -> dict[str, Any]:
        r = self.request_spawn(name, options, server=server)
        assert r.status_code in (201, 202), f"{r.status_code} {r.text}\n{self.log_tail()}"
        return self.wait_ready(name, server, timeout)

    def stop_server(self, name: str, server: str = "", timeout: float = 120) -> None:
        path = f"/users/{name}/servers/{server}" if server else f"/users/{name}/server"
        r = self.api("DELETE", path)
        assert r.status_code in (202, 204), r.text
        self.wait_gone(name, server, timeout)

    def progress_events(self, name: str, server: str = "", timeout: float = 60) -> list[dict]:
        """The spawn progress stream (what the progress page shows), until it ends."""
        path = (
            f"/users/{name}/servers/{server}/progress"
            if server
            else f"/users/{name}/server/progress"
        )
        events = []
        with self.api("GET", path, stream=True) as r:
            for line in r.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    event = json.loads(line[5:])
                    events.append(event)
                    if event.get("ready") or event.get("failed"):
                        break
        return events

    # -- what Docker shows -------------------------------------------------------------

    def containers(self, client: docker.DockerClient, **filters: Any) -> list[Any]:
        labels = [f"{LABEL_PREFIX_NAME}={self.prefix}"]
        return list(client.containers.list(all=True, filters={"label": labels, **filters}))

    def server_container(self, client: docker.DockerClient, user: str, server: str = "") -> Any:
        """The running container of ``user``'s server ``server`` (default: the unnamed one)."""
        for container in self.containers(client, status="running"):
            labels = container.labels
            if (
                labels["io.gpu-workspaces.user"] == user
                and labels["io.gpu-workspaces.server"] == server
            ):
                return container
        raise AssertionError(f"no running container for {user}/{server}")

    def cleanup(self, client: docker.DockerClient) -> None:
        self.stop()
        for container in self.containers(client):
            container.remove(force=True)
        for volume in client.volumes.list(filters={"name": self.prefix}):
            with contextlib.suppress(docker.errors.APIError):
                volume.remove(force=True)


def wait_for(predicate: Any, timeout: float = 30, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met in {timeout}s")
