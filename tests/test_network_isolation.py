"""Network isolation on the real engine: what a notebook can and cannot reach.

Every target is one the test starts itself: another user's notebook, a listener on the Docker
host (the engine's network namespace), a listener on a private address outside Docker (the
host end of the namespace's link, standing in for an internal service), and a listener on a
documentation address (203.0.113.7, TEST-NET-3) put on the test's own link to stand in for
the internet; its packets never leave the machine. Each is reachable before the guard runs
(so every "refused" below can fail) and refused after, except the hub's API, the allowed
target and the internet stand-in. The metadata address is never contacted: the test reads the
installed rule that refuses it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import faults
import pytest
import requests
from harness import REPO, free_port, wait_for

from spawner.core import egress

pytestmark = pytest.mark.docker

HOST_LINK = "10.230.0.1"  # host end of the engine namespace's link (tests/engine.py)
NAMESPACE_LINK = "10.230.0.2"
INTERNET_STAND_IN = "203.0.113.7"
# The machine's own namespace, from scripts/test-engine.sh (the shell that started pytest).
HOST_NETNS = os.environ.get("GPUWS_HOST_NETNS", "/proc/1/ns/net")

LISTENER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16)
print("listening", flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"hello"); c.close()
"""
PROBE = """
import socket, sys
s = socket.socket(); s.settimeout(3)
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print("open")
except OSError as e:
    print("refused:", type(e).__name__)
"""
HUB_API_PROBE = """
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=5).status)
"""


@contextlib.contextmanager
def listener(address: str, port: int, *, netns: str | None = None) -> Iterator[None]:
    """A TCP server answering "hello" on ``address:port`` (in another namespace if given)."""
    command = [sys.executable, "-c", LISTENER, address, str(port)]
    if netns:
        command = ["nsenter", f"--net={netns}", "--", *command]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "listening"
        yield
    finally:
        process.kill()
        process.wait(10)


@contextlib.contextmanager
def internet_stand_in() -> Iterator[None]:
    """203.0.113.7 on the host end of the test's link, routed from the engine's namespace."""
    host_ip = ["nsenter", f"--net={HOST_NETNS}", "--", "ip"]
    subprocess.run(
        [*host_ip, "addr", "add", f"{INTERNET_STAND_IN}/32", "dev", "gws-t0"], check=True
    )
    try:
        subprocess.run(
            ["ip", "route", "replace", f"{INTERNET_STAND_IN}/32", "via", HOST_LINK], check=True
        )
        yield
    finally:
        subprocess.run(["ip", "route", "del", f"{INTERNET_STAND_IN}/32"], check=False)
        subprocess.run([*host_ip, "addr", "del", f"{INTERNET_STAND_IN}/32", "dev", "gws-t0"])


def probe(container, address: str, port: int) -> str:
    result = container.exec_run(["python3", "-c", PROBE, address, str(port)])
    return result.output.decode().strip()


def iptables_save() -> str:
    return subprocess.run(
        ["iptables-save", "-t", "filter"], capture_output=True, text=True, check=True
    ).stdout


def guard_env(network: str, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUWS_")}
    env.update({"GPUWS_NETWORK": network, **settings})
    return env


@contextlib.contextmanager
def running_guard(env: dict[str, str], ready: Path) -> Iterator[subprocess.Popen[bytes]]:
    ready.unlink(missing_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "spawner", "netguard", "--ready-file", str(ready)],
        cwd=REPO,
        env=env,
    )
    try:
        wait_for(lambda: ready.exists() or process.poll() is not None, timeout=30)
        assert process.poll() is None, "the guard exited"
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)


@pytest.fixture
def isolated_network(docker_client: docker.DockerClient) -> Iterator[str]:
    name = f"gpuws-isolation-{secrets.token_hex(3)}"
    yield name
    subprocess.run(
        [sys.executable, "-m", "spawner", "netguard", "--remove"],
        cwd=REPO,
        env=guard_env(name),
        check=False,
    )
    faults.reconnect(docker_client)
    with contextlib.suppress(docker.errors.NotFound):
        docker_client.networks.get(name).remove()


