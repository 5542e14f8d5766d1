"""Refused means refused: every known way around the hardening checks is closed.

Each bypass of issue 14 is a table case: plain settings in, the sentence naming the option
out, through the spawner's own start-up check (both backends). The final create arguments
are checked after every merge, so a setting that only turns bad at spawn time (a callable, a
hook) is refused before Docker sees it; the ``docker`` tests prove that on the private engine:
the hub stops at start-up naming the option, and a spawn refused at create time leaves no
container behind.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import docker
import pytest
from traitlets import TraitError
from traitlets.config import Config

from spawner.backends.docker import GPUDockerSpawner
from spawner.backends.errors import WorkspaceError
from spawner.backends.swarm import GPUSwarmSpawner
from spawner.core import hardening
from spawner.core.hardening import Allowed, host_path_problem, is_root_user

BIND_ROOT = {"type": "none", "o": "bind", "device": "/"}


def _build(cls: type, **options: Any) -> Any:
    config = Config()
    for key, value in options.items():
        setattr(config[cls.__name__], key, value)
    user = SimpleNamespace(name="config-check", groups=[], url="/user/config-check/")
    return cls(config=config, user=user)


# -- every bypass stops the hub, naming the option -----------------------------------------

DOCKER_BYPASSES = [
    # extra_create_kwargs carries a host_config of its own, in Docker's CamelCase
    (
        {"extra_create_kwargs": {"host_config": {"Privileged": True}}},
        "['host_config']['Privileged']",
    ),
    ({"extra_create_kwargs": {"host_config": {"PidMode": "host"}}}, "['host_config']['PidMode']"),
    (
        {"extra_create_kwargs": {"host_config": {"Devices": [{"PathOnHost": "/dev/sda"}]}}},
        "['host_config']['Devices']",
    ),
    ({"extra_create_kwargs": {"host_config": {"CapAdd": ["SYS_ADMIN"]}}}, "'SYS_ADMIN'"),
    # an image the admin names is theirs to choose (users only pick keys, issue 19)
    ({"extra_create_kwargs": {"image": "busybox:latest"}}, None),
    # a bind of / through the local volume driver's options
    (
        {
            "mounts": [
                {
                    "type": "volume",
                    "source": "x",
                    "target": "/host",
                    "driver_config": {"name": "local", "options": BIND_ROOT},
                }
            ]
        },
        "mounts['driver_config']['options']: device '/' is the host's root folder",
    ),
    (
        {
            "extra_host_config": {
                "Mounts": [
                    {
                        "Type": "volume",
                        "Source": "x",
                        "Target": "/host",
                        "VolumeOptions": {"DriverConfig": {"Name": "local", "Options": BIND_ROOT}},
                    }
                ]
            }
        },
        "['VolumeOptions']['DriverConfig']['Options']: device '/'",
    ),
    (
        {"extra_host_config": {"mounts": [{"type": "volume", "source": "x", "target": "/h"}]}},
        None,  # a plain named volume is fine
    ),
    ({"extra_host_config": {"volume_driver": "rexray"}}, "['volume_driver']: volume driver"),
    ({"extra_host_config": {"cgroup_parent": "/"}}, "extra_host_config['cgroup_parent']"),
    ({"extra_host_config": {"CgroupParent": "/"}}, "extra_host_config['CgroupParent']"),
    ({"extra_host_config": {"oom_score_adj": -1000}}, "extra_host_config['oom_score_adj']"),
    ({"extra_host_config": {"oom_score_adj": 500}}, None),
    ({"extra_host_config": {"runtime": "runsc"}}, "extra_host_config['runtime']: runtime 'runsc'"),
    ({"extra_host_config": {"runtime": "nvidia"}}, "runtime 'nvidia'"),  # not device-requests'
    ({"gpu_mechanism": "nvidia-runtime", "extra_host_config": {"runtime": "nvidia"}}, None),
    ({"extra_create_kwargs": {"runtime": "kata"}}, "extra_create_kwargs['runtime']"),
    # uid 0 however it is written
    ({"container_user": "00:100"}, "container_user"),
    ({"container_user": "+0"}, "container_user"),
    ({"container_user": " 0"}, "container_user"),
    ({"container_user": "-0:0"}, "container_user"),
    ({"container_user": "root:users"}, "container_user"),
    ({"container_user": "1000:100"}, None),
    ({"extra_create_kwargs": {"user": "+0"}}, "extra_create_kwargs['user']: '+0' is root"),
    ({"extra_create_kwargs": {"user": "000"}}, "extra_create_kwargs['user']"),
    # any spelling: docker-py's, the API's, Go's case-insensitive JSON
    ({"extra_host_config": {"pid_mode": "host"}}, "extra_host_config['pid_mode']"),
    ({"extra_host_config": {"PidMode": "host"}}, "extra_host_config['PidMode']"),
    ({"extra_host_config": {"pidmode": "host"}}, "extra_host_config['pidmode']"),
    ({"extra_host_config": {"CapAdd": ["NET_ADMIN"]}}, "extra_host_config['CapAdd']"),
    # not on the allow-list at all
    ({"extra_host_config": {"sysctls": {"net.ipv4.ip_forward": "1"}}}, "allow-list"),
    ({"extra_host_config": {"MaskedPaths": []}}, "['MaskedPaths']: not on this hub's allow-list"),
    ({"extra_create_kwargs": {"networking_config": {"x": {}}}}, "['networking_config']"),
    (
        {"extra_host_config": {"security_opt": ["seccomp=/etc/permissive.json"]}},
        "one this hub cannot check",
    ),
    # what works today keeps working
    (
        {
            "extra_host_config": {
                "shm_size": "2g",
                "mem_limit": "4g",
                "cpu_period": 100000,
                "ulimits": [{"name": "memlock", "soft": -1, "hard": -1}],
                "pids_limit": 2048,
                "security_opt": ["no-new-privileges:true", "apparmor=docker-default"],
                "port_bindings": {8888: ("127.0.0.1",)},
                "dns": ["10.0.0.2"],
            },
            "extra_create_kwargs": {"labels": {"site": "lab"}, "working_dir": "/home/jovyan"},
            "read_only_volumes": {"/srv/datasets": "/home/jovyan/datasets"},
        },
        None,
    ),
]


@pytest.mark.parametrize(("options", "named"), DOCKER_BYPASSES)
def test_single_host_bypasses_stop_the_hub_naming_the_option(
    options: dict[str, Any], named: str | None
) -> None:
    if named is None:
        _build(GPUDockerSpawner, **options)
        return
    with pytest.raises(TraitError) as refused:
        _build(GPUDockerSpawner, **options)
    message = str(refused.value)
    assert named in message, message
    assert "GPUDockerSpawner." in message and "Traceback" not in message


SWARM_BYPASSES = [
    (
        {"extra_container_spec": {"mounts": [{"Type": "bind", "Source": "/", "Target": "/h"}]}},
        "GPUSwarmSpawner.extra_container_spec['mounts'][0]: host path '/'",
    ),
    ({"extra_container_spec": {"user": "0"}}, "extra_container_spec['user']: '0' is root"),
    ({"extra_container_spec": {"image": "busybox:latest"}}, None),
    ({"extra_container_spec": {"cap_add": ["SYS_ADMIN"]}}, "extra_container_spec['cap_add']"),
    ({"extra_container_spec": {"sysctls": {"a": "1"}}}, "extra_container_spec['sysctls']"),
    (
        {"extra_container_spec": {"privileges": {"NoNewPrivileges": False}}},
        "['privileges']['NoNewPrivileges']",
    ),
    (
        {"extra_container_spec": {"privileges": {"Seccomp": {"Mode": "unconfined"}}}},
        "['privileges']['Seccomp']",
    ),
    (
        {
            "extra_task_spec": {
                "container_spec": {
                    "Image": "x",
                    "Mounts": [{"Type": "bind", "Source": "/var/run/docker.sock", "Target": "/s"}],
                }
            }
        },
        "extra_task_spec['container_spec']['Mounts'][0]",
    ),
    ({"extra_task_spec": {"PluginSpec": {"Name": "x"}}}, "extra_task_spec['PluginSpec']"),
    ({"extra_endpoint_spec": {"ports": {8888: 8888}}}, "extra_endpoint_spec['ports']"),
    ({"extra_create_kwargs": {"task_template": {"Runtime": "plugin"}}}, "['Runtime']"),
    ({"volume_driver": "rexray"}, "GPUSwarmSpawner.volume_driver: volume driver 'rexray'"),
    (
        {"volume_driver": "local", "volume_driver_options": BIND_ROOT},
        "GPUSwarmSpawner.volume_driver_options: device '/'",
    ),
    ({"volume_driver_options": {"type": "ext4", "device": "/dev/sda1"}}, "'/dev/sda1'"),
    ({"container_user": "+0"}, "container_user"),
    # what works today keeps working: NFS homes, placement, resources
    (
        {
            "volume_driver": "local",
            "volume_driver_options": {"type": "nfs", "device": ":/homes/{username}"},
            "extra_placement_spec": {"preferences": [("spread", "node.labels.rack")]},
            "extra_resources_spec": {"mem_reservation": "1g"},
            "extra_container_spec": {"stop_grace_period": 10_000_000_000},
        },
        None,
    ),
]


@pytest.mark.parametrize(("options", "named"), SWARM_BYPASSES)
def test_swarm_bypasses_stop_the_hub_naming_the_option(
    options: dict[str, Any], named: str | None
) -> None:
    if named is None:
        _build(GPUSwarmSpawner, **options)
        return
    with pytest.raises(TraitError) as refused:
        _build(GPUSwarmSpawner, **options)
    assert named in str(refused.value), str(refused.value)


@pytest.mark.parametrize(
    ("user", "root"),
    [
        ("0", True),
        ("00:100", True),
        ("+0", True),
        (" 0", True),
        ("-0", True),
        ("0000000000:0", True),
        ("root", True),
        (" root:root", True),
        ("1000:100", False),
        ("1000:0", False),  # gid 0 is not uid 0
        ("jovyan", False),
        ("rooty", False),
        ("", False),
    ],
)
def test_uids_are_read_as_numbers(user: str, root: bool) -> None:
    assert is_root_user(user) is root


@pytest.mark.parametrize(
    ("path", "root", "refused"),
    [
        ("/data/docker/volumes/gpuws-home-alice/_data", "/data/docker", True),
        ("/data/docker", "/data/docker", True),
        ("/data/dockerish", "/data/docker", False),
        ("/var/lib/docker/volumes", "/data/docker", True),  # the usual root stays refused
        ("/data/docker/volumes", "/var/lib/docker", False),
    ],
)
def test_the_engines_own_data_root_is_a_system_folder(path: str, root: str, refused: bool) -> None:
    assert (host_path_problem(path, Allowed(docker_root=root)) is not None) is refused


# -- the final arguments, after every merge (offline: Docker's calls are recorded) -------


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Spawners whose Docker calls are recorded instead of sent (a client to no engine)."""
    calls: list[tuple[str, dict[str, Any]]] = []
    client = docker.APIClient(base_url="unix:///nonexistent/docker.sock", version="1.44")
    # the engine that never answers, as the runtime's client of both backends
    monkeypatch.setattr(GPUDockerSpawner, "client", property(lambda self: client))
    monkeypatch.setattr(GPUSwarmSpawner, "client", property(lambda self: client))

    def record(self: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        calls.append((method, kwargs))
        return {"Id": "recorded", "ID": "recorded"}

    monkeypatch.setattr(GPUDockerSpawner, "_docker", record)
    monkeypatch.setattr(GPUSwarmSpawner, "_docker", record)
    return calls


def _offline(cls: type, **options: Any) -> Any:
    spawner = _build(cls, cmd=["jupyterhub-singleuser"], **options)
    spawner.get_env = lambda: {"JUPYTERHUB_API_TOKEN": "x"}
    return spawner


@pytest.mark.parametrize(
    ("options", "gpu_ids"),
    [
        ({}, []),
        ({"mem_limit": 2 * 1024**3, "cpu_limit": 1.5, "shm_size": "1g"}, []),
        ({}, ["0", "1"]),
        ({"gpu_mechanism": "nvidia-runtime"}, ["2"]),
        ({"gpu_mechanism": "cdi"}, ["3"]),
        ({"host_port_mode": True, "read_only_volumes": {"/srv/data": "/data"}}, []),
    ],
)
async def test_what_the_hub_builds_itself_passes_the_final_check(
    offline: list[Any], options: dict[str, Any], gpu_ids: list[str]
) -> None:
    spawner = _offline(GPUDockerSpawner, **options)
    spawner.gpu_ids = gpu_ids
    await spawner._create_container()
    [(method, kwargs)] = offline
    assert method == "create_container"
    host = kwargs["host_config"]
    assert host["CapDrop"] == ["ALL"] and "no-new-privileges:true" in host["SecurityOpt"]
    if options.get("gpu_mechanism") == "nvidia-runtime":
        assert host["Runtime"] == "nvidia"
    elif gpu_ids:
        assert host["DeviceRequests"], host
    if options.get("host_port_mode"):
        assert host["PortBindings"] == {"8888/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}


def _privileged(spawner: Any) -> dict[str, Any]:
    return {"Privileged": True}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        # a callable, known only at spawn time
        ({"extra_host_config": _privileged}, "GPUDockerSpawner.extra_host_config['Privileged']"),
        (
            {"extra_create_kwargs": lambda s: {"host_config": {"PidMode": "host"}}},
            "GPUDockerSpawner.extra_create_kwargs['host_config']['PidMode']",
        ),
        # set behind the start-up check's back (a pre_spawn_hook): only the merge shows it
        ({"volumes": {"/": "/host"}}, "final create_container arguments['host_config']['Binds']"),
        ({"image": "busybox:latest"}, None),  # a hook's image runs (admin code is trusted)
        ({"container_user": "1000"}, None),
    ],
)
async def test_spawn_time_settings_are_refused_before_docker_sees_them(
    offline: list[Any], change: dict[str, Any], named: str | None
) -> None:
    spawner = _offline(GPUDockerSpawner)
    for key, value in change.items():
        setattr(spawner, key, value)
    if named is None:
        await spawner._create_container()
        assert [m for m, _ in offline] == ["create_container"]
        return
    with pytest.raises(WorkspaceError) as refused:
        await spawner._create_container()
    assert named in str(refused.value), str(refused.value)
    assert "nothing was started" in str(refused.value)
    assert refused.value.status_code == 500
    assert [m for m, _ in offline if m.startswith("create")] == []


