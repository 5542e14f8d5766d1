"""spawner/core/builders.py: plan → host config, create_container and create_service arguments.

Tables of plain dicts, as kubespawner's test_objects. docker-py (imported here, never by the
builders) is the reference: its HostConfig and create_container_config must accept what the
builders give, and its docker.types must make the same Swarm objects from the same input.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.types import (
    ContainerSpec,
    DriverConfig,
    EndpointSpec,
    Mount,
    Placement,
    Resources,
    RestartPolicy,
    TaskTemplate,
)

from spawner.core import hardening
from spawner.core.builders import (
    BuildError,
    ContainerInputs,
    ServiceExtras,
    ServiceInputs,
    make_create_kwargs,
    make_host_config,
    make_service_spec,
    merge_overrides,
)
from spawner.core.labels import LABEL_GPUS, LABEL_USER
from spawner.core.plan import SpawnPlan, SpawnSettings, resolve_plan
from spawner.core.sizes import GiB, MiB

API_VERSION = "1.41"
CAPS = [["compute", "utility"]]
HARDENING = {"cap_drop": ["ALL"], "security_opt": ["no-new-privileges:true"], "init": True}


def plan(**fields: Any) -> SpawnPlan:
    return SpawnPlan(
        **{"user": "ada", "image": "nb:1", "shm_size": GiB, "pids_limit": 4096, **fields}
    )


# -- merge_overrides -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "override", "expected"),
    [
        ({"a": 1}, {"a": 2}, {"a": 2}),
        ({"a": 1}, {"b": 2}, {"a": 1, "b": 2}),
        ({"d": {"x": 1, "y": 1}}, {"d": {"y": 2, "z": 3}}, {"d": {"x": 1, "y": 2, "z": 3}}),
        ({"d": {"e": {"x": 1}}}, {"d": {"e": {"y": 2}}}, {"d": {"e": {"x": 1, "y": 2}}}),
        ({"d": {"x": 1}}, {"d": 5}, {"d": 5}),
        ({"d": 5}, {"d": {"x": 1}}, {"d": {"x": 1}}),
        ({"l": [1, 2]}, {"l": [3]}, {"l": [3]}),  # lists are replaced, not joined
        ({"a": 1}, {"a": None}, {"a": None}),
        ({}, {}, {}),
    ],
)
def test_merge_overrides(
    base: dict[str, Any], override: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert merge_overrides(base, override) == expected


def test_merge_overrides_copies_both_sides() -> None:
    base = {"d": {"x": [1]}}
    override = {"e": {"y": [2]}}
    merged = merge_overrides(base, override)
    merged["d"]["x"].append(9)
    merged["e"]["y"].append(9)
    assert (base, override) == ({"d": {"x": [1]}}, {"e": {"y": [2]}})


# -- make_host_config ----------------------------------------------------------------------

NOFILE = {"name": "nofile", "soft": 16384, "hard": 16384}
NPROC = {"name": "nproc", "soft": 65536, "hard": 65536}
LIMITS = {"nofile_limit": 16384, "nproc_limit": 65536}
BASE_HOST = {"shm_size": GiB, **HARDENING, "ulimits": [NOFILE, NPROC], "pids_limit": 4096}


def request(**fields: Any) -> dict[str, Any]:
    return {"driver": "nvidia", "count": 0, "device_ids": [], "capabilities": CAPS, **fields}


HOST_CONFIGS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("CPU: no device request", {}, {}),
    ("static count", {"gpu_count": 2}, {"device_requests": [request(count=2)]}),
    # without claimed ids the static request stands, whatever the mechanism
    ("static count, runtime", {"gpu_count": 1, "mechanism": "nvidia-runtime"},
     {"device_requests": [request(count=1)]}),
    ("static ids", {"gpu_device_ids": ["1", "3"]},
     {"device_requests": [request(device_ids=["1", "3"])]}),
    ("all GPUs", {"all_gpus": True}, {"device_requests": [request(count=-1)]}),
    ("2 claimed, device-requests", {"gpu_count": 2, "gpu_ids": ["0", "1"]},
     {"device_requests": [request(device_ids=["0", "1"])]}),
    ("2 claimed, capabilities", {"gpu_count": 2, "gpu_ids": ["0", "1"],
     "capabilities": ["compute", "video"]},
     {"device_requests": [request(device_ids=["0", "1"], capabilities=[["compute", "video"]])]}),
    ("2 claimed, nvidia-runtime", {"gpu_count": 2, "gpu_ids": ["0", "1"],
     "mechanism": "nvidia-runtime"}, {"runtime": "nvidia"}),
    ("2 claimed, cdi", {"gpu_count": 2, "gpu_ids": ["GPU-a", "1"], "mechanism": "cdi"},
     {"device_requests": [{"driver": "cdi",
                           "device_ids": ["nvidia.com/gpu=GPU-a", "nvidia.com/gpu=1"]}]}),
    ("memory and CPU limits", {"mem_limit": 8 * GiB, "cpu_limit": 1.5},
     {"mem_limit": 8 * GiB, "cpu_period": 100_000, "cpu_quota": 150_000}),
    ("mem_limit 0 is passed (no limit)", {"mem_limit": 0}, {"mem_limit": 0}),
    ("cap_add and shm", {"cap_add": ["CHOWN"], "shm_size": 512 * MiB},
     {"cap_add": ["CHOWN"], "shm_size": 512 * MiB}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "extra"), [r[1:] for r in HOST_CONFIGS], ids=[r[0] for r in HOST_CONFIGS]
)
def test_make_host_config(fields: dict[str, Any], extra: dict[str, Any]) -> None:
    built = make_host_config(plan(**LIMITS, **fields))
    assert built == {**BASE_HOST, **extra}
    # docker-py takes it as create_host_config keywords, as the spawner passes it
    api = docker.types.HostConfig(version=API_VERSION, **built)
    assert api["ShmSize"] == built["shm_size"]
    assert api["CapDrop"] == ["ALL"]
    assert api.get("Runtime") == built.get("runtime")
    assert [r["DeviceIDs"] for r in api.get("DeviceRequests", [])] == [
        r["device_ids"] for r in built.get("device_requests", [])
    ]


@pytest.mark.parametrize(
    ("fields", "absent"),
    [
        ({"nofile_limit": 0, "nproc_limit": 0}, "ulimits"),
        ({"pids_limit": 0}, "pids_limit"),
        ({}, "cap_add"),
        ({}, "mem_limit"),
        ({}, "cpu_quota"),
    ],
)
def test_zero_or_unset_limits_keep_the_engines(fields: dict[str, Any], absent: str) -> None:
    assert absent not in make_host_config(plan(**fields))


def test_one_ulimit_alone() -> None:
    assert make_host_config(plan(nofile_limit=0, nproc_limit=1000))["ulimits"] == [
        {"name": "nproc", "soft": 1000, "hard": 1000}
    ]


# -- make_create_kwargs --------------------------------------------------------------------

CONTAINER = ContainerInputs(
    name="gpuws-ada",
    command=("jupyterhub-singleuser",),
    volume_mount_points=("/home/jovyan",),
    volume_binds={"gpuws-ada-home": {"bind": "/home/jovyan", "mode": "rw"}},
    mount_binds=({"Target": "/data", "Source": "datasets", "Type": "volume", "ReadOnly": True},),
    port=8888,
    network_name="gpuws-net",
)


def test_create_kwargs_of_a_cpu_server() -> None:
    p = plan(env={"JUPYTERHUB_API_TOKEN": "t"}, profile_slug="cpu", container_user="1000:100")
    assert make_create_kwargs(p, CONTAINER) == {
        "image": "nb:1",
        "environment": {"JUPYTERHUB_API_TOKEN": "t", "NVIDIA_VISIBLE_DEVICES": "void"},
        "volumes": ["/home/jovyan"],
        "name": "gpuws-ada",
        "command": ["jupyterhub-singleuser"],
        "ports": {"8888/tcp": None},
        "labels": p.labels(),
        "user": "1000:100",
        "host_config": {
            "auto_remove": True,
            "binds": {"gpuws-ada-home": {"bind": "/home/jovyan", "mode": "rw"}},
            "links": {},
            "mounts": [dict(CONTAINER.mount_binds[0])],
            "network_mode": "gpuws-net",
            **make_host_config(p),
        },
    }


# (plan fields, container fields, admin host config, admin create kwargs) → expected parts
CREATE: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any],
                   dict[str, Any]]] = [
    ("published port", {}, {"host_ip": "127.0.0.1", "port": 9000}, {}, {},
     {"ports": {"9000/tcp": None}, "host_config": {"port_bindings": {9000: ("127.0.0.1",)}}}),
    ("claimed GPUs in the environment", {"gpu_count": 2, "gpu_ids": ["1", "3"],
     "env": {"NVIDIA_VISIBLE_DEVICES": "all"}}, {}, {}, {},
     {"environment": {"NVIDIA_VISIBLE_DEVICES": "1,3"}, "labels": {LABEL_GPUS: "1,3"}}),
    # a static request without an inventory: the runtime gets the image's variable
    ("static GPUs keep the image's variable", {"all_gpus": True, "env": {"X": "1"}}, {}, {}, {},
     {"environment": {"X": "1"}}),
    ("no container_user: the image's USER", {"container_user": ""}, {}, {}, {}, {"user": None}),
    ("admin cpu_period rescales the quota", {"cpu_limit": 2.0}, {}, {"cpu_period": 50_000}, {},
     {"host_config": {"cpu_period": 50_000, "cpu_quota": 100_000}}),
    ("admin cpu_quota wins", {"cpu_limit": 2.0}, {}, {"cpu_period": 50_000, "cpu_quota": 7},
     {}, {"host_config": {"cpu_period": 50_000, "cpu_quota": 7}}),
    ("admin host config wins, lists replaced", {}, {},
     {"network_mode": "other", "ulimits": [], "pids_limit": 10, "shm_size": 5}, {},
     {"host_config": {"network_mode": "other", "ulimits": [], "pids_limit": 10, "shm_size": 5}}),
    ("admin nested dicts merge", {}, {},
     {"binds": {"/srv/data": {"bind": "/data", "mode": "ro"}}},
     {"labels": {"team": "x"}, "ports": {"9999/tcp": None}, "environment": {"B": "2"}},
     {"labels": {"team": "x", LABEL_USER: "ada"}, "ports": {"8888/tcp": None, "9999/tcp": None},
      "environment": {"B": "2", "NVIDIA_VISIBLE_DEVICES": "void"},
      "host_config": {"binds": {"gpuws-ada-home": {"bind": "/home/jovyan", "mode": "rw"},
                                "/srv/data": {"bind": "/data", "mode": "ro"}}}}),
    ("admin create kwargs win", {}, {}, {}, {"user": "2000:100", "hostname": "box",
     "labels": {LABEL_USER: "admin-said"}},
     {"user": "2000:100", "hostname": "box", "labels": {LABEL_USER: "admin-said"}}),
    # DockerSpawner updates the admin's host_config with the built one: ours win there
    ("admin create host_config under ours", {}, {}, {}, {"host_config": {"shm_size": 1,
     "read_only": True}}, {"host_config": {"shm_size": GiB, "read_only": True}}),
    ("internal IP: no port binding", {}, {"host_ip": None}, {}, {},
     {"host_config": {"port_bindings": None}}),
]  # fmt: skip


def _part(whole: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    """``whole`` cut to the keys of ``expected`` (None: absent), nested dicts likewise."""
    return {
        k: _part(whole[k], v) if isinstance(v, dict) and isinstance(whole.get(k), dict) else
        whole.get(k)
        for k, v in expected.items()
    }  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "container", "admin_host", "admin_create", "expected"),
    [r[1:] for r in CREATE],
    ids=[r[0] for r in CREATE],
)
def test_make_create_kwargs(
    fields: dict[str, Any],
    container: dict[str, Any],
    admin_host: dict[str, Any],
    admin_create: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    inputs = ContainerInputs(**{"name": "gpuws-ada", **CONTAINER.__dict__, **container})
    built = make_create_kwargs(
        plan(**{"container_user": "1000:100", **fields}),
        inputs,
        admin_host_config=admin_host,
        admin_create_kwargs=admin_create,
    )
    assert _part(built, expected) == expected
    assert ("user" in built) == bool(built.get("user"))


def test_create_kwargs_are_docker_py_create_container_keywords() -> None:
    p = plan(
        gpu_count=1,
        gpu_ids=["0"],
        mem_limit=GiB,
        cpu_limit=1.0,
        env={"A": "b"},
        container_user="1000:100",
    )
    built = make_create_kwargs(p, ContainerInputs(**{**CONTAINER.__dict__, "host_ip": "::1"}))
    client = docker.APIClient(base_url="unix:///nonexistent.sock", version=API_VERSION)
    host = client.create_host_config(**built["host_config"])
    signature = inspect.signature(client.create_container)
    signature.bind(**{**built, "host_config": host})  # every key is a keyword it takes
    config = {k: v for k, v in built.items() if k != "name"}  # the name goes in the URL
    body = client.create_container_config(**{**config, "host_config": host})
    assert body["Labels"] == p.labels()
    assert sorted(body["Env"]) == ["A=b", "NVIDIA_VISIBLE_DEVICES=0"]
    assert list(body["ExposedPorts"]) == ["8888/tcp"]
    assert body["User"] == p.container_user
    hc = body["HostConfig"]
    assert (hc["Memory"], hc["CpuPeriod"], hc["CpuQuota"]) == (GiB, 100_000, 100_000)
    assert (hc["ShmSize"], hc["PidsLimit"], hc["NetworkMode"]) == (GiB, 4096, "gpuws-net")
    assert hc["PortBindings"] == {"8888/tcp": [{"HostIp": "::1", "HostPort": ""}]}
    assert hc["DeviceRequests"][0]["DeviceIDs"] == ["0"]


@pytest.mark.parametrize(
    ("admin_create", "words"),
    [
        ({"host_config": {"ShmSize": 1}}, ["extra_create_kwargs['host_config']", "ShmSize"]),
        ({"host_config": ["x"]}, ["extra_create_kwargs['host_config']", "mapping"]),
    ],
)
def test_admin_create_host_config_in_api_spelling_is_refused(
    admin_create: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(BuildError) as caught:
        make_create_kwargs(plan(), CONTAINER, admin_create_kwargs=admin_create)
    for word in words:
        assert word in str(caught.value)


# -- hardening reads the builders' output as-is -------------------------------------------

SAFE_PLANS = [
    plan(),
    plan(gpu_count=2, gpu_ids=["0", "1"], cap_add=["CHOWN"], mem_limit=GiB, cpu_limit=2.0),
    plan(gpu_count=1, gpu_ids=["0"], mechanism="cdi"),
]


@pytest.mark.parametrize("p", SAFE_PLANS, ids=["cpu", "gpu", "cdi"])
def test_a_safe_plan_has_no_problems(p: SpawnPlan) -> None:
    allowed = hardening.Allowed(runtimes=hardening.DEFAULT_RUNTIMES | {"nvidia"})
    built = make_create_kwargs(p, ContainerInputs(**{**CONTAINER.__dict__, "host_ip": "127.0.0.1"}))
    assert hardening.unsafe_create_kwargs(built, "final", allowed) == []
    service = make_service_spec(p, SERVICE)
    assert hardening.unsafe_service_spec(service, "final", allowed) == []


@pytest.mark.parametrize(
    ("admin_host", "admin_create", "words"),
    [
        ({"privileged": True}, {}, ["['privileged']", "root on the host"]),
        ({"binds": {"/var/run/docker.sock": {"bind": "/s", "mode": "rw"}}}, {}, ["docker.sock"]),
        ({"binds": ["/var/run/docker.sock:/var/run/docker.sock"]}, {}, ["docker.sock"]),
        ({}, {"host_config": {"privileged": True}}, ["['privileged']"]),
        ({"pid_mode": "host"}, {}, ["namespace outside the container"]),
    ],
)
def test_admin_escapes_are_reported_in_the_final_kwargs(
    admin_host: dict[str, Any], admin_create: dict[str, Any], words: list[str]
) -> None:
    built = make_create_kwargs(
        plan(), CONTAINER, admin_host_config=admin_host, admin_create_kwargs=admin_create
    )
    problems = hardening.unsafe_create_kwargs(built, "final", hardening.Allowed())
    assert problems
    for word in words:
        assert any(word in p for p in problems), problems


# -- make_service_spec ---------------------------------------------------------------------

SERVICE = ServiceInputs(
    name="gpuws-ada",
    command=("jupyterhub-singleuser", "--ip=0.0.0.0"),
    network_name="gpuws-net",
    volume_binds={
        "gpuws-ada-home": {"bind": "/home/jovyan", "mode": "rw"},
        "/srv/shared": {"bind": "/shared", "mode": "ro"},
    },
)


def _strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_none(v) for v in value]
    return value


def docker_py_spec(p: SpawnPlan, s: ServiceInputs, extras: ServiceExtras) -> dict[str, Any]:
    """The spec as the Swarm spawner built it with docker.types before the builders."""
    driver = None
    if s.volume_driver:
        driver = DriverConfig(s.volume_driver, dict(s.volume_driver_options) or None)
    mounts = [
        Mount(
            target=v["bind"],
            source=src,
            type="bind" if src.startswith("/") else "volume",
            read_only=v["mode"] == "ro",
            driver_config=None if src.startswith("/") else driver,
        )
        for src, v in s.volume_binds.items()
    ]
    shm = Mount("/dev/shm", None, type="tmpfs", tmpfs_size=p.shm_size, tmpfs_mode=0o1777)
    env = {**p.env, "NVIDIA_VISIBLE_DEVICES": "void"}
    if p.gpu_count:
        env["NVIDIA_DRIVER_CAPABILITIES"] = ",".join(p.capabilities)
    container = ContainerSpec(**{
        "image": p.image, "env": env, "args": list(s.command), "mounts": [*mounts, shm],
        "user": p.container_user or None, "labels": p.labels(), "init": True,
        "cap_drop": ["ALL"], "cap_add": list(p.cap_add) or None, **extras.container_spec,
    })  # fmt: skip
    ulimits = [
        {"Name": kind, "Soft": n, "Hard": n}
        for kind, n in (("nofile", p.nofile_limit), ("nproc", p.nproc_limit))
        if n
    ]
    if ulimits:
        container.setdefault("Ulimits", ulimits)
    resources = Resources(**{
        "mem_limit": p.mem_limit or None, "mem_reservation": p.mem_guarantee or None,
        "cpu_limit": int(p.cpu_limit * 1e9) if p.cpu_limit else None,
        "cpu_reservation": int(p.cpu_guarantee * 1e9) if p.cpu_guarantee else None,
        "generic_resources": {s.gpu_resource_kind: p.gpu_count} if p.gpu_count else None,
        **extras.resources_spec,
    })  # fmt: skip
    if p.pids_limit:
        resources.setdefault("Limits", {})["Pids"] = p.pids_limit
    placement = Placement(**{"constraints": list(p.constraints) or None, **extras.placement_spec})
    task = TaskTemplate(**{
        "container_spec": container, "resources": resources,
        "restart_policy": RestartPolicy(condition="none"), "placement": placement,
        "networks": [{"Target": s.network_name}], **extras.task_spec,
    })  # fmt: skip
    spec = {
        "task_template": task,
        "name": s.name,
        "labels": p.labels(),
        "endpoint_spec": EndpointSpec(**{"mode": "dnsrr", **extras.endpoint_spec}),
        **extras.create_kwargs,
    }
    return dict(_strip_none(spec))


GPU_PLAN = dict(
    gpu_count=2, mem_limit=8 * GiB, cpu_limit=2.5, mem_guarantee=GiB, cpu_guarantee=0.5,
    constraints=["node.role==worker", "node.labels.gpu==a100"], cap_add=["CHOWN"],
    env={"JUPYTERHUB_API_TOKEN": "t"}, profile_slug="gpu-2", container_user="1000:100",
    nofile_limit=16384, nproc_limit=65536,
)  # fmt: skip
SERVICES: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    ("CPU server", {}, {}, {}),
    ("GPU server with limits and constraints", GPU_PLAN, {}, {}),
    ("no limits at all", {"pids_limit": 0, "nofile_limit": 0, "nproc_limit": 0}, {}, {}),
    ("volume driver", {}, {"volume_driver": "local",
     "volume_driver_options": {"type": "nfs", "device": ":/export/ada"}}, {}),
    ("volume driver without options", {}, {"volume_driver": "local"}, {}),
    ("another resource kind", {"gpu_count": 1}, {"gpu_resource_kind": "AMD-GPU"}, {}),
    ("admin container spec", GPU_PLAN, {}, {"container_spec": {
        "env": {"ONLY": "this"}, "hostname": "nb", "workdir": "/w", "command": "tini -g --",
        "mounts": ["vol:/data:ro", "/srv/x:/x", "/anon"], "hosts": {"db": "10.0.0.2"},
        "stop_grace_period": 5, "read_only": True, "groups": ["users"], "tty": True,
        "sysctls": {"net.core.somaxconn": "1024"}}}),
    ("admin resources", GPU_PLAN, {}, {"resources_spec": {
        "mem_limit": 4 * GiB, "cpu_reservation": 10, "generic_resources": {"FPGA": 1,
                                                                           "GPU": "g-1"}}}),
    ("admin resources unset ours", GPU_PLAN, {}, {"resources_spec": {"mem_limit": None}}),
    ("admin placement", GPU_PLAN, {}, {"placement_spec": {
        "constraints": ["node.hostname==a"], "preferences": [("spread", "node.labels.zone")],
        "platforms": [("x86_64", "linux")], "maxreplicas": 1}}),
    ("admin task", {}, {}, {"task_spec": {
        "log_driver": DriverConfig("json-file", {"max-size": "1m"}), "force_update": 2,
        "networks": ["other-net"], "placement": ["node.role==manager"]}}),
    ("admin endpoint", {}, {}, {"endpoint_spec": {"mode": "vip", "ports": {
        8080: 8888, 8443: (8888, "udp", "host"), 9000: (9001, None)}}}),
    ("admin create kwargs", {}, {}, {"create_kwargs": {
        "mode": "global", "update_config": {"Parallelism": 1}, "name": "other"}}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "service", "extras"), [r[1:] for r in SERVICES], ids=[r[0] for r in SERVICES]
)
def test_make_service_spec_equals_docker_py(
    fields: dict[str, Any], service: dict[str, Any], extras: dict[str, Any]
) -> None:
    p = plan(**fields)
    inputs = ServiceInputs(**{**SERVICE.__dict__, **service})
    more = ServiceExtras(**extras)
    assert make_service_spec(p, inputs, extras=more) == docker_py_spec(p, inputs, more)


def test_the_service_spec_of_a_gpu_server() -> None:
    p = plan(**GPU_PLAN)
    spec = make_service_spec(p, SERVICE)
    task = spec["task_template"]
    container = task["ContainerSpec"]
    assert task["Resources"] == {
        "Limits": {"MemoryBytes": 8 * GiB, "NanoCPUs": 2_500_000_000, "Pids": 4096},
        "Reservations": {
            "MemoryBytes": GiB,
            "NanoCPUs": 500_000_000,
            "GenericResources": [{"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": 2}}],
        },
    }
    assert task["Placement"] == {"Constraints": ["node.role==worker", "node.labels.gpu==a100"]}
    assert task["RestartPolicy"]["Condition"] == "none"
    assert task["Networks"] == [{"Target": "gpuws-net"}]
    assert spec["endpoint_spec"] == {"Mode": "dnsrr"}
    assert spec["labels"] == container["Labels"] == p.labels()
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in container["Env"]
    assert "NVIDIA_VISIBLE_DEVICES=void" in container["Env"]
    assert container["Mounts"][-1] == {
        "Target": "/dev/shm",
        "Type": "tmpfs",
        "ReadOnly": False,
        "TmpfsOptions": {"Mode": 0o1777, "SizeBytes": GiB},
    }
    assert (container["Init"], container["CapabilityDrop"], container["User"]) == (
        True,
        ["ALL"],
        "1000:100",
    )


def test_a_cpu_service_reserves_no_gpu_and_asks_no_capabilities() -> None:
    spec = make_service_spec(plan(gpu_count=0), SERVICE)
    reservations = spec["task_template"].get("Resources", {}).get("Reservations", {})
    assert "GenericResources" not in reservations
    env = spec["task_template"]["ContainerSpec"]["Env"]
    assert [e for e in env if e.startswith("NVIDIA_")] == ["NVIDIA_VISIBLE_DEVICES=void"]
    assert "Placement" not in spec["task_template"]


def test_swarm_plan_resolved_without_pid_max_gets_the_ceiling() -> None:
    p = resolve_plan(SpawnSettings(image="nb:1"), None, user="ada", host_pid_max=None)
    ulimits = make_service_spec(p, SERVICE)["task_template"]["ContainerSpec"]["Ulimits"]
    assert ulimits == [
        {"Name": "nofile", "Soft": 16384, "Hard": 16384},
        {"Name": "nproc", "Soft": hardening.NPROC_CEILING_MAX, "Hard": hardening.NPROC_CEILING_MAX},
    ]


def test_admin_labels_merge_with_ours_so_the_hub_still_finds_its_services() -> None:
    # docker-py's ContainerSpec(**{..., **extra}) replaced the labels; nested dicts merge now
    extras = ServiceExtras(container_spec={"labels": {"team": "x"}})
    p = plan()
    labels = make_service_spec(p, SERVICE, extras=extras)["task_template"]["ContainerSpec"]
    assert labels["Labels"] == {**p.labels(), "team": "x"}


def test_admin_task_container_spec_merges_into_ours() -> None:
    extras = ServiceExtras(task_spec={"container_spec": {"Hostname": "nb", "CapabilityDrop": []}})
    container = make_service_spec(plan(), SERVICE, extras=extras)["task_template"]["ContainerSpec"]
    assert (container["Hostname"], container["CapabilityDrop"]) == ("nb", [])
    assert container["Image"] == "nb:1"  # the rest of ours stays


@pytest.mark.parametrize(
    ("extras", "words"),
    [
        ({"container_spec": {"ulimits": []}}, ["GPUSwarmSpawner.extra_container_spec['ulimits']",
                                               "cap_add", "workdir"]),
        ({"resources_spec": {"pids": 5}}, ["extra_resources_spec['pids']", "mem_limit"]),
        ({"placement_spec": {"constraint": []}}, ["extra_placement_spec['constraint']"]),
        ({"task_spec": {"ContainerSpec": {}}}, ["extra_task_spec['ContainerSpec']",
                                                "container_spec"]),
        ({"endpoint_spec": {"port": {}}}, ["extra_endpoint_spec['port']", "ports"]),
        ({"create_kwargs": {"task": {}}}, ["extra_create_kwargs['task']", "task_template"]),
        ({"container_spec": ["image"]}, ["extra_container_spec", "mapping"]),
        ({"container_spec": {"cap_add": "CHOWN"}}, ["extra_container_spec['cap_add']", "list"]),
        ({"container_spec": {"mounts": ["a:b:c:d"]}}, ["['mounts'][0]", "'a:b:c:d'"]),
        ({"resources_spec": {"generic_resources": {"GPU": 1.5}}}, ["['GPU']", "1.5"]),
        ({"placement_spec": {"preferences": [("pack", "x")]}}, ["['preferences'][0]", "spread"]),
        ({"task_spec": {"force_update": "1"}}, ["['force_update']", "whole number"]),
        ({"endpoint_spec": {"ports": {80: (1, "tcp", "host", "x")}}}, ["[80]", "at most"]),
        ({"container_spec": {"x": 1}, "owner": "MySwarm"}, ["MySwarm.extra_container_spec"]),
    ],
)  # fmt: skip
def test_bad_admin_extras_get_a_sentence(extras: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(BuildError) as caught:
        make_service_spec(plan(), SERVICE, extras=ServiceExtras(**extras))
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize(
    ("extras", "words"),
    [
        ({"container_spec": {"mounts": ["/var/run/docker.sock:/var/run/docker.sock"]}},
         ["docker.sock"]),
        ({"endpoint_spec": {"ports": {8080: 8888}}}, ["routing mesh"]),
        ({"container_spec": {"user": "0"}}, ["root"]),
        ({"container_spec": {"privileges": {"Seccomp": {"Mode": "unconfined"}}}}, ["seccomp"]),
    ],
)  # fmt: skip
def test_admin_escapes_are_reported_in_the_final_service_spec(
    extras: dict[str, Any], words: list[str]
) -> None:
    spec = make_service_spec(plan(), SERVICE, extras=ServiceExtras(**extras))
    problems = hardening.unsafe_service_spec(spec, "final", hardening.Allowed())
    assert problems
    for word in words:
        assert any(word in p for p in problems), problems


# -- purity --------------------------------------------------------------------------------


def test_builders_and_plan_import_nothing_of_docker_or_jupyterhub() -> None:
    # spawner/__init__.py imports the Docker backend for the entry point, so the package is
    # registered bare and only the pure modules' own imports are measured.
    code = textwrap.dedent(
        """
        import sys, types
        package = types.ModuleType("spawner")
        package.__path__ = ["spawner"]
        sys.modules["spawner"] = package
        import spawner.core.builders, spawner.core.plan, spawner.core.labels
        roots = {name.split(".")[0] for name in sys.modules}
        print(sorted(roots & {"docker", "dockerspawner", "jupyterhub", "tornado", "pynvml",
                              "traitlets", "requests", "jinja2"}))
        """
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"
