"""GPUSwarmSpawner: table tests of what it reads from Swarm, then a real two-node swarm.

The swarm (tests/swarm_harness.py) is two dockerds in their own network namespaces, each
advertising two fake GPUs as NVIDIA-GPU generic resources; the hub runs on the host from the
project's jupyterhub_config.py switched to the Swarm spawner. The tests assert on what Swarm
and the nodes' engines show (service spec, task, docker inspect of the task's container) and
on HTTP through the proxy.
"""

from __future__ import annotations

import json
import re
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import swarm_harness
from harness import Hub, wait_for
from swarm_harness import GPU_KIND, HOST_ADDRESS, MANAGER, OVERLAY, WORKER, Swarm
from traitlets.config import Config

from spawner.backends.swarm import GPUSwarmSpawner
from spawner.core.builders import make_service_spec
from spawner.core.swarm_view import (
    count_swarm_gpus,
    current_task,
    reserved_gpus,
    resource_env_var,
    swarm_view,
    task_address,
    unplaced_reason,
)
from spawner.hub.config import use_swarm

GPU_VAR = resource_env_var(GPU_KIND)

# -- table tests (no Docker) ----------------------------------------------------------------


def _node(node_id: str, host: str, gpus: list[str], state: str = "ready", avail: str = "active"):
    return {
        "ID": node_id,
        "Status": {"State": state},
        "Spec": {"Availability": avail},
        "Description": {
            "Hostname": host,
            "Resources": {
                "GenericResources": [
                    {"NamedResourceSpec": {"Kind": GPU_KIND, "Value": g}} for g in gpus
                ]
                + [{"NamedResourceSpec": {"Kind": "FPGA", "Value": "fpga0"}}]
            },
        },
    }


def _task(node_id: str, state: str, gpus: list[str], reserve: int = 0, desired: str = "running"):
    return {
        "NodeID": node_id,
        "DesiredState": desired,
        "Status": {"State": state},
        "GenericResources": [{"NamedResourceSpec": {"Kind": GPU_KIND, "Value": g}} for g in gpus],
        "Spec": {
            "Resources": {
                "Reservations": {
                    "GenericResources": [
                        {"DiscreteResourceSpec": {"Kind": GPU_KIND, "Value": reserve}}
                    ]
                }
            }
        },
    }


@pytest.mark.parametrize(
    ("nodes", "tasks", "free", "total", "largest", "waiting"),
    [
        ([_node("a", "a", ["0", "1"]), _node("b", "b", ["2", "3"])], [], 4, 4, 2, 0),
        (
            [_node("a", "a", ["0", "1"]), _node("b", "b", ["2", "3"])],
            [_task("a", "running", ["0"]), _task("b", "starting", ["2", "3"])],
            1,
            4,
            2,
            0,
        ),
        # ended tasks hold nothing; unplaced GPU requests are the queue
        (
            [_node("a", "a", ["0", "1"])],
            [
                _task("a", "complete", ["0"], desired="shutdown"),
                _task("", "pending", [], reserve=1),
                _task("", "pending", [], reserve=0),
            ],
            2,
            2,
            2,
            1,
        ),
        # drained and down nodes offer nothing
        (
            [_node("a", "a", ["0"], avail="drain"), _node("b", "b", ["1"], state="down")],
            [],
            0,
            0,
            0,
            0,
        ),
    ],
)
def test_count_swarm_gpus(nodes, tasks, free, total, largest, waiting):
    gpus = count_swarm_gpus(nodes, tasks, GPU_KIND)
    assert (gpus.free, gpus.total, gpus.largest, gpus.waiting) == (free, total, largest, waiting)


def test_count_swarm_gpus_summary_names_each_node():
    gpus = count_swarm_gpus(
        [_node("a", "node-a", ["0", "1"]), _node("b", "node-b", ["2", "3"])],
        [_task("a", "running", ["1"])],
        GPU_KIND,
    )
    assert gpus.summary(GPU_KIND) == "3 of 4 GPUs free on 2 nodes (node-a: 1 of 2, node-b: 2 of 2)"
    assert count_swarm_gpus([], [], GPU_KIND).summary(GPU_KIND) == (
        "no node of the swarm advertises NVIDIA-GPU resources"
    )


