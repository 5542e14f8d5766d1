"""What a notebook container may get: one allow-list over the final create arguments.

Notebook users run arbitrary code, and the hub holds the Docker socket. Whatever an admin adds
(``volumes``, ``mounts``, ``extra_host_config``, ``extra_create_kwargs``, ``cap_add``, Swarm's
``extra_*_spec``), and whatever a callable returns at spawn time, the arguments that reach
Docker are checked here against :data:`HOST_CONFIG`, :data:`CREATE_KWARGS` and the Swarm tables
(:data:`SERVICE_SPEC` and what it holds). Keys are compared in one spelling (lower case, no
``_``), so docker-py's ``pid_mode``, the API's ``PidMode`` and Go's case-insensitive
``pidmode`` are one key. A key that is not in a table is refused; a key that is has a rule for
its value. Each problem is one sentence that names the option and the key as written.

The spawner refuses such settings at hub start-up (and again when it builds a container or
service, for callables and for the merged result) unless ``allow_host_access`` is set.
Nothing here imports Docker.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Docker's data root when ``docker info`` cannot be read.
DEFAULT_DOCKER_ROOT = "/var/lib/docker"
#: Host folders a notebook may never see, not even read-only: the host's configuration,
#: devices and kernel interfaces, runtime sockets, the boot and root folders, and the
#: engine's own files (which hold every user's home volume). The engine's actual data root
#: (``docker info``'s DockerRootDir) is added by :class:`Allowed`.
SYSTEM_PATHS: tuple[str, ...] = (
    "/etc",
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/var/run",
    "/boot",
    "/root",
    DEFAULT_DOCKER_ROOT,
    "/var/lib/containerd",
)
#: File names of container-engine control sockets: access to one is root on the host.
ENGINE_SOCKETS: tuple[str, ...] = (
    "docker.sock",
    "containerd.sock",
    "podman.sock",
    "crio.sock",
    "dockershim.sock",
)
#: Capabilities ``cap_add`` may name without ``allow_host_access``: Docker's own default set
#: minus NET_RAW (packet forging, ARP spoofing on the shared network) and MKNOD. The notebook
#: runs as a non-root user with no-new-privileges, so an added capability is only in the
#: bounding set; none is needed by default and the default list is empty.
CAPABILITY_ALLOWLIST: frozenset[str] = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
#: Template fields that carry a name as the user typed it, unescaped.
RAW_NAME_FIELDS: tuple[str, ...] = ("{raw_username}", "{raw_servername}")
#: The host-wide ceiling on notebook processes (RLIMIT_NPROC) is never set above this.
NPROC_CEILING_MAX = 65536
#: Runtimes every GPU mechanism accepts ("" is the engine's default runtime).
DEFAULT_RUNTIMES: frozenset[str] = frozenset({"", "runc"})
#: Filesystem types of the local volume driver whose ``device`` is not a path on the host.
REMOTE_FILESYSTEMS: frozenset[str] = frozenset({"nfs", "nfs4", "cifs", "smb3", "tmpfs"})
#: Volume drivers whose options this module can read; a plugin's cannot be checked.
VOLUME_DRIVERS: frozenset[str] = frozenset({"", "local"})


@dataclass(frozen=True)
class Allowed:
    """What the values may name on this hub: its runtimes, its engine's root. (Images are not
    checked here: admin code names them; users only pick keys, spawner/core/choices.py.)"""

    #: The runtimes the GPU mechanism needs (``nvidia`` for ``nvidia-runtime``).
    runtimes: frozenset[str] = DEFAULT_RUNTIMES
    #: ``docker info``'s DockerRootDir: every volume of every user lives below it.
    docker_root: str = DEFAULT_DOCKER_ROOT

    @property
    def system_paths(self) -> tuple[str, ...]:
        root = posixpath.normpath(self.docker_root or DEFAULT_DOCKER_ROOT)
        return SYSTEM_PATHS if root in SYSTEM_PATHS else (*SYSTEM_PATHS, root)


DEFAULT = Allowed()

#: A rule reads one value (``where`` names it, as the admin wrote it) and returns problems.
Rule = Callable[[Any, str, Allowed], list[str]]


def capability_name(name: str) -> str:
    """``"cap_sys_admin"`` → ``"SYS_ADMIN"``."""
    text = name.strip().upper()
    return text[4:] if text.startswith("CAP_") else text


def unsafe_capabilities(caps: Iterable[str], option: str) -> list[str]:
    """Capabilities outside :data:`CAPABILITY_ALLOWLIST`."""
    problems = []
    for cap in caps:
        if capability_name(str(cap)) not in CAPABILITY_ALLOWLIST:
            problems.append(
                f"{option}: capability {str(cap)!r} is not on the allowlist "
                f"({', '.join(sorted(CAPABILITY_ALLOWLIST))}); it can reach the host"
            )
    return problems


def _id_is_zero(text: str) -> bool | None:
    """Whether a uid/gid written as a number is 0 (None: it is a name). Docker's parser
    reads "00", "+0" and "-0" as 0, so they are compared as numbers, not as text."""
    value = text.strip()
    if re.fullmatch(r"[+-]?[0-9]+", value):
        return int(value) == 0
    return None


def is_root_user(user: Any) -> bool:
    """Whether a container ``user`` ("uid[:gid]" or "name[:group]") runs as root."""
    uid = str(user).split(":", 1)[0]
    zero = _id_is_zero(uid)
    return zero if zero is not None else uid.strip() == "root"


def is_root_group(group: Any) -> bool:
    zero = _id_is_zero(str(group))
    return zero if zero is not None else str(group).strip() == "root"


def host_path_problem(path: str, allowed: Allowed = DEFAULT) -> str | None:
    """Why a notebook may not see host path ``path``, or None if it may."""
    clean = posixpath.normpath(path)
    if clean.startswith("//"):
        clean = "/" + clean.lstrip("/")
    name = posixpath.basename(clean)
    if name in ENGINE_SOCKETS or "docker.sock" in clean:
        return "is a container engine socket: whoever can reach it is root on the host"
    if clean == "/":
        return "is the host's root folder"
    for folder in allowed.system_paths:
        if clean == folder or clean.startswith(folder + "/"):
            return f"is inside the host system folder {folder}"
    return None


def _is_host_path(source: str) -> bool:
    return source.startswith("/")


def _source_problems(source: str, option: str, allowed: Allowed = DEFAULT) -> list[str]:
    if not _is_host_path(source):
        return []  # a named volume
    problems = []
    if any(f in source for f in RAW_NAME_FIELDS):
        problems.append(
            f"{option}: host path {source!r} uses an unescaped name field "
            f"({' / '.join(RAW_NAME_FIELDS)}); use {{username}} / {{servername}}, which "
            "are escaped"
        )
    reason = host_path_problem(source, allowed)
    if reason:
        problems.append(f"{option}: host path {source!r} {reason}")
    return problems


def unsafe_volumes(
    volumes: Mapping[str, Any], option: str, allowed: Allowed = DEFAULT
) -> list[str]:
    """DockerSpawner ``volumes``/``read_only_volumes``: ``{host path or volume: target}``."""
    problems = []
    for source in volumes:
        problems += _source_problems(str(source), option, allowed)
    return problems


# -- the tables ----------------------------------------------------------------------------


def _norm(key: str) -> str:
    return key.replace("_", "").replace("-", "").lower()


@dataclass(frozen=True)
class Table:
    """The keys one Docker object may carry, each with the rule for its value."""

    what: str
    rules: Mapping[str, Rule]
    #: other spellings (docker-py's keyword, the API's field) of a key in ``rules``
    aliases: Mapping[str, str] = field(default_factory=dict)

    def rule(self, key: str) -> Rule | None:
        name = _norm(key)
        return self.rules.get(self.aliases.get(name, name))


def check(obj: Any, table: Table, where: str, allowed: Allowed = DEFAULT) -> list[str]:
    """Every problem of mapping ``obj`` under ``table`` (unknown keys are problems)."""
    if obj is None:
        return []
    if not isinstance(obj, Mapping):
        return [f"{where}: must be a mapping of {table.what} settings, not {type(obj).__name__}"]
    problems = []
    for key, value in obj.items():
        if value is None:
            continue  # docker-py leaves None out; the API reads null as unset
        here = f"{where}[{key!r}]"
        rule = table.rule(str(key))
        if rule is None:
            problems.append(
                f"{here}: not on this hub's allow-list of {table.what} settings "
                "(spawner/core/hardening.py), so it is not passed to Docker"
            )
            continue
        problems += rule(value, here, allowed)
    return problems


def _any(value: Any, where: str, allowed: Allowed) -> list[str]:
    return []


def _off(reason: str) -> Rule:
    def rule(value: Any, where: str, allowed: Allowed) -> list[str]:
        return [f"{where}: {reason}"] if value else []

    return rule


def _empty(reason: str) -> Rule:
    def rule(value: Any, where: str, allowed: Allowed) -> list[str]:
        items = [value] if isinstance(value, str | bytes) else list(value or ())
        return [f"{where}: {str(item)!r} {reason}" for item in items if item]

    return rule


def _namespace(allowed_modes: Iterable[str], what: str) -> Rule:
    modes = frozenset(allowed_modes)

    def rule(value: Any, where: str, allowed: Allowed) -> list[str]:
        mode = str(value)
        if mode.lower() in modes:
            return []
        if mode == "host" or mode.startswith("container:"):
            return [f"{where}: {mode!r} shares a namespace outside the container"]
        return [f"{where}: {mode!r} is not a {what} mode this hub accepts ({sorted(modes)})"]

    return rule


def _network_mode(value: Any, where: str, allowed: Allowed) -> list[str]:
    mode = str(value)
    if mode == "host" or mode.startswith("container:"):
        return [f"{where}: {mode!r} shares a namespace outside the container"]
    return []


def _plain(words: str) -> dict[str, Rule]:
    """Keys whose value is the admin's to choose: limits, names, plain settings."""
    return dict.fromkeys(words.split(), _any)


