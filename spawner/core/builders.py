"""Pure builders: a :class:`~spawner.core.plan.SpawnPlan` in, Docker's arguments out.

As kubespawner's ``objects.make_pod``: each builder returns plain dicts and never calls the
engine or reads a spawner, so the spawners only gather values and pass the result on, and the
tests compare dicts. :func:`make_host_config` and :func:`make_create_kwargs` build what
DockerSpawner's ``create_object`` hands ``create_container`` (the host config as docker-py's
``create_host_config`` keywords); :func:`make_service_spec` builds ``create_service``'s
arguments with the Engine API's CamelCase objects, translating the admin's ``extra_*``
dicts (docker-py's snake_case keywords of ``docker.types``) with one table per type.
The admin's dicts come last and win; nested dicts merge (:func:`merge_overrides`). Both
results are what :mod:`spawner.core.hardening` checks before anything is created.
"""

from __future__ import annotations

import copy
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spawner.core.devices import build_device_request, mechanism_host_config
from spawner.core.plan import SpawnPlan

#: Docker's CPU period (µs) when the admin sets none, as DockerSpawner uses it.
CPU_PERIOD = 100_000
SHM_MODE = 0o1777


class BuildError(ValueError):
    """An admin's ``extra_*`` setting that Docker's arguments cannot be built from."""