def test_discrete_gpu_counts_are_understood():
    node = _node("a", "a", [])
    node["Description"]["Resources"]["GenericResources"] = [
        {"DiscreteResourceSpec": {"Kind": GPU_KIND, "Value": 4}}
    ]
    task = _task("a", "running", [])
    task["GenericResources"] = [{"DiscreteResourceSpec": {"Kind": GPU_KIND, "Value": 1}}]
    gpus = count_swarm_gpus([node], [task], GPU_KIND)
    assert (gpus.free, gpus.total) == (3, 4)


@pytest.mark.parametrize(
    ("err", "reason"),
    [
        ("", None),
        ("no suitable node (insufficient resources on 2 nodes)", "resources"),
        ("no suitable node (scheduling constraints not satisfied on 2 nodes)", "placement"),
        (
            "no suitable node (scheduling constraints not satisfied on 1 node; "
            "insufficient resources on 1 node)",
            "resources",
        ),
        ("no suitable node (1 node not available for new tasks)", "placement"),
    ],
)
def test_unplaced_reason(err, reason):
    assert unplaced_reason(err) == reason


@pytest.mark.parametrize(
    ("kind", "variable"),
    [("NVIDIA-GPU", "DOCKER_RESOURCE_NVIDIA-GPU"), ("gpu", "DOCKER_RESOURCE_GPU")],
)
def test_resource_env_var_is_docker_s_name(kind, variable):
    assert resource_env_var(kind) == variable


def test_task_address_and_reservation():
    task = {
        "NetworksAttachments": [
            {"Network": {"ID": "x", "Spec": {"Name": "other"}}, "Addresses": ["10.0.0.2/24"]},
            {"Network": {"ID": "y", "Spec": {"Name": "net"}}, "Addresses": ["10.0.1.7/24"]},
        ]
    }
    assert task_address(task, "net") == "10.0.1.7"
    assert task_address(task, "y") == "10.0.1.7"
    assert task_address(task, "missing") is None
    assert reserved_gpus(_task("a", "running", [], reserve=2)["Spec"], GPU_KIND) == 2


def test_use_swarm_carries_single_host_settings_over():
    c = Config()
    c.GPUDockerSpawner.image = "img"
    c.GPUDockerSpawner.gpu_inventory = "4"  # no meaning on a swarm: not carried over
    c.GPUDockerSpawner.pull_policy = "ifnotpresent"  # nor is pulling on the manager
    c.GPUDockerSpawner.profiles = [{"slug": "cpu", "display_name": "CPU"}]
    c.GPUDockerSpawner.gpu_wait_timeout = 5.0
    c.GPUSwarmSpawner.gpu_wait_timeout = 7.0  # the Swarm section wins
    use_swarm(c, network="net")
    assert c.JupyterHub.spawner_class == "gpu-swarm"
    spawner = GPUSwarmSpawner(config=c, user=_stand_in())
    assert spawner.image == "img"
    assert spawner.profiles == [{"slug": "cpu", "display_name": "CPU"}]
    assert spawner.gpu_wait_timeout == 7.0
    assert spawner.pull_policy == "skip"
    assert spawner.network_name == "net"
    assert "gpu_inventory" not in c.GPUSwarmSpawner


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("gpu_device_ids", ["0"], "GPUSwarmSpawner.gpu_device_ids: on a swarm the scheduler"),
        ("all_gpus", True, "GPUSwarmSpawner.all_gpus: on a swarm the scheduler"),
        ("cap_add", ["SYS_ADMIN"], "GPUSwarmSpawner.cap_add: capability 'SYS_ADMIN'"),
        ("gpu_resource_kind", "NVIDIA-GPU=1", "GPUSwarmSpawner.gpu_resource_kind:"),
        ("node_constraints", ["gpu"], "GPUSwarmSpawner.node_constraints[0]: 'gpu'"),
    ],
)
def test_use_swarm_stops_the_hub_on_a_bad_setting(setting, value, message):
    c = Config()
    setattr(c.GPUSwarmSpawner, setting, value)
    with pytest.raises(SystemExit) as raised:
        use_swarm(c, network="net")
    assert message in str(raised.value)