def _nested(table: Table) -> Rule:
    def rule(value: Any, where: str, allowed: Allowed) -> list[str]:
        return check(value, table, where, allowed)

    return rule


def _each(table: Table) -> Rule:
    def rule(value: Any, where: str, allowed: Allowed) -> list[str]:
        problems = []
        for i, item in enumerate([value] if isinstance(value, Mapping) else list(value or ())):
            problems += check(item, table, f"{where}[{i}]", allowed)
        return problems

    return rule


def _user(value: Any, where: str, allowed: Allowed) -> list[str]:
    if is_root_user(value):
        return [f"{where}: {str(value)!r} is root; notebooks must not run as root"]
    return []


def _groups(value: Any, where: str, allowed: Allowed) -> list[str]:
    groups = [value] if isinstance(value, str | int) else list(value or ())
    return [f"{where}: {str(g)!r} adds the root group" for g in groups if is_root_group(g)]


def _runtime(value: Any, where: str, allowed: Allowed) -> list[str]:
    if str(value) in allowed.runtimes:
        return []
    named = ", ".join(repr(r) for r in sorted(allowed.runtimes) if r)
    return [
        f"{where}: runtime {str(value)!r} is not the one this hub's GPU mechanism needs "
        f"({named} or the engine's default); another runtime changes how notebooks are isolated"
    ]


