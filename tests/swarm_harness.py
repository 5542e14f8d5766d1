"""A real two-node Docker Swarm for the tests, beside (never on) the machine's own engine.

Each node is a separate ``dockerd`` with its own data root, exec root, socket and hostname,
inside its own network namespace, advertising two fake GPUs as ``NVIDIA-GPU`` generic
resources. The tests' private engine (tests/engine.py) gives the images (``docker save``).

Addresses (all in 10.231.0.0/16, all created and removed here)::

    host (tests, hub, proxy) 10.231.0.1 ─gws-h1── gws-n1 10.231.0.2  netns gpuws-swarm-1
                                                   │ node 1 = manager, gpuws-node-1
                                                   │ docker_gwbridge 10.231.2.0/24
                                                   │ gpuws-router bridge 10.231.1.0/24:
                                                   │   router container 10.231.1.2, also on
                                                   │   the overlay (the host's way in)
                                                  gws-a2 10.231.0.5
                                                   │
                                                  gws-b2 10.231.0.6  netns gpuws-swarm-2
                                                     node 2 = worker, gpuws-node-2
                                                     docker_gwbridge 10.231.3.0/24

    overlay network gpuws-swarm-net 10.231.129.0/24 (attachable, servers run on it)
    Swarm's own address pool (ingress) 10.231.192.0/18

The hub runs on the host like in the other tests; it reaches a server at its task's overlay
address through the router container (a stand-in for a hub container attached to the
overlay, the production set-up), and servers reach the hub at 10.231.0.1 through their
node's docker_gwbridge. The kernel has no IPVS: Swarm's ingress routing mesh and service VIPs
do not work here, task addresses and dnsrr do.

A global ``gpuws-keepalive`` service keeps every node attached to the overlay: on Docker 20.10
a node update (such as a node's first attachment to a network) makes Swarm reject a task that
holds generic resources on it (moby/moby#44378), so nodes are labelled before any GPU task
and never updated while one runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
from engine import FAKE_HOOK_DIR, install_fake_gpu_hook, kill, pids_naming

GPU_KIND = "NVIDIA-GPU"
HOST_ADDRESS = "10.231.0.1"
SUBNET = "10.231.0.0/16"
OVERLAY = "gpuws-swarm-net"
OVERLAY_SUBNET = "10.231.129.0/24"
ROUTER_NETWORK = "gpuws-router"
ROUTER_SUBNET = "10.231.1.0/24"
ROUTER_ADDRESS = "10.231.1.2"
ADDRESS_POOL = "10.231.192.0/18"
HOST_LINK = "gws-h1"
MTU = 1400  # below the overlay's 1450, so no path-MTU games on the host's way in
KEEPALIVE = "gpuws-keepalive"
LABEL = "io.gpu-workspaces.test-swarm"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@dataclass(frozen=True)
class NodeSpec:
    index: int
    address: str
    gwbridge: str
    gpus: tuple[str, ...]
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def netns(self) -> str:
        return f"gpuws-swarm-{self.index}"

    @property
    def hostname(self) -> str:
        return f"gpuws-node-{self.index}"

    @property
    def data_dir(self) -> Path:
        return Path(f"/var/lib/gpuws-swarm-{self.index}")

    @property
    def run_dir(self) -> Path:
        return Path(f"/run/gpuws-swarm-{self.index}")

    @property
    def socket(self) -> str:
        return f"unix://{self.run_dir}/docker.sock"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "docker.pid"

    @property
    def log(self) -> Path:
        return self.data_dir / "dockerd.log"


MANAGER = NodeSpec(
    1, "10.231.0.2", "10.231.2.0/24", ("GPU-node1-0", "GPU-node1-1"), {"gpu": "fake-a"}
)
WORKER = NodeSpec(
    2, "10.231.0.6", "10.231.3.0/24", ("GPU-node2-0", "GPU-node2-1"), {"gpu": "fake-b"}
)
NODES = (MANAGER, WORKER)


def _run(*args: str, check: bool = True, netns: str | None = None) -> str:
    cmd = ["ip", "netns", "exec", netns, *args] if netns else list(args)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def prerequisites_missing() -> str | None:
    """Why this machine cannot run the swarm tests, or None."""
    if os.geteuid() != 0:
        return "the swarm harness needs root (network namespaces, a second dockerd)"
    for tool in ("dockerd", "ip", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            return f"the swarm harness needs {tool}"
    return None


# -- clean-up of everything the harness may have left (idempotent) -----------------------


def _unmount_under(*roots: Path) -> None:
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = line.split()[4].replace("\\040", " ")
        if any(mount_point == str(r) or mount_point.startswith(f"{r}/") for r in roots):
            mounts.append(mount_point)
    for mount_point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mount_point], capture_output=True)


def cleanup() -> None:
    """Remove every process, namespace, link, route, mount and folder of the test swarm."""
    for node in reversed(NODES):
        pids = []
        with contextlib.suppress(OSError, ValueError):
            pids.append(int(node.pidfile.read_text().strip()))
        pids = [p for p in pids if Path(f"/proc/{p}").exists()]
        kill(pids, timeout=20)  # dockerd stops its containers and its containerd
        kill(pids_naming(f"{node.run_dir}/"), timeout=5)  # what a killed dockerd left
        kill(pids_naming(f"{node.data_dir}/"), timeout=5)
        _unmount_under(node.run_dir, node.data_dir)
        _run("ip", "netns", "del", node.netns, check=False)
    _run("ip", "link", "del", HOST_LINK, check=False)
    _run("ip", "route", "del", SUBNET, check=False)
    for node in NODES:
        shutil.rmtree(node.data_dir, ignore_errors=True)
        shutil.rmtree(node.run_dir, ignore_errors=True)


# -- bring-up ------------------------------------------------------------------------------


def _network() -> None:
    m, w = MANAGER, WORKER
    for node in NODES:
        _run("ip", "netns", "add", node.netns)
        _run("ip", "link", "set", "lo", "up", netns=node.netns)
        for key in ("all", "default"):
            _run("sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0", netns=node.netns)
        _run("sysctl", "-qw", "net.ipv4.ip_forward=1", netns=node.netns)
    # host <-> manager
    _run("ip", "link", "add", HOST_LINK, "mtu", str(MTU), "type", "veth", "peer", "gws-n1")
    _run("ip", "link", "set", "gws-n1", "netns", m.netns)
    _run("ip", "addr", "add", f"{HOST_ADDRESS}/30", "dev", HOST_LINK)
    _run("ip", "link", "set", HOST_LINK, "up")
    _run("ip", "addr", "add", f"{m.address}/30", "dev", "gws-n1", netns=m.netns)
    _run("ip", "link", "set", "gws-n1", "mtu", str(MTU), "up", netns=m.netns)
    _run("ip", "route", "add", "default", "via", HOST_ADDRESS, netns=m.netns)
    # manager <-> worker (a chain: traffic between the nodes never crosses the host's
    # firewall, whose FORWARD policy belongs to the shared engine)
    _run("ip", "link", "add", "gws-a2", "type", "veth", "peer", "gws-b2")
    _run("ip", "link", "set", "gws-a2", "netns", m.netns)
    _run("ip", "link", "set", "gws-b2", "netns", w.netns)
    _run("ip", "addr", "add", "10.231.0.5/30", "dev", "gws-a2", netns=m.netns)
    _run("ip", "link", "set", "gws-a2", "up", netns=m.netns)
    # VXLAN to the worker must leave from the manager's advertised address: the worker's
    # overlay drops frames whose outer source differs from where Swarm says the sender is.
    _run(
        "ip", "route", "replace", "10.231.0.4/30", "dev", "gws-a2", "proto", "kernel",
        "scope", "link", "src", m.address, netns=m.netns,
    )  # fmt: skip
    _run("ip", "addr", "add", f"{w.address}/30", "dev", "gws-b2", netns=w.netns)
    _run("ip", "link", "set", "gws-b2", "up", netns=w.netns)
    _run("ip", "route", "add", "default", "via", "10.231.0.5", netns=w.netns)
    # the host reaches every test subnet through the manager's namespace
    _run("ip", "route", "add", SUBNET, "via", m.address, "dev", HOST_LINK)
    _run("ip", "route", "add", w.gwbridge, "via", w.address, netns=m.netns)


def _start_dockerd(node: NodeSpec) -> subprocess.Popen[bytes]:
    node.data_dir.mkdir(parents=True, exist_ok=True)
    node.run_dir.mkdir(parents=True, exist_ok=True)
    resources = [
        arg for gpu in node.gpus for arg in ("--node-generic-resource", f"{GPU_KIND}={gpu}")
    ]
    dockerd = [
        "dockerd",
        "--data-root", str(node.data_dir / "data"),
        "--exec-root", str(node.run_dir / "exec"),
        "--pidfile", str(node.pidfile),
        "-H", node.socket,
        "--bridge=none",
        "--iptables=false",
        "--ip-masq=false",
        "--userland-proxy=false",
        "--shutdown-timeout=3",
        *resources,
    ]  # fmt: skip
    # Own UTS namespace: each node gets its own hostname; own network namespace: its own
    # addresses. The mount namespace stays the host's (cgroups, overlay2).
    script = f'hostname {node.hostname} && exec nsenter --net=/run/netns/{node.netns} "$@"'
    env = dict(
        os.environ,
        PATH=f"{FAKE_HOOK_DIR}:{os.environ.get('PATH', '')}",
        # The images are loaded, not pulled: there is no registry here.
        DOCKER_SERVICE_PREFER_OFFLINE_IMAGE="1",
    )
    env.pop("DOCKER_HOST", None)
    log = node.log.open("ab")
    return subprocess.Popen(
        ["unshare", "--uts", "sh", "-c", script, "dockerd", *dockerd],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def _client(node: NodeSpec, timeout: float = 60) -> docker.DockerClient:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            client = docker.DockerClient(base_url=node.socket, version="auto", timeout=120)
            client.ping()
            return client
        except Exception as e:
            last = e
            time.sleep(0.3)
    raise RuntimeError(f"dockerd of {node.hostname} did not answer: {last}\n{_tail(node.log)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _load_images(images: list[str], clients: list[docker.DockerClient]) -> None:
    """``docker save`` once from the tests' private engine, ``docker load`` into every node."""
    started = time.monotonic()
    save = subprocess.Popen(["docker", "save", *images], stdout=subprocess.PIPE)
    loads = [
        subprocess.Popen(
            ["docker", "-H", node.socket, "load", "-q"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if k != "DOCKER_HOST"},
        )
        for node in NODES
    ]
    assert save.stdout is not None
    while chunk := save.stdout.read(1 << 20):
        for load in loads:
            assert load.stdin is not None
            load.stdin.write(chunk)
    for load in loads:
        assert load.stdin is not None
        load.stdin.close()
    codes = [save.wait(), *(load.wait() for load in loads)]
    if any(codes):
        raise RuntimeError(f"loading {images} into the test swarm failed: exit codes {codes}")
    print(f"swarm: images loaded in {time.monotonic() - started:.1f}s", file=sys.stderr)