async def test_swarm_service_spec_is_checked_whole(offline: list[Any]) -> None:
    spawner = _offline(GPUSwarmSpawner, network_name="net")
    spec = await spawner.service_spec()
    assert hardening.unsafe_service_spec(spec, "spec", spawner.refusal_rules()) == []
    await spawner.create_object()
    assert [m for m, _ in offline if m == "create_service"] == ["create_service"]

    offline.clear()
    # replaced behind the start-up check's back: the whole container spec of the task
    spawner.extra_task_spec = {
        "container_spec": {"Image": spawner.image, "Mounts": [{"Type": "bind", "Source": "/etc"}]}
    }
    with pytest.raises(WorkspaceError) as refused:
        await spawner.create_object()
    assert "final create_service arguments['task_template']['ContainerSpec']['Mounts'][0]" in str(
        refused.value
    )
    assert [m for m, _ in offline if m == "create_service"] == []


# -- on the private engine -------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.parametrize(
    ("extra_config", "named"),
    [
        (
            "c.GPUDockerSpawner.extra_create_kwargs = {'host_config': {'Privileged': True}}\n",
            "GPUDockerSpawner.extra_create_kwargs['host_config']['Privileged']",
        ),
        ("c.GPUDockerSpawner.container_user = '+0'\n", "GPUDockerSpawner.container_user"),
    ],
)
def test_the_hub_stops_at_start_up_naming_the_option(
    start_hub: Any, extra_config: str, named: str
) -> None:
    with pytest.raises(RuntimeError) as stopped:
        start_hub(extra_config=extra_config)
    output = str(stopped.value)
    assert "configuration error" in output and named in output, output[-2000:]
    assert "Traceback" not in output, output[-3000:]