def _cap_add(value: Any, where: str, allowed: Allowed) -> list[str]:
    return unsafe_capabilities([value] if isinstance(value, str) else value or [], where)


def _cap_drop(value: Any, where: str, allowed: Allowed) -> list[str]:
    dropped = {capability_name(str(c)) for c in ([value] if isinstance(value, str) else value)}
    return [] if "ALL" in dropped else [f"{where}: must include 'ALL'"]


def _security_opt_problem(entry: str) -> str | None:
    key, _, value = entry.replace(":", "=", 1).partition("=")
    key, value = key.strip().lower(), value.strip().lower()
    if key == "seccomp" and value == "unconfined":
        return "switches off Docker's default seccomp profile"
    if key == "seccomp" and value not in ("builtin", "default"):
        return "replaces Docker's default seccomp profile with one this hub cannot check"
    if key == "apparmor" and value == "unconfined":
        return "switches off AppArmor confinement"
    if key == "label" and (value == "disable" or value.endswith(("spc_t", "unconfined_t"))):
        return "switches off SELinux labelling"
    if key == "systempaths" and value == "unconfined":
        return "unmasks /proc and /sys paths Docker hides"
    if key == "no-new-privileges" and value == "false":
        return "lets setuid programs gain privileges"
    if key not in ("seccomp", "apparmor", "label", "no-new-privileges"):
        return "is not a security option this hub accepts"
    return None