@dataclass
class Swarm:
    """The running test swarm: a client per node, node ids, and what the tests need."""

    clients: dict[int, docker.DockerClient]
    node_ids: dict[int, str]
    processes: list[subprocess.Popen[bytes]]

    @property
    def manager(self) -> docker.DockerClient:
        return self.clients[MANAGER.index]

    @property
    def manager_socket(self) -> str:
        return MANAGER.socket

    def node_index(self, node_id: str) -> int:
        return next(i for i, n in self.node_ids.items() if n == node_id)

    def services(self, prefix: str) -> list[Any]:
        return list(
            self.manager.services.list(filters={"label": f"io.gpu-workspaces.prefix={prefix}"})
        )

    def tasks(self, service: Any) -> list[dict[str, Any]]:
        return list(service.tasks())

    def running_task(self, service: Any) -> dict[str, Any]:
        running = [t for t in service.tasks() if t["Status"]["State"] == "running"]
        assert len(running) == 1, [t["Status"] for t in service.tasks()]
        return running[0]

    def task_container(self, task: dict[str, Any]) -> Any:
        """The container of a task, from the engine of the node it runs on."""
        client = self.clients[self.node_index(task["NodeID"])]
        container = client.containers.get(task["Status"]["ContainerStatus"]["ContainerID"])
        return container

    def describe(self, prefix: str) -> str:
        """Each server of a hub: its task's state and the end of its container's log."""
        lines = []
        for service in self.services(prefix):
            for task in service.tasks():
                status = task["Status"]
                lines.append(
                    f"--- {service.name} task {task['ID'][:12]} on node "
                    f"{self.node_index(task['NodeID']) if task.get('NodeID') else '-'}: "
                    f"{status.get('State')} {status.get('Err', '')} "
                    f"{task_addresses(task)}"
                )
                container_id = (status.get("ContainerStatus") or {}).get("ContainerID")
                if container_id and task.get("NodeID"):
                    with contextlib.suppress(docker.errors.APIError, StopIteration):
                        container = self.task_container(task)
                        lines.append(container.logs(tail=40).decode(errors="replace"))
        return "\n".join(lines)

    def remove_prefix(self, prefix: str) -> None:
        """Remove a hub's services, then its home volumes on every node."""
        for service in self.services(prefix):
            with contextlib.suppress(docker.errors.NotFound):
                service.remove()
        for index, client in self.clients.items():
            deadline = time.monotonic() + 60
            label = f"io.gpu-workspaces.prefix={prefix}"
            # the low-level list: no inspect of containers that vanish meanwhile
            while client.api.containers(all=True, filters={"label": label}):
                if time.monotonic() > deadline:
                    raise AssertionError(f"containers of {prefix} still on node {index}")
                time.sleep(0.3)
            for volume in client.volumes.list(filters={"name": prefix}):
                with contextlib.suppress(docker.errors.APIError):
                    volume.remove(force=True)

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