def test_notebooks_reach_the_hub_and_allowed_targets_only(
    isolated_network, start_hub, docker_client, tmp_path
):
    # (isolated_network first: it is removed after the hub's containers are)
    host_port, internal_port, allowed_port, internet_port = (free_port() for _ in range(4))
    hub = start_hub(env={"GPUWS_NETWORK": isolated_network})
    hub.spawn("alice", {"profile": "cpu"})
    hub.spawn("bob", {"profile": "cpu"})
    alice = hub.server_container(docker_client, "alice")
    bob = hub.server_container(docker_client, "bob")
    bob_address = bob.attrs["NetworkSettings"]["Networks"][isolated_network]["IPAddress"]
    gateway = docker_client.networks.get(isolated_network).attrs["IPAM"]["Config"][0]["Gateway"]
    hub_api = f"http://{gateway}:{hub.hub_api_port}/hub/api/"

    targets = {
        "another user's notebook": (bob_address, 8888),
        "the Docker host, through the gateway": (gateway, host_port),
        "the Docker host, on its other address": (NAMESPACE_LINK, host_port),
        "an internal service on a private address": (HOST_LINK, internal_port),
        "an allowed internal service": (HOST_LINK, allowed_port),
        "the internet (stand-in)": (INTERNET_STAND_IN, internet_port),
    }
    with contextlib.ExitStack() as stack:
        stack.enter_context(internet_stand_in())
        stack.enter_context(listener("0.0.0.0", host_port))
        for port in (internal_port, allowed_port):
            stack.enter_context(listener(HOST_LINK, port, netns=HOST_NETNS))
        stack.enter_context(listener(INTERNET_STAND_IN, internet_port, netns=HOST_NETNS))

        before = {what: probe(alice, *target) for what, target in targets.items()}
        assert set(before.values()) == {"open"}, before  # without the guard, all answer

        env = guard_env(
            isolated_network,
            GPUWS_HUB_API_PORT=str(hub.hub_api_port),
            GPUWS_EGRESS_ALLOW=f"{HOST_LINK}:{allowed_port}",
        )
        with running_guard(env, tmp_path / "ready"):
            after = {what: probe(alice, *target) for what, target in targets.items()}
            assert after == {
                "another user's notebook": "refused: ConnectionRefusedError",
                "the Docker host, through the gateway": "refused: ConnectionRefusedError",
                "the Docker host, on its other address": "refused: ConnectionRefusedError",
                "an internal service on a private address": "refused: ConnectionRefusedError",
                "an allowed internal service": "open",
                "the internet (stand-in)": "open",
            }
            # The hub's API still answers notebooks, and the proxy still reaches them.
            api = alice.exec_run(["python3", "-c", HUB_API_PROBE, hub_api])
            assert api.output.decode().strip() == "200", api.output
            r = requests.get(
                f"{hub.url}/user/alice/api/status",
                headers={"Authorization": f"token {hub.user_token('alice')}"},
                timeout=30,
            )
            assert r.status_code == 200, r.text

            bridge = _bridge(docker_client, isolated_network)
            forward, inbound = egress.chain_names(bridge)
            saved = iptables_save()
            # The metadata service is refused by rule; the test never sends it a packet.
            assert (
                f"-A {forward} -d 169.254.0.0/16 -j REJECT --reject-with icmp-port-unreachable"
                in saved
            )
            assert f"-A DOCKER-USER -i {bridge} -j {forward}" in saved
            assert f"-A INPUT -i {bridge} -j {inbound}" in saved

        # Internet off: the stand-in is refused too; the hub's API and allowed target stay.
        env["GPUWS_EGRESS_INTERNET"] = "0"
        with running_guard(env, tmp_path / "ready"):
            assert wait_for(
                lambda: probe(alice, INTERNET_STAND_IN, internet_port).startswith("refused")
            )
            assert probe(alice, HOST_LINK, allowed_port) == "open"
            api = alice.exec_run(["python3", "-c", HUB_API_PROBE, hub_api])
            assert api.output.decode().strip() == "200", api.output


def _bridge(client: docker.DockerClient, network: str) -> str:
    net = client.networks.get(network)
    return (net.attrs.get("Options") or {}).get("com.docker.network.bridge.name") or (
        f"br-{net.id[:12]}"
    )


@contextlib.contextmanager
def two_containers(client: docker.DockerClient, image: str, network: str) -> Iterator[tuple]:
    """Two plain containers on ``network``; the first listens on 8890. Yields (server address,
    the other container)."""
    started = [
        client.containers.run(
            image, ["sleep", "300"], network=network, detach=True, remove=True, init=True
        )
        for _ in range(2)
    ]
    try:
        server, other = started
        server.exec_run(["python3", "-c", LISTENER, "0.0.0.0", "8890"], detach=True)
        server.reload()
        address = server.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]
        wait_for(lambda: probe(server, "127.0.0.1", 8890) == "open", timeout=10)
        yield address, other
    finally:
        for container in started:
            with contextlib.suppress(docker.errors.APIError):
                container.kill()


def test_the_rules_survive_a_restart_of_the_engine(
    docker_client, notebook_images, isolated_network, tmp_path
):
    docker_client.networks.create(isolated_network, driver="bridge")
    bridge = _bridge(docker_client, isolated_network)
    forward, _ = egress.chain_names(bridge)
    with two_containers(docker_client, notebook_images["cpu"], isolated_network) as (address, c):
        assert probe(c, address, 8890) == "open"  # Docker alone lets containers talk
        with running_guard(guard_env(isolated_network), tmp_path / "ready"):
            assert probe(c, address, 8890) == "refused: ConnectionRefusedError"
    # The guard is not running from here on: what follows is the rules' own doing.
    before = iptables_save()
    assert f"-A DOCKER-USER -i {bridge} -j {forward}" in before

    with faults.docker_daemon_stopped() as daemon:
        daemon.start()
    faults.reconnect(docker_client)
    after = iptables_save()
    for chain in egress.chain_names(bridge):
        assert egress.chain_rules(after, chain) == egress.chain_rules(before, chain) != []
    assert f"-A DOCKER-USER -i {bridge} -j {forward}" in after
    with two_containers(docker_client, notebook_images["cpu"], isolated_network) as (address, c):
        assert probe(c, address, 8890) == "refused: ConnectionRefusedError"


def test_no_server_starts_until_the_guard_vouches_for_the_rules(
    isolated_network, start_hub, docker_client, tmp_path
):
    status = tmp_path / "netguard.json"
    hub = start_hub(
        env={"GPUWS_NETWORK": isolated_network},
        extra_config=f"c.GPUDockerSpawner.network_guard_file = {str(status)!r}",
    )
    r = hub.request_spawn("alice", {"profile": "cpu"})
    assert r.status_code == 503, r.text
    assert "Network isolation is not in place: the network guard has not started" in r.text
    assert hub.containers(docker_client) == []

    env = guard_env(isolated_network, GPUWS_HUB_API_PORT=str(hub.hub_api_port))
    with running_guard(env, status):
        hub.spawn("alice", {"profile": "cpu"})
    hub.stop_server("alice")
    # A guard that stopped checking no longer counts.
    written = json.loads(status.read_text())
    status.write_text(json.dumps({**written, "checked": written["checked"] - 120}))
    r = hub.request_spawn("alice", {"profile": "cpu"})
    assert r.status_code == 503 and "last checked its rules" in r.text, r.text