def _security_opt(value: Any, where: str, allowed: Allowed) -> list[str]:
    entries = [str(e) for e in ([value] if isinstance(value, str) else value)]
    problems = []
    for entry in entries:
        reason = _security_opt_problem(entry)
        if reason:
            problems.append(f"{where}: {entry!r} {reason}")
    keys = {e.replace(":", "=", 1).partition("=")[0].strip().lower() for e in entries}
    if "no-new-privileges" not in keys:
        problems.append(
            f"{where}: drops 'no-new-privileges:true', which the hub sets (keep it in the list)"
        )
    return problems


def _published_on_all_interfaces(bindings: Any) -> bool:
    values = bindings if isinstance(bindings, list) else [bindings]
    for value in values:
        if value is None or isinstance(value, int | str):
            return True  # a bare port is published on every interface
        if isinstance(value, tuple | list) and value and str(value[0]) in ("", "0.0.0.0", "::"):
            return True
        if isinstance(value, Mapping) and str(value.get("HostIp", "")) in ("", "0.0.0.0", "::"):
            return True
    return False


def _port_bindings(value: Any, where: str, allowed: Allowed) -> list[str]:
    return [
        f"{where}: port {port} is published on every interface"
        for port, bindings in dict(value or {}).items()
        if _published_on_all_interfaces(bindings)
    ]


def _oom_score_adj(value: Any, where: str, allowed: Allowed) -> list[str]:
    try:
        ok = int(value) >= 0
    except (TypeError, ValueError):
        ok = False
    if ok:
        return []
    return [f"{where}: {value!r} makes the host's own processes die first when memory runs out"]


def _binds_sources(binds: Any) -> list[str]:
    """Host sides of docker-py ``binds``: ``["/src:/dst:ro"]`` or ``{"/src": {...}}``."""
    if isinstance(binds, Mapping):
        return [str(k) for k in binds]
    if isinstance(binds, str | bytes):
        binds = [binds]
    if isinstance(binds, Iterable):
        return [str(b).split(":", 1)[0] for b in binds]
    return []


def _binds(value: Any, where: str, allowed: Allowed) -> list[str]:
    problems = []
    for source in _binds_sources(value):
        problems += _source_problems(source, where, allowed)
    return problems


def _volume_driver(value: Any, where: str, allowed: Allowed) -> list[str]:
    if str(value).lower() in VOLUME_DRIVERS:
        return []
    return [
        f"{where}: volume driver {str(value)!r} is a plugin whose options this hub cannot "
        "check; only the local driver is accepted"
    ]


def _driver_options(value: Any, where: str, allowed: Allowed) -> list[str]:
    """The local driver's ``type``/``o``/``device``: anything but a network filesystem or a
    tmpfs mounts ``device`` from the host (``o=bind``, or a block device)."""
    options = {str(k).lower(): str(v) for k, v in dict(value or {}).items()}
    device = options.get("device", "")
    if not device or options.get("type", "").lower() in REMOTE_FILESYSTEMS:
        return []
    path = device if device.startswith("/") else "/" + device  # dockerd's working folder is /
    reason = host_path_problem(path, allowed)
    return [f"{where}: device {device!r} {reason}"] if reason else []


def _propagation(value: Any, where: str, allowed: Allowed) -> list[str]:
    if str(value).lower() in ("", "private", "rprivate"):
        return []
    return [f"{where}: {str(value)!r} propagates mounts between the container and the host"]