def merge_overrides(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` on top: override wins, nested dicts are merged (copies)."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_overrides(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _drop_none(value: Any) -> Any:
    """Dicts without None values, at every depth (docker-py leaves them out; None unsets)."""
    if isinstance(value, Mapping):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


# -- one host: create_container ----------------------------------------------------------


def _device_request(plan: SpawnPlan) -> dict[str, Any] | None:
    """The nvidia device request: the claimed ids, else the static request as configured."""
    if plan.gpu_ids and plan.mechanism != "device-requests":
        return None  # the runtime or the CDI request hands them over
    if plan.gpu_ids:
        return build_device_request(device_ids=list(plan.gpu_ids), capabilities=plan.capabilities)
    return build_device_request(
        count=plan.gpu_count or None,
        device_ids=list(plan.gpu_device_ids) or None,
        all_gpus=plan.all_gpus,
        capabilities=plan.capabilities,
    )


def _ulimits(plan: SpawnPlan, name: str, soft: str, hard: str) -> list[dict[str, Any]]:
    limits = (("nofile", plan.nofile_limit), ("nproc", plan.nproc_limit))
    return [{name: kind, soft: n, hard: n} for kind, n in limits if n]


def make_host_config(plan: SpawnPlan) -> dict[str, Any]:
    """The host config (``create_host_config`` keywords) the plan asks for: /dev/shm, GPUs,
    limits and the hardening every container gets (no capabilities, no new privileges)."""
    config: dict[str, Any] = {
        "shm_size": plan.shm_size,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "init": True,
    }
    if ulimits := _ulimits(plan, "name", "soft", "hard"):
        config["ulimits"] = ulimits
    if plan.cap_add:
        config["cap_add"] = list(plan.cap_add)
    if plan.pids_limit:
        config["pids_limit"] = plan.pids_limit
    if (request := _device_request(plan)) is not None:
        # Plain snake_case dicts: docker-py's create_host_config turns them into requests.
        config["device_requests"] = [request]
    if plan.gpu_ids:
        config.update(mechanism_host_config(plan.mechanism, list(plan.gpu_ids)))
    if plan.mem_limit is not None:
        config["mem_limit"] = plan.mem_limit
    if plan.cpu_limit is not None:
        config["cpu_period"] = CPU_PERIOD
        config["cpu_quota"] = int(plan.cpu_limit * CPU_PERIOD)
    return config


@dataclass(frozen=True, kw_only=True)
class ContainerInputs:
    """What DockerSpawner works out for the container besides the plan.

    ``host_ip`` is None when the hub reaches the server over the Docker network
    (``use_internal_ip``), else the address its port is published on.
    """

    name: str
    command: Sequence[str] = ()
    volume_mount_points: Sequence[str] = ()
    volume_binds: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    links: Mapping[str, str] = field(default_factory=dict)
    mount_binds: Sequence[Mapping[str, Any]] = ()
    port: int = 8888
    host_ip: str | None = None
    network_name: str = "bridge"
    auto_remove: bool = True


def docker_environment(plan: SpawnPlan) -> dict[str, str]:
    """The container's environment: ``NVIDIA_VISIBLE_DEVICES`` names exactly its GPUs.

    CUDA base images set it to ``all``; on a host whose default runtime is nvidia that would
    hand a CPU server every GPU behind the allocator's back, so a CPU server gets ``void``.
    """
    env = dict(plan.env)
    if plan.gpu_ids:
        env["NVIDIA_VISIBLE_DEVICES"] = ",".join(plan.gpu_ids)
    elif not plan.wants_gpus:
        env["NVIDIA_VISIBLE_DEVICES"] = "void"
    return env


def _admin_create_host_config(create_kwargs: Mapping[str, Any], option: str) -> dict[str, Any]:
    value = create_kwargs.get("host_config") or {}
    if not isinstance(value, Mapping):
        raise BuildError(f"{option}['host_config']: must be a mapping, not {type(value).__name__}")
    camel = [str(k) for k in value if str(k) != str(k).lower()]
    if camel:
        raise BuildError(
            f"{option}['host_config']: not docker-py create_host_config keywords (snake_case, "
            f"e.g. mem_limit): {', '.join(camel)}; better, set them in extra_host_config"
        )
    return dict(value)


def make_create_kwargs(
    plan: SpawnPlan,
    container: ContainerInputs,
    *,
    admin_host_config: Mapping[str, Any] | None = None,
    admin_create_kwargs: Mapping[str, Any] | None = None,
    owner: str = "GPUDockerSpawner",
) -> dict[str, Any]:
    """``create_container``'s keyword arguments, as DockerSpawner's ``create_object`` builds
    them, with the admin's ``extra_host_config`` / ``extra_create_kwargs`` (rendered) on top.
    ``host_config`` stays a dict of ``create_host_config`` keywords."""
    admin_host = dict(admin_host_config or {})
    admin_create = dict(admin_create_kwargs or {})
    host: dict[str, Any] = {
        "auto_remove": container.auto_remove,
        "binds": copy.deepcopy(dict(container.volume_binds)),
        "links": dict(container.links),
        "mounts": copy.deepcopy(list(container.mount_binds)),
        **make_host_config(plan),
    }
    if container.host_ip is not None:
        host["port_bindings"] = {container.port: (container.host_ip,)}
    host = merge_overrides(host, admin_host)
    if plan.cpu_limit is not None and "cpu_period" in admin_host and "cpu_quota" not in admin_host:
        host["cpu_quota"] = int(plan.cpu_limit * admin_host["cpu_period"])
    host.setdefault("network_mode", container.network_name)
    ours: dict[str, Any] = {
        "image": plan.image,
        "environment": docker_environment(plan),
        "volumes": list(container.volume_mount_points),
        "name": container.name,
        "command": list(container.command),
        "ports": {f"{container.port}/tcp": None},
        "labels": plan.labels(),
    }
    if plan.container_user:
        ours["user"] = plan.container_user
    earlier = _admin_create_host_config(admin_create, f"{owner}.extra_create_kwargs")
    kwargs = merge_overrides(ours, {k: v for k, v in admin_create.items() if k != "host_config"})
    # As DockerSpawner: the built host config updates what extra_create_kwargs gave.
    kwargs["host_config"] = {**earlier, **host}
    return kwargs


# -- Swarm: create_service -----------------------------------------------------------------

Converter = Callable[[Any, str], Any]


def _same(value: Any, where: str) -> Any:
    return value


def _list(value: Any, where: str) -> Any:
    if not isinstance(value, list | tuple):
        raise BuildError(f"{where}: must be a list, not {type(value).__name__}")
    return list(value)


def _mapping(value: Any, where: str) -> Any:
    if not isinstance(value, Mapping):
        raise BuildError(f"{where}: must be a mapping, not {type(value).__name__}")
    return dict(value)


def _command(value: Any, where: str) -> Any:
    return shlex.split(value) if isinstance(value, str) else value


def _env(value: Any, where: str) -> Any:
    if isinstance(value, Mapping):
        return [str(k) if v is None else f"{k}={v}" for k, v in value.items()]
    return _list(value, where)


def _hosts(value: Any, where: str) -> Any:
    if isinstance(value, Mapping):
        return [f"{ip} {name}" for name, ip in sorted(value.items())]
    return _list(value, where)


def _mount_string(text: str, where: str) -> dict[str, Any]:
    """``source:target[:ro|rw]`` (or a bare target: an anonymous volume), as docker-py."""
    parts = text.split(":")
    if len(parts) > 3:
        raise BuildError(f"{where}: {text!r} is not a mount like 'source:/target[:ro]'")
    if len(parts) == 1:
        return {"Target": parts[0], "Source": None, "Type": "volume", "ReadOnly": False}
    source, target = parts[0], parts[1]
    return {
        "Target": target,
        "Source": source,
        "Type": "bind" if source.startswith("/") else "volume",
        "ReadOnly": not (len(parts) == 2 or parts[2] == "rw"),
    }


def _mounts(value: Any, where: str) -> Any:
    mounts = []
    for i, mount in enumerate(_list(value, where)):
        if isinstance(mount, str):
            mounts.append(_mount_string(mount, f"{where}[{i}]"))
        else:
            mounts.append(_mapping(mount, f"{where}[{i}]"))
    return mounts


def _generic_resources(value: Any, where: str) -> Any:
    if not isinstance(value, Mapping):
        return _list(value, where)
    resources = []
    for kind, n in value.items():
        if isinstance(n, int) and not isinstance(n, bool):
            resources.append({"DiscreteResourceSpec": {"Kind": kind, "Value": n}})
        elif isinstance(n, str):
            resources.append({"NamedResourceSpec": {"Kind": kind, "Value": n}})
        else:
            raise BuildError(f"{where}[{kind!r}]: must be a count or a resource name, not {n!r}")
    return resources


def _preferences(value: Any, where: str) -> Any:
    preferences = []
    for i, pref in enumerate(_list(value, where)):
        if isinstance(pref, Mapping):
            preferences.append(dict(pref))
        elif isinstance(pref, tuple) and len(pref) == 2 and pref[0] == "spread":
            preferences.append({"Spread": {"SpreadDescriptor": pref[1]}})
        else:
            raise BuildError(f"{where}[{i}]: {pref!r} is not ('spread', '<label descriptor>')")
    return preferences


def _platforms(value: Any, where: str) -> Any:
    return [{"Architecture": p[0], "OS": p[1]} for p in _list(value, where)]


def _placement(value: Any, where: str) -> Any:
    return {"Constraints": list(value)} if isinstance(value, list) else _mapping(value, where)


def _networks(value: Any, where: str) -> Any:
    return [{"Target": n} if isinstance(n, str) else n for n in _list(value, where)]


def _integer(value: Any, where: str) -> Any:
    if not isinstance(value, int) or isinstance(value, bool):
        raise BuildError(f"{where}: must be a whole number, not {value!r}")
    return value


def _ports(value: Any, where: str) -> Any:
    if not isinstance(value, Mapping):
        return _list(value, where)
    ports = []
    for published, target in value.items():
        spec: dict[str, Any] = {"Protocol": "tcp", "PublishedPort": published}
        if isinstance(target, tuple):
            if len(target) > 3:
                raise BuildError(f"{where}[{published!r}]: (target, protocol, mode) at most")
            spec["TargetPort"] = target[0]
            if len(target) >= 2 and target[1] is not None:
                spec["Protocol"] = target[1]
            if len(target) == 3:
                spec["PublishMode"] = target[2]
        else:
            spec["TargetPort"] = target
        ports.append(spec)
    return ports


@dataclass(frozen=True)
class Field:
    """Where one docker-py keyword goes in the API object, and how its value is written."""

    path: tuple[str, ...]
    convert: Converter = _same


def _fields(**spec: str | tuple[str, Converter]) -> dict[str, Field]:
    """``keyword="Api.Path"`` or ``keyword=("Api.Path", converter)``."""
    table = {}
    for key, value in spec.items():
        path, convert = (value, _same) if isinstance(value, str) else value
        table[key] = Field(tuple(path.split(".")), convert)
    return table


#: docker.types.ContainerSpec's keywords.
CONTAINER_SPEC_FIELDS = _fields(
    image="Image",
    command=("Command", _command),
    args="Args",
    hostname="Hostname",
    env=("Env", _env),
    workdir="Dir",
    user="User",
    labels="Labels",
    mounts=("Mounts", _mounts),
    stop_grace_period="StopGracePeriod",
    secrets=("Secrets", _list),
    tty="TTY",
    groups="Groups",
    open_stdin="OpenStdin",
    read_only="ReadOnly",
    stop_signal="StopSignal",
    healthcheck="Healthcheck",
    hosts=("Hosts", _hosts),
    dns_config="DNSConfig",
    configs=("Configs", _list),
    privileges="Privileges",
    isolation="Isolation",
    init="Init",
    cap_add=("CapabilityAdd", _list),
    cap_drop=("CapabilityDrop", _list),
    sysctls=("Sysctls", _mapping),
)
#: docker.types.Resources' keywords.
RESOURCES_FIELDS = _fields(
    cpu_limit="Limits.NanoCPUs",
    mem_limit="Limits.MemoryBytes",
    cpu_reservation="Reservations.NanoCPUs",
    mem_reservation="Reservations.MemoryBytes",
    generic_resources=("Reservations.GenericResources", _generic_resources),
)
#: docker.types.Placement's keywords.
PLACEMENT_FIELDS = _fields(
    constraints="Constraints",
    preferences=("Preferences", _preferences),
    platforms=("Platforms", _platforms),
    maxreplicas="MaxReplicas",
)
#: docker.types.TaskTemplate's keywords.
TASK_TEMPLATE_FIELDS = _fields(
    container_spec=("ContainerSpec", _mapping),
    resources=("Resources", _mapping),
    restart_policy=("RestartPolicy", _mapping),
    placement=("Placement", _placement),
    log_driver=("LogDriver", _mapping),
    networks=("Networks", _networks),
    force_update=("ForceUpdate", _integer),
)
#: docker.types.EndpointSpec's keywords.
ENDPOINT_SPEC_FIELDS = _fields(mode="Mode", ports=("Ports", _ports))
#: APIClient.create_service's keywords (docker-py converts their values itself).
SERVICE_FIELDS = _fields(
    task_template="task_template",
    name="name",
    labels="labels",
    mode="mode",
    update_config="update_config",
    networks="networks",
    endpoint_config="endpoint_config",
    endpoint_spec="endpoint_spec",
    rollback_config="rollback_config",
)


def translate(
    kwargs: Mapping[str, Any], fields: Mapping[str, Field], option: str
) -> dict[str, Any]:
    """docker-py keywords → the API object they make, by ``fields``; an unknown keyword is
    refused with a sentence naming ``option`` and the keywords there are."""
    if not isinstance(kwargs, Mapping):
        raise BuildError(f"{option}: must be a mapping of keywords, not {type(kwargs).__name__}")
    result: dict[str, Any] = {}
    for key, value in kwargs.items():
        spec = fields.get(str(key))
        if spec is None:
            raise BuildError(
                f"{option}[{key!r}]: not a keyword Docker accepts here; use one of "
                + ", ".join(sorted(fields))
            )
        where = f"{option}[{key!r}]"
        *parents, leaf = spec.path
        node = result
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = None if value is None else spec.convert(copy.deepcopy(value), where)
    return result


@dataclass(frozen=True, kw_only=True)
class ServiceInputs:
    """What the Swarm spawner works out for the service besides the plan.

    ``volume_binds`` as DockerSpawner's (``{source: {"bind": target, "mode": "rw"}}``): a
    source that is an absolute path is a bind, any other a volume of ``volume_driver`` (its
    options already rendered for this user).
    """

    name: str
    command: Sequence[str] = ()
    network_name: str
    volume_binds: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    volume_driver: str = ""
    volume_driver_options: Mapping[str, str] = field(default_factory=dict)
    gpu_resource_kind: str = "NVIDIA-GPU"


@dataclass(frozen=True, kw_only=True)
class ServiceExtras:
    """The admin's ``extra_*`` settings of the Swarm spawner (rendered), as docker-py keywords;
    ``owner`` names the class in error sentences."""

    container_spec: Mapping[str, Any] = field(default_factory=dict)
    resources_spec: Mapping[str, Any] = field(default_factory=dict)
    placement_spec: Mapping[str, Any] = field(default_factory=dict)
    task_spec: Mapping[str, Any] = field(default_factory=dict)
    endpoint_spec: Mapping[str, Any] = field(default_factory=dict)
    create_kwargs: Mapping[str, Any] = field(default_factory=dict)
    owner: str = "GPUSwarmSpawner"

    def option(self, name: str) -> str:
        return f"{self.owner}.extra_{name}"


def swarm_environment(plan: SpawnPlan) -> dict[str, str]:
    """The service's environment. GPU servers too get ``NVIDIA_VISIBLE_DEVICES=void``: the
    NVIDIA runtime takes a task's GPUs from Swarm's variable, which wins over it, and a node
    whose runtime lacks ``swarm-resource`` then gives no GPU instead of every GPU it has."""
    env = {**plan.env, "NVIDIA_VISIBLE_DEVICES": "void"}
    if plan.gpu_count:
        env["NVIDIA_DRIVER_CAPABILITIES"] = ",".join(plan.capabilities)
    return env


def _service_mounts(plan: SpawnPlan, service: ServiceInputs) -> list[dict[str, Any]]:
    driver: dict[str, Any] | None = None
    if service.volume_driver:
        driver = {"Name": service.volume_driver}
        if service.volume_driver_options:
            driver["Options"] = dict(service.volume_driver_options)
    mounts: list[dict[str, Any]] = []
    for source, volume in service.volume_binds.items():
        is_path = source.startswith("/")
        mount: dict[str, Any] = {
            "Target": volume["bind"],
            "Source": source,
            "Type": "bind" if is_path else "volume",
            "ReadOnly": volume.get("mode") == "ro",
        }
        if driver is not None and not is_path:
            mount["VolumeOptions"] = {"DriverConfig": copy.deepcopy(driver)}
        mounts.append(mount)
    shm: dict[str, Any] = {"Mode": SHM_MODE, "SizeBytes": plan.shm_size}
    mounts.append({"Target": "/dev/shm", "Type": "tmpfs", "ReadOnly": False, "TmpfsOptions": shm})
    return mounts


def _container_spec(plan: SpawnPlan, service: ServiceInputs, extras: ServiceExtras) -> Any:
    ours = {
        "image": plan.image,
        "env": swarm_environment(plan),
        "args": list(service.command),
        "mounts": _service_mounts(plan, service),
        "user": plan.container_user or None,
        "labels": plan.labels(),
        "init": True,
        "cap_drop": ["ALL"],
        "cap_add": list(plan.cap_add) or None,
    }
    spec = translate(ours, CONTAINER_SPEC_FIELDS, "the plan")
    option = extras.option("container_spec")
    spec = merge_overrides(spec, translate(extras.container_spec, CONTAINER_SPEC_FIELDS, option))
    # ContainerSpec takes no ulimits keyword: ours always apply.
    if ulimits := _ulimits(plan, "Name", "Soft", "Hard"):
        spec["Ulimits"] = ulimits
    return spec


def _resources(plan: SpawnPlan, service: ServiceInputs, extras: ServiceExtras) -> Any:
    gpus = {service.gpu_resource_kind: plan.gpu_count} if plan.gpu_count else None
    ours = {
        "mem_limit": plan.mem_limit or None,
        "mem_reservation": plan.mem_guarantee or None,
        "cpu_limit": int(plan.cpu_limit * 1e9) if plan.cpu_limit else None,
        "cpu_reservation": int(plan.cpu_guarantee * 1e9) if plan.cpu_guarantee else None,
        "generic_resources": gpus,
    }
    resources = translate(ours, RESOURCES_FIELDS, "the plan")
    option = extras.option("resources_spec")
    resources = merge_overrides(
        resources, translate(extras.resources_spec, RESOURCES_FIELDS, option)
    )
    if plan.pids_limit:
        resources.setdefault("Limits", {})["Pids"] = plan.pids_limit
    return resources


def make_service_spec(
    plan: SpawnPlan, service: ServiceInputs, *, extras: ServiceExtras | None = None
) -> dict[str, Any]:
    """``create_service``'s keyword arguments: the container, its GPUs as a generic-resource
    reservation, limits, hardening, placement and network, with the admin's extras on top."""
    extras = extras or ServiceExtras()
    placement = {"Constraints": list(plan.constraints) or None}
    option = extras.option("placement_spec")
    placement = merge_overrides(
        placement, translate(extras.placement_spec, PLACEMENT_FIELDS, option)
    )
    task: dict[str, Any] = {
        "ContainerSpec": _container_spec(plan, service, extras),
        "Resources": _resources(plan, service, extras),
        # A server that exits is stopped, as on one host: never restarted elsewhere with
        # other GPUs and another address behind the hub's back.
        "RestartPolicy": {"Condition": "none", "Delay": 0, "MaxAttempts": 0, "Window": 0},
        "Placement": placement,
        "Networks": [{"Target": service.network_name}],
    }
    option = extras.option("task_spec")
    task = merge_overrides(task, translate(extras.task_spec, TASK_TEMPLATE_FIELDS, option))
    option = extras.option("endpoint_spec")
    # DNS round robin, no published port: no routing mesh, no virtual IP (IPVS).
    endpoint = merge_overrides(
        {"Mode": "dnsrr"}, translate(extras.endpoint_spec, ENDPOINT_SPEC_FIELDS, option)
    )
    spec = {
        "task_template": task,
        "name": service.name,
        "labels": plan.labels(),
        "endpoint_spec": endpoint,
    }
    option = extras.option("create_kwargs")
    spec = merge_overrides(spec, translate(extras.create_kwargs, SERVICE_FIELDS, option))
    built: dict[str, Any] = _drop_none(spec)
    # As docker-py: an empty object is left out (ours, or emptied by the admin's None).
    _drop_empty(built["task_template"].get("Resources"), ("Limits", "Reservations"))
    _drop_empty(built["task_template"], ("Resources", "Placement"))
    return built


def _drop_empty(obj: Any, keys: Sequence[str]) -> None:
    for key in keys:
        if isinstance(obj, dict) and obj.get(key) == {}:
            del obj[key]


__all__ = [
    "CONTAINER_SPEC_FIELDS",
    "CPU_PERIOD",
    "ENDPOINT_SPEC_FIELDS",
    "PLACEMENT_FIELDS",
    "RESOURCES_FIELDS",
    "SERVICE_FIELDS",
    "TASK_TEMPLATE_FIELDS",
    "BuildError",
    "ContainerInputs",
    "Field",
    "ServiceExtras",
    "ServiceInputs",
    "docker_environment",
    "make_create_kwargs",
    "make_host_config",
    "make_service_spec",
    "merge_overrides",
    "swarm_environment",
    "translate",
]