def test_volumes_become_volume_mounts_and_driver_options_are_templates():
    c = Config()
    c.GPUSwarmSpawner.volumes = {
        "gpuws-home-{username}": "/home/jovyan",
        "/srv/datasets": {"bind": "/data", "mode": "ro"},
    }
    c.GPUSwarmSpawner.volume_driver = "local"
    c.GPUSwarmSpawner.volume_driver_options = {"type": "nfs", "device": ":/homes/{username}"}
    spawner = GPUSwarmSpawner(config=c, user=_stand_in())
    spec = make_service_spec(spawner.plan, spawner.service_inputs(["jupyterhub-singleuser"]))
    *mounts, shm = spec["task_template"]["ContainerSpec"]["Mounts"]
    assert shm["Target"] == "/dev/shm"
    assert mounts == [
        {
            "Target": "/home/jovyan",
            "Source": "gpuws-home-someone",
            "Type": "volume",
            "ReadOnly": False,
            "VolumeOptions": {
                "DriverConfig": {
                    "Name": "local",
                    "Options": {"type": "nfs", "device": ":/homes/someone"},
                }
            },
        },
        {"Target": "/data", "Source": "/srv/datasets", "Type": "bind", "ReadOnly": True},
    ]


def _ours(task: dict[str, Any], user: str, prefix: str = "gpuws", **extra: Any) -> dict[str, Any]:
    labels = {
        "io.gpu-workspaces.prefix": prefix,
        "io.gpu-workspaces.user": user,
        "io.gpu-workspaces.server": "",
        "io.gpu-workspaces.profile": "gpu-1",
    }
    task["Spec"]["ContainerSpec"] = {"Labels": labels}
    task.update({"ServiceID": f"svc-{user}", "CreatedAt": "2026-12-02T06:00:00.5Z", **extra})
    return task


@pytest.mark.parametrize(
    ("tasks", "states", "holders", "queue"),
    [
        ([], ["free", "free", "free"], [], []),
        (
            [_ours(_task("n1", "running", ["GPU-a"]), "ann")],
            ["held", "free", "free"],
            ["ann"],
            [],
        ),
        # another hub's task (another prefix) or one started by hand: external
        (
            [_ours(_task("n1", "running", ["GPU-b"]), "eve", prefix="other")],
            ["free", "external", "free"],
            [],
            [],
        ),
        # ended tasks hold nothing; unplaced GPU tasks of this hub are the queue
        (
            [
                _ours(_task("n1", "shutdown", ["GPU-a"]), "old"),
                _ours(_task("", "pending", [], reserve=2), "bob"),
            ],
            ["free", "free", "free"],
            [],
            [("bob", 2, 1)],
        ),
    ],
)
def test_the_swarm_view_shows_each_nodes_gpus_and_the_queue(tasks, states, holders, queue):
    nodes = [_node("n1", "gpu-a", ["GPU-a", "GPU-b"]), _node("n2", "gpu-b", ["GPU-c"])]
    nodes.append(_node("n3", "drained", ["GPU-d"], avail="drain"))  # not schedulable: not shown
    view = swarm_view(nodes, tasks, GPU_KIND, "gpuws")
    assert [g.state for g in view.gpus] == states
    assert [g.gpu.id for g in view.gpus] == ["GPU-a", "GPU-b", "GPU-c"]
    assert [g.holding.user for g in view.gpus if g.holding] == holders
    assert [(w.user, w.count, w.position) for w in view.queue] == queue
    held = [g.holding for g in view.gpus if g.holding]
    assert all(h.since > 1_700_000_000 and h.profile == "gpu-1" for h in held)


def test_the_current_task_of_a_service_is_the_wanted_one_else_the_newest():
    old = {"ServiceID": "s", "DesiredState": "shutdown", "CreatedAt": "2026-01-01T00:00:00Z"}
    new = {"ServiceID": "s", "DesiredState": "shutdown", "CreatedAt": "2026-01-02T00:00:00Z"}
    wanted = {"ServiceID": "s", "DesiredState": "running", "CreatedAt": "2025-01-01T00:00:00Z"}
    other = {"ServiceID": "x", "DesiredState": "running", "CreatedAt": "2027-01-01T00:00:00Z"}
    assert current_task([old, new, other], "s") is new
    assert current_task([old, wanted, new], "s") is wanted
    assert current_task([other], "s") is None