DRIVER_CONFIG = Table(
    "volume driver",
    {"name": _volume_driver, "options": _driver_options},
)
BIND_OPTIONS = Table(
    "bind mount option",
    {
        "propagation": _propagation,
        "nonrecursive": _any,
        "readonlynonrecursive": _any,
        "readonlyforcerecursive": _any,
    },
)
VOLUME_OPTIONS = Table(
    "volume mount option",
    {"nocopy": _any, "labels": _any, "driverconfig": _nested(DRIVER_CONFIG), "subpath": _any},
)
MOUNT = Table(
    "mount",
    {
        "type": _any,  # checked with the source below
        "source": _any,
        "target": _any,
        "readonly": _any,
        "consistency": _any,
        "propagation": _propagation,
        "nocopy": _any,
        "labels": _any,
        "driverconfig": _nested(DRIVER_CONFIG),
        "tmpfssize": _any,
        "tmpfsmode": _any,
        "bindoptions": _nested(BIND_OPTIONS),
        "volumeoptions": _nested(VOLUME_OPTIONS),
        "tmpfsoptions": _any,
    },
    {"destination": "target"},
)
MOUNT_TYPES = frozenset({"bind", "volume", "tmpfs"})


def _mounts(value: Any, where: str, allowed: Allowed) -> list[str]:
    problems = []
    for i, mount in enumerate([value] if isinstance(value, Mapping) else list(value or ())):
        here = f"{where}[{i}]"
        if not isinstance(mount, Mapping):
            problems.append(f"{here}: a mount must be a mapping (type, source, target)")
            continue
        fields = {_norm(str(k)): v for k, v in mount.items()}
        kind = str(fields.get("type") or "volume").lower()
        source = str(fields.get("source") or "")
        problems += check(mount, MOUNT, here, allowed)
        if kind not in MOUNT_TYPES:
            problems.append(f"{here}: mount type {kind!r} is not bind, volume or tmpfs")
        if kind == "bind" or _is_host_path(source):
            problems += _source_problems(source, here, allowed)
    return problems


def unsafe_mounts(
    mounts: Sequence[Mapping[str, Any]], option: str, allowed: Allowed = DEFAULT
) -> list[str]:
    """DockerSpawner ``mounts``, a host config's ``mounts`` or a ContainerSpec's ``Mounts``."""
    problems = []
    for mount in mounts:
        # one entry at a time, so each sentence names the option as the admin wrote it
        problems += [
            p.replace(f"{option}[0]", option, 1) for p in _mounts([mount], option, allowed)
        ]
    return problems


def unsafe_driver_config(
    name: str, options: Mapping[str, Any] | None, option: str, allowed: Allowed = DEFAULT
) -> list[str]:
    """Swarm's ``volume_driver`` and ``volume_driver_options``."""
    return _volume_driver(name or "", option, allowed) + _driver_options(
        options, f"{option}_options", allowed
    )


def _device_requests(value: Any, where: str, allowed: Allowed) -> list[str]:
    problems = []
    for i, request in enumerate(list(value or ())):
        here = f"{where}[{i}]"
        problems += check(request, DEVICE_REQUEST, here, allowed)
        if not isinstance(request, Mapping):
            continue
        fields = {_norm(str(k)): v for k, v in request.items()}
        driver = str(fields.get("driver") or "").lower()
        if driver not in ("", "nvidia", "cdi"):
            problems.append(f"{here}: driver {driver!r} is not the NVIDIA or CDI GPU driver")
        if driver == "cdi":
            for device in fields.get("deviceids") or ():
                if not str(device).startswith("nvidia.com/gpu="):
                    problems.append(f"{here}: CDI device {str(device)!r} is not an NVIDIA GPU")
    return problems


DEVICE_REQUEST = Table(
    "device request",
    {"driver": _any, "count": _any, "deviceids": _any, "capabilities": _any, "options": _any},
)

