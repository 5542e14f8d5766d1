"""The compose deployment, driven exactly as the README's quick start says: `make up`,
`make down`, `make up` again, with the default login (sign-up + admin approval).

Each stack gets its own project name, port, network, volumes and container prefix (all
settings of docker-compose.yaml), so it runs beside a real deployment and other tests, and
is removed with its volumes at the end. The GPUs are a static fake inventory.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
from harness import REPO, build_images, free_port, wait_for
from native_auth import api_token, log_in, sign_up
from test_auth_security import self_signed_certificate

pytestmark = pytest.mark.compose

MAKE_TIMEOUT = 600


@dataclass
class Stack:
    """One compose deployment of this repository under its own names."""

    client: docker.DockerClient
    extra_env: dict[str, str] = field(default_factory=dict)
    name: str = field(default_factory=lambda: f"gpuwsc{secrets.token_hex(3)}")
    port: int = field(default_factory=free_port)

    @property
    def env(self) -> dict[str, str]:
        # The caller's settings stay out, except how this engine's images are built.
        keep = ("GPUWS_BUILD_PROXY", "GPUWS_OFFLINE")
        env = {
            k: v
            for k, v in os.environ.items()
            if k in keep or not k.startswith(("GPUWS_", "OAUTH"))
        }
        env.update(
            {
                "COMPOSE_PROJECT_NAME": self.name,
                "HUB_BIND": "127.0.0.1",
                "HUB_PORT": str(self.port),
                "GPUWS_NETWORK": f"{self.name}-net",
                "GPUWS_HUB_STATE_VOLUME": f"{self.name}-hub-state",
                "GPUWS_HOME_VOLUME": f"{self.name}-home-{{username}}",
                "GPUWS_CONTAINER_PREFIX": self.name,
            }
        )
        env.update(self.extra_env)
        return env

    @property
    def url(self) -> str:
        scheme = "https" if self.extra_env.get("GPUWS_SSL_CERT") else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def make(self, *args: str) -> tuple[str, float]:
        """Run a make target of the README; returns its output and seconds taken."""
        started = time.monotonic()
        result = subprocess.run(
            ["make", "-C", str(REPO), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=MAKE_TIMEOUT,
        )
        seconds = time.monotonic() - started
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"make {' '.join(args)} failed:\n{output[-4000:]}"
        return output, seconds

    def hub_container(self, service: str = "hub") -> Any:
        found = self.client.containers.list(
            all=True,
            filters={
                "label": [
                    f"com.docker.compose.project={self.name}",
                    f"com.docker.compose.service={service}",
                ]
            },
        )
        assert len(found) == 1, [c.name for c in found]
        return found[0]

    def notebook_containers(self) -> list[Any]:
        return list(
            self.client.containers.list(
                all=True, filters={"label": [f"io.gpu-workspaces.prefix={self.name}"]}
            )
        )

    def hub_logs(self) -> str:
        with contextlib.suppress(docker.errors.NotFound, AssertionError):
            return str(self.hub_container().logs().decode(errors="replace"))
        return ""

    def teardown(self) -> None:
        subprocess.run(
            ["bash", str(REPO / "scripts" / "down.sh"), "-v"],
            env={**self.env, "GPUWS_STOP_SERVERS": "1"},
            capture_output=True,
            timeout=MAKE_TIMEOUT,
        )
        for container in self.notebook_containers():
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
        for volume in self.client.volumes.list(filters={"name": self.name}):
            with contextlib.suppress(docker.errors.APIError):
                volume.remove(force=True)
        with contextlib.suppress(docker.errors.APIError):
            self.client.networks.get(f"{self.name}-net").remove()
        # The guard's rules outlive its container (by design); the test takes them out.
        subprocess.run(
            [sys.executable, "-m", "spawner", "netguard", "--remove"],
            env={**self.env, "GPUWS_NETWORK": f"{self.name}-net"},
            cwd=REPO,
            capture_output=True,
            timeout=60,
        )


@pytest.fixture
def stack(docker_client, notebook_images, fake_gpu_hook) -> Iterator[Callable[..., Stack]]:
    build_images("hub")
    stacks: list[Stack] = []

    def make_stack(**extra_env: str) -> Stack:
        s = Stack(docker_client, extra_env=extra_env)
        stacks.append(s)
        return s

    yield make_stack
    for s in stacks:
        s.teardown()
        assert not docker_client.volumes.list(filters={"name": s.name})


def _wait_ready(url: str, token: str, user: str, timeout: float = 180) -> dict[str, Any]:
    headers = {"Authorization": f"token {token}"}

    def ready() -> dict[str, Any] | None:
        model = requests.get(f"{url}/hub/api/users/{user}", headers=headers, timeout=30).json()
        server = model["servers"].get("")
        return server if server and server.get("ready") else None

    return wait_for(ready, timeout=timeout, interval=0.5)  # type: ignore[no-any-return]


def test_make_up_down_up_keeps_users_servers_and_homes(stack, docker_client):
    s = stack(GPUWS_GPU_INVENTORY="2", GPUWS_ADMIN_USERS="boss", GPUWS_LOGIN_LOCKOUT_SECONDS="5")
    first, first_s = s.make("up")
    assert f"GPU workspaces are up:  http://127.0.0.1:{s.port}/" in first
    assert "Log in as: boss" in first
    assert "preflight" not in first  # the static inventory serves the GPU profiles
    # The admin account exists before anyone can connect: its initial password, generated
    # into the state volume (mode 0600), is printed by this first `make up` only.
    shown = re.search(r"^  initial password: (\S+)$", first, re.M)
    assert shown, first
    initial = shown.group(1)
    state_file = "/srv/jupyterhub/state/initial_admin_password"
    assert hub_exec(s.hub_container(), f"stat -c %a {state_file}") == "600"
    assert hub_exec(s.hub_container(), f"cat {state_file}") == initial

    # Only the hub's port is published; the socket and the read-only config only in the hub.
    hub = s.hub_container()
    hub_ports = hub.attrs["HostConfig"]["PortBindings"]
    assert hub_ports == {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(s.port)}]}
    mounts = {m["Destination"]: m for m in hub.attrs["Mounts"]}
    assert mounts["/srv/jupyterhub/jupyterhub_config.py"]["RW"] is False
    assert mounts["/srv/jupyterhub/state"]["Name"] == f"{s.name}-hub-state"
    assert "/var/run/docker.sock" in mounts

    # An outsider who knows only the URL cannot become admin: the admin's name cannot be
    # signed up, guessed passwords are refused, and the account then locks (the right
    # password too; GPUWS_LOGIN_ATTEMPTS=5 by default) for GPUWS_LOGIN_LOCKOUT_SECONDS.
    password = secrets.token_urlsafe(12)
    assert "belongs to an administrator" in sign_up(s.url, "boss", password)
    for guess in ("admin", "password", "12345678", "boss"):
        with pytest.raises(AssertionError, match="Invalid username or password"):
            log_in(s.url, "boss", guess)
    for guess in ("changeme", initial):  # the 5th failure locks; then the right one is refused
        with pytest.raises(AssertionError, match=r"\(429\): Too many failed logins"):
            log_in(s.url, "boss", guess)
    # When the lockout ends the admin logs in; a second person signs up and is approved.
    locked = time.monotonic()
    session = wait_for(lambda: _try_log_in(s.url, "boss", initial), timeout=30, interval=1)
    assert time.monotonic() - locked >= 3
    token = api_token(session, s.url, "boss")
    headers = {"Authorization": f"token {token}"}
    assert "sent to the admin" in sign_up(s.url, "carla", password)
    with pytest.raises(AssertionError, match="has not been authorized"):
        log_in(s.url, "carla", password)
    session.get(f"{s.url}/hub/authorize/carla", timeout=30).raise_for_status()
    carla_token = api_token(log_in(s.url, "carla", password), s.url, "carla")

    # Spawn a 1-GPU server through the REST API and keep a file in the home.
    r = requests.post(
        f"{s.url}/hub/api/users/boss/server", json={"profile": "gpu-1"}, headers=headers, timeout=60
    )
    assert r.status_code in (201, 202), r.text
    _wait_ready(s.url, token, "boss")
    (notebook,) = s.notebook_containers()
    gpu = notebook.labels["io.gpu-workspaces.gpus"]
    assert notebook.attrs["HostConfig"]["PortBindings"] in (None, {})
    assert all("docker.sock" not in m["Source"] for m in notebook.attrs["Mounts"])
    assert notebook.attrs["NetworkSettings"]["Networks"].keys() == {f"{s.name}-net"}
    contents = f"{s.url}/user/boss/api/contents/kept.txt"
    r = requests.put(
        contents,
        json={"type": "file", "format": "text", "content": "still here"},
        headers=headers,
        timeout=30,
    )
    assert r.status_code in (200, 201), r.text

    down, _ = s.make("down")
    assert not docker_client.containers.list(
        all=True, filters={"label": [f"com.docker.compose.project={s.name}"]}
    ), down
    notebook.reload()
    assert notebook.status == "running"

    second, second_s = s.make("up")
    assert f"http://127.0.0.1:{s.port}/" in second
    # Shown once: later runs say where it is, not what it is.
    assert initial not in second and "cat /srv/jupyterhub/state/initial_admin_password" in second
    print(f"make up: first {first_s:.1f}s, after make down {second_s:.1f}s")
    assert second_s < 60  # cached images, nothing to build

    # Same users (the old token and password work), same server, same GPU, same file.
    server = _wait_ready(s.url, token, "boss", timeout=60)
    assert server["user_options"] == {"profile": "gpu-1"}
    assert [c.id for c in s.notebook_containers()] == [notebook.id]
    r = requests.get(contents, headers=headers, timeout=30)
    assert r.status_code == 200 and r.json()["content"] == "still here", r.text
    log_in(s.url, "boss", initial)

    # The hub still knows which GPU is taken: carla's 1-GPU server gets the other one.
    r = requests.post(
        f"{s.url}/hub/api/users/carla/server",
        json={"profile": "gpu-1"},
        headers={"Authorization": f"token {carla_token}"},
        timeout=60,
    )
    assert r.status_code in (201, 202), r.text
    _wait_ready(s.url, carla_token, "carla")
    gpus = sorted(c.labels["io.gpu-workspaces.gpus"] for c in s.notebook_containers())
    assert gpus == ["0", "1"] and gpu in gpus

    # Network isolation is on: both notebooks reached the hub's API (they are ready), the
    # guard's rules are installed for this stack's bridge, and carla's notebook cannot
    # open boss's notebook port.
    guard = s.hub_container("netguard")
    assert guard.attrs["HostConfig"]["NetworkMode"] == "host"
    assert guard.attrs["HostConfig"]["CapAdd"] == ["NET_ADMIN", "NET_RAW"]
    network = docker_client.networks.get(f"{s.name}-net")
    bridge = f"br-{network.id[:12]}"
    saved = subprocess.run(
        ["iptables-save", "-t", "filter"], capture_output=True, text=True, check=True
    ).stdout
    hub_address = s.hub_container().attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
    assert f"-A DOCKER-USER -i {bridge} -j GWS-F-{bridge}" in saved
    assert f"-A GWS-F-{bridge} -s {hub_address}/32 -j RETURN" in saved
    by_user = {c.labels["io.gpu-workspaces.user"]: c for c in s.notebook_containers()}
    boss_address = by_user["boss"].attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
    probe = (
        "import socket; s = socket.socket(); s.settimeout(3)\n"
        f"try: s.connect(({boss_address!r}, 8888)); print('open')\n"
        "except OSError as e: print(type(e).__name__)"
    )
    seen = by_user["carla"].exec_run(["python3", "-c", probe]).output.decode().strip()
    assert seen == "ConnectionRefusedError", seen

    # Nothing secret in what `make up` printed or in the hub's log.
    proxy_token = hub_exec(s.hub_container(), "cat /srv/jupyterhub/state/proxy_auth_token")
    logs = s.hub_logs()
    for secret in (password, token, carla_token, proxy_token):
        assert secret not in first + second + logs
    assert initial not in second + logs


def _try_log_in(url: str, name: str, password: str) -> requests.Session | None:
    try:
        return log_in(url, name, password)
    except (AssertionError, requests.RequestException):
        return None


def hub_exec(container: Any, command: str) -> str:
    code, out = container.exec_run(["sh", "-c", command])
    assert code == 0, out
    return str(out.decode().strip())


def _doc_block(doc: str, heading: str) -> str:
    """The first fenced code block after a heading of a document."""
    text = (REPO / doc).read_text()
    match = re.search(rf"^#+ {re.escape(heading)}\n.*?```[a-z]*\n(.*?)```", text, re.S | re.M)
    assert match, f"{doc} has no code block under {heading!r}"
    return match.group(1)


def test_oauth_block_from_the_readme_switches_the_login(stack, tmp_path: Path, monkeypatch):
    """The OAuth settings of docs/authentication.md, as they stand, give a GitHub login; and
    a host without visible GPUs gets the preflight message in `make up`'s output. This stack
    also serves HTTPS with a certificate made here, mounted the way docs/deploy.md#tls says."""
    settings = {}
    for line in _doc_block("docs/authentication.md", "Switching to OAuth").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    assert settings["GPUWS_AUTHENTICATOR"] == "github"
    secret = settings["OAUTH_CLIENT_SECRET"]
    cert, key = self_signed_certificate(tmp_path / "tls")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    tls = {
        "GPUWS_TLS_DIR": str(cert.parent),
        "GPUWS_SSL_CERT": f"/srv/jupyterhub/tls/{cert.name}",
        "GPUWS_SSL_KEY": f"/srv/jupyterhub/tls/{key.name}",
    }
    s = stack(**settings, **tls)
    output, _ = s.make("up")
    assert f"GPU workspaces are up:  https://127.0.0.1:{s.port}/" in output
    mounts = {m["Destination"]: m for m in s.hub_container().attrs["Mounts"]}
    assert mounts["/srv/jupyterhub/tls"]["Source"] == str(cert.parent)
    assert mounts["/srv/jupyterhub/tls"]["RW"] is False
    assert "Log in with github" in output
    assert "preflight: GPU profiles cannot be served" in output
    assert "GPU host wiring" in output

    r = requests.get(f"{s.url}/hub/oauth_login", allow_redirects=False, timeout=30)
    assert r.status_code == 302, r.text
    # Over HTTPS the hub's cookies (here the OAuth state) are Secure.
    set_cookies = r.raw.headers.getlist("Set-Cookie")
    assert set_cookies and all("; Secure" in c for c in set_cookies), set_cookies
    location = r.headers["Location"]
    assert location.startswith("https://github.com/login/oauth/authorize?")
    assert f"client_id={settings['OAUTH_CLIENT_ID']}" in location
    login_page = requests.get(f"{s.url}/hub/login", timeout=30).text
    assert "Sign in with GitHub" in login_page
    assert secret not in output + s.hub_logs()