def _service_of(user: str, gpus: int) -> dict[str, Any]:
    return {
        "Spec": {
            "Name": f"gpuws-{user}-other",
            "Labels": {"io.gpu-workspaces.user": user},
            "TaskTemplate": _task("", "running", [], reserve=gpus)["Spec"],
        }
    }


@pytest.mark.parametrize(
    ("held", "requested", "message"),
    [
        ({"ben": 1}, 1, None),
        ({"ben": 2}, 1, "GPU quota: group 'interns' already holds 2 of its 2 GPUs"),
        ({"ann": 1, "ben": 1}, 1, "GPU quota: group 'interns' already holds 2 of its 2 GPUs"),
        ({"ann": 3}, 1, "GPU quota: you hold 3 GPUs, the limit for you is 3 (each user)"),
        ({"zoe": 5}, 2, None),  # not a member: does not count
    ],
)
async def test_quota_reads_what_users_and_groups_hold_on_the_swarm(held, requested, message):
    from types import SimpleNamespace

    from spawner.backends.errors import WorkspaceError

    c = Config()
    c.GPUSwarmSpawner.gpu_quota_per_user = 3
    c.GPUSwarmSpawner.gpu_quota_per_group = {"interns": 2}
    interns = SimpleNamespace(
        name="interns", users=[SimpleNamespace(name="ann"), SimpleNamespace(name="ben")]
    )
    user = SimpleNamespace(name="ann", groups=[interns], url="/user/ann/")
    spawner = GPUSwarmSpawner(config=c, user=user)
    services = [_service_of(name, gpus) for name, gpus in held.items()]

    async def services_on_the_swarm(method: str, *args: Any, **kwargs: Any) -> Any:
        assert method == "services"
        return services

    spawner.docker = services_on_the_swarm
    if message is None:
        await spawner.check_gpu_quota(requested)
    else:
        with pytest.raises(WorkspaceError) as refused:
            await spawner.check_gpu_quota(requested)
        assert refused.value.status_code == 403
        assert message in str(refused.value)


def _stand_in() -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(name="someone", groups=[], url="/user/someone/")


# -- the real swarm ---------------------------------------------------------------------------

PROFILES = [
    {"slug": "cpu", "display_name": "CPU only", "default": True, "mem_limit": "1g"},
    {"slug": "gpu-1", "display_name": "1 GPU", "gpus": 1, "mem_limit": "1g"},
    {"slug": "gpu-3", "display_name": "3 GPUs", "gpus": 3},
    {
        "slug": "gpu-b",
        "display_name": "1 GPU on node B",
        "gpus": 1,
        "constraints": ["node.labels.gpu==fake-b"],
    },
    {
        "slug": "gpu-2-b",
        "display_name": "2 GPUs on node B",
        "gpus": 2,
        "constraints": ["node.labels.gpu==fake-b"],
    },
    {
        "slug": "h100",
        "display_name": "1 H100",
        "gpus": 1,
        "constraints": ["node.labels.gpu==h100"],
    },
]


@pytest.fixture(scope="session")
def test_swarm(notebook_images: dict[str, str]) -> Iterator[Swarm]:
    """Two Swarm nodes with two fake GPUs each; removed again at the end of the session."""
    missing = swarm_harness.prerequisites_missing()
    if missing:
        pytest.skip(missing)
    with swarm_harness.running([notebook_images["cpu"]]) as swarm:
        yield swarm