def task_addresses(task: dict[str, Any]) -> list[str]:
    return [
        address
        for attachment in task.get("NetworksAttachments") or []
        for address in attachment.get("Addresses") or []
    ]


def _wait(predicate: Any, what: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise RuntimeError(f"test swarm: {what} not reached in {timeout}s")


def start(images: list[str]) -> Swarm:
    """Bring the two-node swarm up from nothing (after removing any leftover)."""
    install_fake_gpu_hook()
    cleanup()
    started = time.monotonic()
    _network()
    processes = [_start_dockerd(node) for node in NODES]
    clients = {node.index: _client(node) for node in NODES}
    errors: list[BaseException] = []

    def load() -> None:
        try:
            _load_images(images, list(clients.values()))
        except BaseException as e:
            errors.append(e)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        for node in NODES:
            # Before Swarm makes its own: a routed subnet, no NAT (no iptables here).
            clients[node.index].networks.create(
                "docker_gwbridge",
                driver="bridge",
                ipam=docker.types.IPAMConfig(
                    pool_configs=[docker.types.IPAMPool(subnet=node.gwbridge)]
                ),
                options={
                    "com.docker.network.bridge.name": "docker_gwbridge",
                    "com.docker.network.bridge.enable_icc": "false",
                    "com.docker.network.bridge.enable_ip_masquerade": "false",
                },
            )
        manager = clients[MANAGER.index]
        manager.swarm.init(
            advertise_addr=MANAGER.address,
            listen_addr=f"{MANAGER.address}:2377",
            default_addr_pool=[ADDRESS_POOL],
            subnet_size=24,
            task_history_retention_limit=1,
        )
        token = manager.swarm.attrs["JoinTokens"]["Worker"]
        clients[WORKER.index].swarm.join(
            remote_addrs=[f"{MANAGER.address}:2377"],
            join_token=token,
            listen_addr=f"{WORKER.address}:2377",
            advertise_addr=WORKER.address,
        )
        node_ids: dict[int, str] = {}

        def both_ready() -> bool:
            nodes = manager.nodes.list()
            ready = {
                n.attrs["Description"]["Hostname"]: n
                for n in nodes
                if n.attrs["Status"]["State"] == "ready"
            }
            return all(spec.hostname in ready for spec in NODES)

        _wait(both_ready, "both nodes ready")
        for node in manager.nodes.list():
            spec_node = next(
                s for s in NODES if s.hostname == node.attrs["Description"]["Hostname"]
            )
            node_ids[spec_node.index] = node.id
            spec = dict(node.attrs["Spec"])
            spec["Labels"] = dict(spec_node.labels)
            node.update(spec)  # labels first: no node update once GPU tasks run
        manager.networks.create(
            OVERLAY,
            driver="overlay",
            attachable=True,
            ipam=docker.types.IPAMConfig(
                pool_configs=[docker.types.IPAMPool(subnet=OVERLAY_SUBNET)]
            ),
            labels={LABEL: "1"},
        )
        manager.networks.create(
            ROUTER_NETWORK,
            driver="bridge",
            ipam=docker.types.IPAMConfig(
                pool_configs=[docker.types.IPAMPool(subnet=ROUTER_SUBNET)]
            ),
            options={"com.docker.network.bridge.name": "gws-br1"},
        )
        loader.join()
        if errors:
            raise errors[0]
        image = images[0]
        api = manager.api
        router = api.create_container(
            image,
            ["sleep", "infinity"],
            name="gpuws-router",
            labels={LABEL: "1"},
            host_config=api.create_host_config(
                network_mode=ROUTER_NETWORK,
                sysctls={"net.ipv4.ip_forward": "1"},
                restart_policy={"Name": "unless-stopped"},
            ),
            networking_config=api.create_networking_config(
                {ROUTER_NETWORK: api.create_endpoint_config(ipv4_address=ROUTER_ADDRESS)}
            ),
        )
        api.start(router["Id"])
        # The host's way into the overlay: through the manager's namespace to the router.
        _run("ip", "route", "add", OVERLAY_SUBNET, "via", ROUTER_ADDRESS, netns=MANAGER.netns)
        manager.networks.get(OVERLAY).connect(router["Id"])
        manager.services.create(
            image,
            ["sleep", "infinity"],
            name=KEEPALIVE,
            mode=docker.types.ServiceMode("global"),
            networks=[OVERLAY],
            endpoint_spec=docker.types.EndpointSpec(mode="dnsrr"),
            labels={LABEL: "1"},
        )

        def keepalive_everywhere() -> bool:
            tasks = manager.services.get(KEEPALIVE).tasks()
            return sum(t["Status"]["State"] == "running" for t in tasks) == len(NODES)

        _wait(keepalive_everywhere, "keep-alive task on every node")
    except BaseException:
        loader.join()
        for node in NODES:
            print(f"--- {node.hostname} dockerd log ---\n{_tail(node.log)}", file=sys.stderr)
        for client in clients.values():
            client.close()
        stop_processes(processes)
        cleanup()
        raise
    print(f"swarm: two nodes up in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return Swarm(clients, node_ids, processes)


def stop_processes(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in reversed(processes):
        if process.poll() is None:
            process.terminate()
    for process in reversed(processes):
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def stop(swarm: Swarm) -> None:
    """Remove the containers, stop both engines, then remove everything else."""
    for client in swarm.clients.values():
        with contextlib.suppress(docker.errors.APIError):
            for service in client.services.list():
                service.remove()
    for client in swarm.clients.values():
        with contextlib.suppress(docker.errors.APIError):
            for container in client.api.containers(all=True):
                with contextlib.suppress(docker.errors.APIError):
                    client.api.remove_container(container["Id"], force=True)
    swarm.close()
    stop_processes(swarm.processes)
    ARTIFACTS.mkdir(exist_ok=True)
    for node in NODES:  # kept for a look after a failure (tests/artifacts is git-ignored)
        with contextlib.suppress(OSError):
            shutil.copyfile(node.log, ARTIFACTS / f"swarm-{node.hostname}-dockerd.log")
    cleanup()


@contextlib.contextmanager
def running(images: list[str]) -> Iterator[Swarm]:
    swarm = start(images)
    try:
        yield swarm
    finally:
        stop(swarm)
