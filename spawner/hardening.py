"""What a notebook container may not get: the checks behind the hardened defaults.

Notebook users run arbitrary code, and the hub holds the Docker socket. The spawner's own
settings are safe (see SECURITY.md); these functions look at what an admin adds on top
(``volumes``, ``mounts``, ``extra_host_config``, ``extra_create_kwargs``, ``cap_add``) and
return one sentence per setting that would hand a notebook the host: the Docker socket or a
host system folder, privileged mode, a host namespace, seccomp/AppArmor switched off,
a powerful capability, a port on every interface, root. Each sentence names the option.

The spawner refuses such settings at hub start-up (and again when it builds a container,
for settings that are callables) unless ``allow_host_access`` is set. Nothing here imports
Docker.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: Host folders a notebook may never see, not even read-only: the host's configuration,
#: devices and kernel interfaces, runtime sockets, the boot and root folders, and the
#: engine's own files (which hold every user's home volume).
SYSTEM_PATHS: tuple[str, ...] = (
    "/etc",
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/var/run",
    "/boot",
    "/root",
    "/var/lib/docker",
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

_HOST_NAMESPACE_KEYS = ("network_mode", "pid_mode", "ipc_mode", "userns_mode", "uts_mode")


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


def host_path_problem(path: str) -> str | None:
    """Why a notebook may not see host path ``path``, or None if it may."""
    clean = posixpath.normpath(path)
    if clean.startswith("//"):
        clean = "/" + clean.lstrip("/")
    name = posixpath.basename(clean)
    if name in ENGINE_SOCKETS or "docker.sock" in clean:
        return "is a container engine socket: whoever can reach it is root on the host"
    if clean == "/":
        return "is the host's root folder"
    for folder in SYSTEM_PATHS:
        if clean == folder or clean.startswith(folder + "/"):
            return f"is inside the host system folder {folder}"
    return None


def _is_host_path(source: str) -> bool:
    return source.startswith("/")


def unsafe_volumes(volumes: Mapping[str, Any], option: str) -> list[str]:
    """DockerSpawner ``volumes``/``read_only_volumes``: ``{host path or volume: target}``."""
    problems = []
    for source in volumes:
        problems += _source_problems(str(source), option)
    return problems


def _source_problems(source: str, option: str) -> list[str]:
    if not _is_host_path(source):
        return []  # a named volume
    problems = []
    if any(field in source for field in RAW_NAME_FIELDS):
        problems.append(
            f"{option}: host path {source!r} uses an unescaped name field "
            f"({' / '.join(RAW_NAME_FIELDS)}); use {{username}} / {{servername}}, which "
            "are escaped"
        )
    reason = host_path_problem(source)
    if reason:
        problems.append(f"{option}: host path {source!r} {reason}")
    return problems


def unsafe_mounts(mounts: Sequence[Mapping[str, Any]], option: str) -> list[str]:
    """DockerSpawner ``mounts`` or ``extra_host_config["mounts"]`` (Mount-like mappings)."""
    problems = []
    for mount in mounts:
        if not isinstance(mount, Mapping):
            continue
        kind = str(mount.get("type", mount.get("Type", "volume")) or "volume")
        source = str(mount.get("source", mount.get("Source", "")) or "")
        if kind == "bind" or _is_host_path(source):
            problems += _source_problems(source, option)
    return problems


def _binds_sources(binds: Any) -> list[str]:
    """Host sides of docker-py ``binds``: ``["/src:/dst:ro"]`` or ``{"/src": {...}}``."""
    if isinstance(binds, Mapping):
        return [str(k) for k in binds]
    if isinstance(binds, str | bytes):
        binds = [binds]
    if isinstance(binds, Iterable):
        return [str(b).split(":", 1)[0] for b in binds]
    return []


def _security_opt_problem(entry: str) -> str | None:
    key, _, value = entry.replace(":", "=", 1).partition("=")
    key, value = key.strip().lower(), value.strip().lower()
    if key == "seccomp" and value == "unconfined":
        return "switches off Docker's default seccomp profile"
    if key == "apparmor" and value == "unconfined":
        return "switches off AppArmor confinement"
    if key == "label" and value == "disable":
        return "switches off SELinux labelling"
    if key == "systempaths" and value == "unconfined":
        return "unmasks /proc and /sys paths Docker hides"
    if key == "no-new-privileges" and value == "false":
        return "lets setuid programs gain privileges"
    return None


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


def unsafe_host_config(host_config: Mapping[str, Any], option: str) -> list[str]:
    """docker-py ``create_host_config`` keyword arguments (``extra_host_config``)."""
    problems = []
    if host_config.get("privileged"):
        problems.append(f"{option}['privileged']: a privileged container is root on the host")
    for key in _HOST_NAMESPACE_KEYS:
        mode = str(host_config.get(key) or "")
        if mode == "host" or mode.startswith("container:"):
            problems.append(f"{option}[{key!r}]: {mode!r} shares a namespace outside the container")
    if str(host_config.get("cgroupns") or "") == "host":
        problems.append(f"{option}['cgroupns']: 'host' shares the host's cgroup namespace")
    for source in _binds_sources(host_config.get("binds") or []):
        problems += _source_problems(source, f"{option}['binds']")
    problems += unsafe_mounts(host_config.get("mounts") or [], f"{option}['mounts']")
    for device in host_config.get("devices") or []:
        problems.append(
            f"{option}['devices']: {str(device)!r} passes a host device in (GPUs come "
            "through device requests)"
        )
    if host_config.get("volumes_from"):
        problems.append(f"{option}['volumes_from']: mounts another container's volumes")
    for entry in host_config.get("security_opt") or []:
        reason = _security_opt_problem(str(entry))
        if reason:
            problems.append(f"{option}['security_opt']: {str(entry)!r} {reason}")
    problems += unsafe_capabilities(host_config.get("cap_add") or [], f"{option}['cap_add']")
    if "cap_drop" in host_config:
        dropped = {capability_name(str(c)) for c in host_config.get("cap_drop") or []}
        if "ALL" not in dropped:
            problems.append(f"{option}['cap_drop']: must include 'ALL'")
    for port, bindings in dict(host_config.get("port_bindings") or {}).items():
        if _published_on_all_interfaces(bindings):
            problems.append(
                f"{option}['port_bindings']: port {port} is published on every interface"
            )
    return problems


def unsafe_create_kwargs(create_kwargs: Mapping[str, Any], option: str) -> list[str]:
    """docker-py ``create_container`` keyword arguments (``extra_create_kwargs``)."""
    user = str(create_kwargs.get("user") or "")
    if user and user.split(":")[0] in ("0", "root"):
        return [f"{option}['user']: notebooks must not run as root"]
    return []


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
    "ENGINE_SOCKETS",
    "NPROC_CEILING_MAX",
    "RAW_NAME_FIELDS",
    "SYSTEM_PATHS",
    "capability_name",
    "host_path_problem",
    "process_ceiling",
    "unsafe_capabilities",
    "unsafe_create_kwargs",
    "unsafe_host_config",
    "unsafe_mounts",
    "unsafe_volumes",
]