@pytest.fixture
def swarm_hub(
    test_swarm: Swarm, notebook_images: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., Hub]]:
    """Start hubs on the swarm's manager; their services and home volumes are removed after."""
    hubs: list[Hub] = []

    def start(extra_config: str = "", env: dict[str, str] | None = None) -> Hub:
        prefix = f"gpuwss{secrets.token_hex(3)}"
        workdir = tmp_path / prefix
        workdir.mkdir()
        image = notebook_images["cpu"]  # the fake GPUs need no CUDA image
        config = f"""
from spawner.hub.config import use_swarm
use_swarm(c, network={OVERLAY!r})
c.JupyterHub.hub_ip = {HOST_ADDRESS!r}
c.JupyterHub.hub_connect_ip = {HOST_ADDRESS!r}
c.JupyterHub.allow_named_servers = True
c.GPUSwarmSpawner.image = {image!r}
c.GPUSwarmSpawner.gpu_image = {image!r}
c.GPUSwarmSpawner.profiles = {PROFILES!r}
# JupyterLab starts in seconds, but this machine is shared and at times heavily loaded.
c.GPUSwarmSpawner.http_timeout = 120
{extra_config}
"""
        hub = Hub(
            prefix=prefix,
            workdir=workdir,
            env={"DOCKER_HOST": test_swarm.manager_socket, "GPUWS_NETWORK": OVERLAY, **(env or {})},
            extra_config=config,
        )
        hubs.append(hub)
        return hub.start()

    yield start
    for hub in hubs:
        # Shown by pytest only when the test failed: what each server did.
        print(test_swarm.describe(hub.prefix), file=sys.stderr)
        hub.stop()
        test_swarm.remove_prefix(hub.prefix)


def _service(swarm: Swarm, hub: Hub, user: str, server: str = "") -> Any:
    services = [
        s
        for s in swarm.services(hub.prefix)
        if s.attrs["Spec"]["Labels"].get("io.gpu-workspaces.user") == user
        and s.attrs["Spec"]["Labels"].get("io.gpu-workspaces.server") == server
    ]
    assert len(services) == 1, [s.name for s in services]
    return services[0]


def _user_services(swarm: Swarm, hub: Hub, user: str) -> list[Any]:
    return [
        s
        for s in swarm.services(hub.prefix)
        if s.attrs["Spec"]["Labels"].get("io.gpu-workspaces.user") == user
    ]


def _env(container: Any) -> dict[str, str]:
    return dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])


def _gpus_of(swarm: Swarm, hub: Hub, user: str, server: str = "") -> tuple[str, str]:
    """(node hostname, GPU ids) the running server got, from its task's container."""
    task = swarm.running_task(_service(swarm, hub, user, server))
    container = swarm.task_container(task)
    node = (MANAGER, WORKER)[swarm.node_index(task["NodeID"]) - 1]
    return node.hostname, _env(container).get(GPU_VAR, "")


def _failed_spawn(hub: Hub, user: str, options: Any, server: str = "") -> str:
    """The sentence a failed spawn shows (REST answer, or the progress page's last event)."""
    r = hub.request_spawn(user, options, server=server)
    if r.status_code == 202:
        events = hub.progress_events(user, server)
        assert events and events[-1].get("failed"), events
        return str(events[-1]["message"])
    assert r.status_code >= 400, f"{r.status_code} {r.text}"
    return str(r.json()["message"])


def _progress_until(hub: Hub, user: str, pattern: str) -> list[str]:
    """Progress messages of a pending spawn, read until one matches ``pattern``."""
    messages: list[str] = []
    with hub.api("GET", f"/users/{user}/server/progress", stream=True) as r:
        for line in r.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                event = json.loads(line[5:])
                messages.append(str(event.get("message", "")))
                if re.search(pattern, messages[-1]) or event.get("ready") or event.get("failed"):
                    break
    return messages


def _form_counts(hub: Hub, user: str) -> tuple[int, int]:
    page = hub.login(user).get(f"{hub.url}/hub/spawn", timeout=30)
    page.raise_for_status()
    match = re.search(r'data-free-gpus="(\d+)" data-total-gpus="(\d+)"', page.text)
    assert match, page.text[:2000]
    return int(match.group(1)), int(match.group(2))