@pytest.mark.docker
def test_the_engines_data_root_is_read_from_docker_info(start_hub: Any, docker_client: Any) -> None:
    root = docker_client.info()["DockerRootDir"]
    assert root != hardening.DEFAULT_DOCKER_ROOT, "the private engine has a data root of its own"
    config = f"c.GPUDockerSpawner.read_only_volumes = {{{root + '/volumes'!r}: '/data'}}\n"
    with pytest.raises(RuntimeError) as stopped:
        start_hub(extra_config=config)
    output = str(stopped.value)
    assert "GPUDockerSpawner.read_only_volumes" in output, output[-2000:]
    assert f"inside the host system folder {root}" in output, output[-2000:]


@pytest.mark.docker
def test_a_callable_bypass_is_refused_at_spawn_and_nothing_is_created(
    start_hub: Any, docker_client: Any
) -> None:
    hub = start_hub(
        extra_config="""
def _host_config(spawner):
    return {"PidMode": "host"} if spawner.user.name == "mallory" else {"pids_limit": 1024}
c.GPUDockerSpawner.extra_host_config = _host_config
"""
    )
    r = hub.request_spawn("mallory", {"profile": "cpu"})
    if r.status_code >= 400:
        message = r.json()["message"]
    else:
        events = hub.progress_events("mallory")
        assert events and events[-1].get("failed"), events
        message = events[-1]["message"]
    assert "GPUDockerSpawner.extra_host_config['PidMode']" in message, message
    assert "nothing was started" in message and "Traceback" not in message
    assert not (hub.server_model("mallory") or {}).get("ready")
    created = docker_client.containers.list(all=True, filters={"name": f"{hub.prefix}-mallory"})
    assert created == [], [c.name for c in created]

    # the same callable's safe answer runs, with the merged setting in place
    hub.spawn("alice", {"profile": "cpu"})
    container = hub.server_container(docker_client, "alice")
    assert container.attrs["HostConfig"]["PidsLimit"] == 1024
    assert container.attrs["HostConfig"]["PidMode"] == ""