_CONFINED = "shares a namespace outside the container"
HOST_CONFIG = Table(
    "host config",
    {
        # isolation: fixed values only
        "privileged": _off("a privileged container is root on the host"),
        "pidmode": _namespace({""}, "PID"),
        "ipcmode": _namespace({"", "private", "shareable", "none"}, "IPC"),
        "utsmode": _namespace({""}, "UTS"),
        "usernsmode": _namespace({""}, "user namespace"),
        "cgroupnsmode": _namespace({"", "private"}, "cgroup namespace"),
        "networkmode": _network_mode,
        "securityopt": _security_opt,
        "capadd": _cap_add,
        "capdrop": _cap_drop,
        "runtime": _runtime,
        "cgroupparent": _off("moves the container out of Docker's cgroup, past its limits"),
        "oomscoreadj": _oom_score_adj,
        "oomkilldisable": _off("lets the container fill the host's memory unstopped"),
        "initpath": _off("runs a host program as the container's init"),
        # what the container sees of the host
        "binds": _binds,
        "mounts": _mounts,
        "volumedriver": _volume_driver,
        "volumesfrom": _empty("mounts another container's volumes"),
        "devices": _empty("passes a host device in (GPUs come through device requests)"),
        "devicecgrouprules": _empty("lets the container open host devices"),
        "devicerequests": _device_requests,
        "links": _empty("links another container"),
        "portbindings": _port_bindings,
        "publishallports": _off("publishes every exposed port on every interface"),
        "groupadd": _groups,
        # limits and plain settings
        **_plain(
            "memory memoryswap memoryreservation memoryswappiness nanocpus cpuquota "
            "cpuperiod cpushares cpusetcpus cpusetmems cpucount cpupercent blkioweight "
            "pidslimit ulimits shmsize init autoremove readonlyrootfs tmpfs storageopt "
            "logconfig restartpolicy dns dnsoptions dnssearch extrahosts"
        ),
    },
    {
        "memlimit": "memory",
        "memswaplimit": "memoryswap",
        "memreservation": "memoryreservation",
        "memswappiness": "memoryswappiness",
        "readonly": "readonlyrootfs",
        "cgroupns": "cgroupnsmode",
        "dnsopt": "dnsoptions",
    },
)
CREATE_KWARGS = Table(
    "container",
    {
        "user": _user,
        "runtime": _runtime,
        "hostconfig": _nested(HOST_CONFIG),
        **_plain(
            "image command entrypoint environment volumes name ports labels hostname domainname "
            "workingdir stopsignal stoptimeout healthcheck tty stdinopen detach macaddress "
            "networkdisabled platform useconfigproxy"
        ),
    },
    {"cmd": "command", "env": "environment", "exposedports": "ports", "openstdin": "stdinopen"},
)

# -- Swarm ---------------------------------------------------------------------------------


def _true(reason: str) -> Rule:
    def rule(value: Any, where: str, allowed: Allowed) -> list[str]:
        return [] if value else [f"{where}: {value!r} {reason}"]

    return rule


def _default_mode(what: str) -> Rule:
    def rule(value: Any, where: str, allowed: Allowed) -> list[str]:
        mode = value.get("Mode", value.get("mode")) if isinstance(value, Mapping) else value
        extra = [k for k in value if _norm(str(k)) != "mode"] if isinstance(value, Mapping) else []
        if str(mode or "default").lower() == "default" and not extra:
            return []
        return [f"{where}: {what} other than Docker's default is refused"]

    return rule