@pytest.mark.swarm
def test_gpu_server_runs_as_a_hardened_dnsrr_service_with_its_own_gpu(swarm_hub, test_swarm):
    hub = swarm_hub()
    hub.spawn("alice", {"profile": "gpu-1"})

    service = _service(test_swarm, hub, "alice")
    spec = service.attrs["Spec"]
    assert spec["EndpointSpec"]["Mode"] == "dnsrr"
    assert not spec["EndpointSpec"].get("Ports"), "no port is published"
    assert reserved_gpus(spec["TaskTemplate"], GPU_KIND) == 1
    task = test_swarm.running_task(service)
    assigned = [r["NamedResourceSpec"]["Value"] for r in task["GenericResources"]]
    assert len(assigned) == 1
    assert assigned[0] in MANAGER.gpus + WORKER.gpus

    container = test_swarm.task_container(task)
    env = _env(container)
    assert env[GPU_VAR] == assigned[0]  # what the NVIDIA runtime reads (swarm-resource)
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
    host_config = container.attrs["HostConfig"]
    assert container.attrs["Config"]["User"] == "1000:100"
    assert host_config["CapDrop"] == ["ALL"]
    assert host_config["Init"] is True
    assert host_config["PidsLimit"] == 4096
    assert {"Name": "nofile", "Soft": 16384, "Hard": 16384} in host_config["Ulimits"]
    assert not host_config.get("PortBindings")
    code, out = container.exec_run(["df", "-B1", "--output=size", "/dev/shm"])
    assert code == 0, out
    assert int(out.decode().split()[-1]) == 512 * 1024**2  # half the 1g memory limit
    labels = container.attrs["Config"]["Labels"]
    assert labels["io.gpu-workspaces.user"] == "alice"
    assert labels["io.gpu-workspaces.profile"] == "gpu-1"

    # The hub reaches the server at its task's overlay address (no routing mesh, no VIP).
    token = hub.user_token("alice")
    r = requests.get(
        f"{hub.url}/user/alice/api/status",
        headers={"Authorization": f"token {token}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    address = task_address(task, OVERLAY)
    assert address and address.startswith("10.231.129.")
    assert address in hub.log_path.read_text()


@pytest.mark.swarm
def test_cpu_server_reserves_no_gpu_and_gets_no_nvidia_devices(swarm_hub, test_swarm):
    hub = swarm_hub()
    hub.spawn("bob", {"profile": "cpu"})
    service = _service(test_swarm, hub, "bob")
    assert reserved_gpus(service.attrs["Spec"]["TaskTemplate"], GPU_KIND) == 0
    container = test_swarm.task_container(test_swarm.running_task(service))
    env = _env(container)
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert GPU_VAR not in env


@pytest.mark.swarm
def test_users_get_different_gpus_the_form_counts_every_node_and_stop_removes(
    swarm_hub, test_swarm
):
    hub = swarm_hub()
    assert _form_counts(hub, "carol") == (4, 4)
    hub.spawn("alice", {"profile": "gpu-1"})
    hub.spawn("bob", {"profile": "gpu-1"})
    _, alice_gpu = _gpus_of(test_swarm, hub, "alice")
    _, bob_gpu = _gpus_of(test_swarm, hub, "bob")
    assert alice_gpu and bob_gpu and alice_gpu != bob_gpu
    assert _form_counts(hub, "carol") == (2, 4)

    hub.stop_server("alice")
    assert _user_services(test_swarm, hub, "alice") == []
    assert wait_for(lambda: _form_counts(hub, "carol") == (3, 4))
    assert len(_user_services(test_swarm, hub, "bob")) == 1


@pytest.mark.swarm
def test_profile_constraints_place_the_server_on_the_labelled_node(swarm_hub, test_swarm):
    hub = swarm_hub()
    hub.spawn("dave", {"profile": "gpu-b"})
    node, gpu = _gpus_of(test_swarm, hub, "dave")
    assert node == WORKER.hostname
    assert gpu in WORKER.gpus
    placement = _service(test_swarm, hub, "dave").attrs["Spec"]["TaskTemplate"]["Placement"]
    assert placement["Constraints"] == ["node.labels.gpu==fake-b"]

    message = _failed_spawn(hub, "erin", {"profile": "h100"})
    assert "No node of the swarm can run this server (placement: node.labels.gpu==h100)" in (
        message
    )
    assert _user_services(test_swarm, hub, "erin") == []


@pytest.mark.swarm
def test_more_gpus_than_any_node_has_fails_at_once_with_a_sentence(swarm_hub, test_swarm):
    hub = swarm_hub()
    message = _failed_spawn(hub, "frank", {"profile": "gpu-3"})
    assert "No node of this swarm has 3 GPUs (the largest has 2)" in message
    assert _user_services(test_swarm, hub, "frank") == []


@pytest.mark.swarm
def test_quota_counts_the_users_services_on_the_swarm(swarm_hub, test_swarm):
    hub = swarm_hub("c.GPUSwarmSpawner.gpu_quota_per_user = 1")
    hub.spawn("gina", {"profile": "gpu-1"})
    r = hub.request_spawn("gina", {"profile": "gpu-1"}, server="second")
    assert r.status_code == 403, r.text
    assert "GPU quota: you hold 1 GPU, the limit for you is 1" in r.json()["message"]
    assert len(_user_services(test_swarm, hub, "gina")) == 1


@pytest.mark.swarm
def test_no_free_gpu_with_wait_timeout_zero_fails_fast(swarm_hub, test_swarm):
    hub = swarm_hub("c.GPUSwarmSpawner.gpu_wait_timeout = 0")
    hub.spawn("hank", {"profile": "gpu-2-b"})  # node B's two GPUs
    message = _failed_spawn(hub, "ivan", {"profile": "gpu-b"})
    assert "No node has 1 GPU free right now and this hub does not queue GPU requests" in message
    assert _user_services(test_swarm, hub, "ivan") == []


@pytest.mark.swarm
def test_queued_spawn_says_it_waits_and_fails_after_the_timeout(swarm_hub, test_swarm):
    # slow_spawn_timeout 0: the REST call returns at once and the progress page tells the rest
    hub = swarm_hub(
        "c.GPUSwarmSpawner.gpu_wait_timeout = 5\n"
        "c.JupyterHub.tornado_settings = {'slow_spawn_timeout': 0}"
    )
    hub.spawn("hank", {"profile": "gpu-2-b"})
    r = hub.request_spawn("ivan", {"profile": "gpu-b"})
    assert r.status_code == 202, r.text
    events = hub.progress_events("ivan")
    messages = [str(e.get("message", "")) for e in events]
    assert any(m.startswith("Waiting for 1 GPU: no node has 1 free") for m in messages), messages
    assert events[-1].get("failed"), events
    assert "No 1 GPU became free on one node within 5 seconds" in messages[-1]
    assert _user_services(test_swarm, hub, "ivan") == []


@pytest.mark.swarm
def test_queued_spawn_starts_when_the_gpus_are_freed(swarm_hub, test_swarm):
    hub = swarm_hub()
    hub.spawn("hank", {"profile": "gpu-2-b"})
    r = hub.request_spawn("ivan", {"profile": "gpu-b"})
    assert r.status_code == 202, r.text
    messages = _progress_until(hub, "ivan", r"^Waiting for 1 GPU")
    assert re.match(r"Waiting for 1 GPU: no node has 1 free \(2 of 4 GPUs free", messages[-1]), (
        messages
    )

    hub.stop_server("hank")
    hub.wait_ready("ivan")
    node, gpu = _gpus_of(test_swarm, hub, "ivan")
    assert (node, gpu in WORKER.gpus) == (WORKER.hostname, True)


@pytest.mark.swarm
def test_server_survives_a_hub_restart(swarm_hub, test_swarm):
    hub = swarm_hub()
    hub.spawn("judy", {"profile": "gpu-1"})
    before = _gpus_of(test_swarm, hub, "judy")
    hub.restart()
    model = hub.server_model("judy")
    assert model and model.get("ready"), model
    token = hub.user_token("judy")
    r = requests.get(
        f"{hub.url}/user/judy/api/status", headers={"Authorization": f"token {token}"}, timeout=10
    )
    assert r.status_code == 200, r.text
    assert _gpus_of(test_swarm, hub, "judy") == before


def test_the_default_shm_size_reaches_the_service_as_bytes():
    """Docker's API takes SizeBytes as an integer; the default ("1g") is not validated by
    traitlets, so the plan parses it."""
    spawner = GPUSwarmSpawner(config=Config(), user=_stand_in())
    spec = make_service_spec(spawner.plan, spawner.service_inputs(["jupyterhub-singleuser"]))
    shm = spec["task_template"]["ContainerSpec"]["Mounts"][-1]
    assert shm["TmpfsOptions"]["SizeBytes"] == 1024**3