PRIVILEGES = Table(
    "container privilege",
    {
        "nonewprivileges": _true("lets setuid programs gain privileges"),
        "seccomp": _default_mode("a seccomp profile"),
        "apparmor": _default_mode("an AppArmor profile"),
    },
)
CONTAINER_SPEC = Table(
    "Swarm container",
    {
        "user": _user,
        "groups": _groups,
        "mounts": _mounts,
        "capabilityadd": _cap_add,
        "capabilitydrop": _cap_drop,
        "privileges": _nested(PRIVILEGES),
        **_plain(
            "image labels command args hostname env dir tty openstdin readonly stopsignal "
            "stopgraceperiod healthcheck hosts dnsconfig secrets configs init ulimits"
        ),
    },
    {"workdir": "dir", "capadd": "capabilityadd", "capdrop": "capabilitydrop"},
)
RESOURCES = Table(
    "Swarm resources",
    _plain("cpulimit memlimit cpureservation memreservation genericresources limits reservations"),
)
PLACEMENT = Table(
    "Swarm placement",
    _plain("constraints preferences platforms maxreplicas"),
)
ENDPOINT_SPEC = Table(
    "Swarm endpoint",
    {
        "mode": _any,
        "ports": _empty("publishes the server on every node's interfaces (routing mesh)"),
    },
)
TASK_TEMPLATE = Table(
    "Swarm task",
    {
        "containerspec": _nested(CONTAINER_SPEC),
        "resources": _nested(RESOURCES),
        "placement": _nested(PLACEMENT),
        **_plain("restartpolicy logdriver networks forceupdate"),
    },
)
SERVICE_SPEC = Table(
    "Swarm service",
    {
        "tasktemplate": _nested(TASK_TEMPLATE),
        "endpointspec": _nested(ENDPOINT_SPEC),
        "endpointconfig": _nested(ENDPOINT_SPEC),
        **_plain("name labels mode updateconfig rollbackconfig networks"),
    },
)


def unsafe_host_config(
    host_config: Mapping[str, Any], option: str, allowed: Allowed = DEFAULT
) -> list[str]:
    """docker-py ``create_host_config`` keywords or the API's HostConfig."""
    return check(host_config, HOST_CONFIG, option, allowed)


def unsafe_create_kwargs(
    create_kwargs: Mapping[str, Any], option: str, allowed: Allowed = DEFAULT
) -> list[str]:
    """docker-py ``create_container`` keywords (``extra_create_kwargs``, or the final ones)."""
    return check(create_kwargs, CREATE_KWARGS, option, allowed)


def unsafe_service_spec(
    spec: Mapping[str, Any], option: str, allowed: Allowed = DEFAULT
) -> list[str]:
    """docker-py ``create_service`` keywords (Swarm's ``extra_create_kwargs``, or the final)."""
    return check(spec, SERVICE_SPEC, option, allowed)


def refusal(problems: Sequence[str], allow_option: str) -> str:
    """The sentence a refused setting gets, at start-up and at spawn time alike."""
    return (
        "; ".join(problems)
        + f". Notebook users run arbitrary code: remove the setting, or set {allow_option} = "
        "True to accept it (see SECURITY.md)."
    )


def process_ceiling(pid_max: int | None, pids_limit: int) -> int:
    """The default RLIMIT_NPROC of notebook containers.

    RLIMIT_NPROC counts every process and thread of a uid on the whole host, and every
    notebook runs as the same uid, so it is not a per-container limit (``pids_limit`` is):
    it is a ceiling on all notebooks together. Half the host's ``kernel.pid_max`` (at most
    :data:`NPROC_CEILING_MAX`) keeps process ids free for the hub, Docker and sshd; it is never
    below ``pids_limit``, so one user alone always reaches their own limit first.
    """
    ceiling = NPROC_CEILING_MAX if not pid_max else min(pid_max // 2, NPROC_CEILING_MAX)
    return max(ceiling, pids_limit)


__all__ = [
    "CAPABILITY_ALLOWLIST",
    "CONTAINER_SPEC",
    "CREATE_KWARGS",
    "DEFAULT",
    "DEFAULT_DOCKER_ROOT",
    "ENDPOINT_SPEC",
    "ENGINE_SOCKETS",
    "HOST_CONFIG",
    "NPROC_CEILING_MAX",
    "PLACEMENT",
    "RAW_NAME_FIELDS",
    "RESOURCES",
    "SERVICE_SPEC",
    "SYSTEM_PATHS",
    "TASK_TEMPLATE",
    "Allowed",
    "Table",
    "capability_name",
    "check",
    "host_path_problem",
    "is_root_group",
    "is_root_user",
    "process_ceiling",
    "refusal",
    "unsafe_capabilities",
    "unsafe_create_kwargs",
    "unsafe_driver_config",
    "unsafe_host_config",
    "unsafe_mounts",
    "unsafe_service_spec",
    "unsafe_volumes",
]
