"""Helpers for ``jupyterhub_config.py``: environment variables in, checked values out.

The config file stays declarative; the reading, parsing and start-up checks live here so they
are tested once. Every error names the environment variable or option at fault and ends the
hub's start with a one-paragraph message instead of a traceback.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import posixpath
import re
import secrets
import sys
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from traitlets import TraitError
from traitlets.config import Config

from spawner.core.errors import ConfigError as ConfigError  # re-exported for configs
from spawner.core.hardening import host_path_problem
from spawner.core.inventory import InventoryError
from spawner.core.labels import LABEL_HUB_INSTANCE, LABEL_PREFIX_NAME
from spawner.core.profiles import (
    HostResources,
    Profile,
    ProfileError,
    asks_for_gpus,
    default_profiles_for,
    load_profiles_file,
    parse_profiles,
    unlimited_profile_warnings,
)
from spawner.core.sizes import SizeError, format_size, parse_size
from spawner.runtime.gpus import resolve_inventory, uses_nvml

log = logging.getLogger("gpu-workspaces")


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, "").strip() or default


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r}: use 1/0, true/false, yes/no or on/off")


def env_list(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def env_number(name: str, default: float | None, *, minimum: float = 0) -> float | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: not a number") from None
    if not value >= minimum or value == float("inf"):
        raise ConfigError(f"{name}={raw!r}: must be a finite number >= {minimum:g}")
    return value


def env_size(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return parse_size(raw, option=name)
    except SizeError as e:
        raise ConfigError(str(e)) from None


def unset_empty_env(*prefixes: str) -> None:
    """Remove empty environment variables whose names start with one of ``prefixes``.

    docker-compose.yaml passes every setting, set or not, as ``NAME: ${NAME:-}``, so an unset
    one arrives as an empty string; libraries that read the environment themselves (e.g.
    oauthenticator's ``OAUTH2_USERNAME_KEY``) would take the empty string literally.
    """
    for name in [n for n, v in os.environ.items() if not v and n.startswith(prefixes)]:
        del os.environ[name]


def env_json_or_text(name: str) -> Any:
    """A value that is either JSON (lists, objects) or plain text like ``0,1,2,3``."""
    raw = os.environ.get(name, "").strip()
    if raw[:1] in ("[", "{"):
        try:
            return json.loads(raw)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{name}: invalid JSON ({e})") from None
    return raw


def profiles_from_env(
    name: str = "GPUWS_PROFILES_FILE",
    *,
    inventory: Any = "",
    host: HostResources | None = None,
) -> list[dict[str, Any]]:
    """Profiles from the YAML/JSON file the variable names, else the shipped defaults.

    The defaults (CPU, 1 GPU, 2 GPUs) are trimmed to the GPUs the host has (``inventory``:
    the static inventory, or empty to ask NVML), so a one-GPU box starts without a 2-GPU
    profile, and carry memory and CPU limits derived from the Docker host (``host``, else
    :func:`docker_host_resources`; no memory limit of their own when ``GPUWS_MEM_LIMIT`` sets
    one for every server). A profile file is taken as written and checked strictly.
    """
    path = env_str(name)
    if not path:
        total: int | None = None
        try:
            total = len(resolve_inventory(inventory, option="GPUWS_GPU_INVENTORY"))
        except InventoryError as e:
            if not uses_nvml(inventory):
                raise ConfigError(str(e)) from None
            total = None  # NVML cannot see GPUs: the start-up check prints the preflight warning
        host = host or docker_host_resources()
        profiles = default_profiles_for(total, host, memory=env_size("GPUWS_MEM_LIMIT") is None)
        if host is not None:
            summary = "; ".join(
                f"{p['slug']}: " + Profile(p["slug"], p["slug"], **_limits_of(p)).limits_summary()
                for p in profiles
            )
            print(
                f"[gpu-workspaces] the shipped profiles' limits, from {host.source} "
                f"({host.cpus:g} CPUs, {format_size(host.memory)}): {summary}",
                file=sys.stderr,
            )
        return profiles
    try:
        raw = load_profiles_file(path)
    except ProfileError as e:
        raise ConfigError(f"{name}: {e}") from None
    if not isinstance(raw, list):
        raise ConfigError(f"{name}: {path} must hold a list of profiles")
    return raw


def _limits_of(profile: dict[str, Any]) -> dict[str, Any]:
    return {key: profile[key] for key in ("mem_limit", "cpu_limit") if key in profile}


def docker_host_resources(timeout: float = 5) -> HostResources | None:
    """The Docker host's cores and memory (``docker info``: ``NCPU``, ``MemTotal``).

    The engine is asked because it may be remote, and the hub may run in a container whose
    own view is not the host's. When it does not answer (it is down, or not up yet), the
    figures of this machine are used instead; None only when neither can be read. Never
    raises: a hub must start without Docker (it keeps its servers, see ensure_network).
    """
    try:
        import docker  # the config helpers stay importable without an engine for unit tests

        client = docker.from_env(version="auto", timeout=timeout)
        try:
            info = client.info()
        finally:
            client.close()
        cpus, memory = float(info.get("NCPU") or 0), int(info.get("MemTotal") or 0)
        if cpus > 0 and memory > 0:
            return HostResources(cpus, memory, "the Docker engine")
    except Exception as e:  # any failure here only means: ask this machine instead
        log.debug("docker info failed: %s", e)
    try:
        cpus = float(os.cpu_count() or 0)
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    if cpus > 0 and memory > 0:
        return HostResources(cpus, memory, "this machine (the Docker engine did not answer)")
    return None


def _clean_absolute(path: str, *, name: str, entry: str, side: str) -> str:
    """``path`` if it is an absolute, already normal POSIX path, else a ConfigError."""
    if not path.startswith("/"):
        raise ConfigError(f"{name}: {entry!r}: the {side} path {path!r} must be absolute")
    if any(c in path for c in "{}\\") or not path.isprintable() or path != path.strip():
        raise ConfigError(
            f"{name}: {entry!r}: the {side} path {path!r} has a character that is not allowed "
            "(braces, backslashes, blanks at the ends, control characters)"
        )
    if posixpath.normpath(path) != path or path.startswith("//"):
        raise ConfigError(
            f"{name}: {entry!r}: write the {side} path without '.', '..', '//' or a trailing "
            f"'/' (did you mean {posixpath.normpath(path)!r}?)"
        )
    return path


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def shared_data_from_env(
    name: str = "GPUWS_SHARED_DATA", *, home: str = "/home/jovyan"
) -> dict[str, str]:
    """Read-only data mounts for every notebook container: ``{host path: container path}``.

    The variable holds comma-separated ``HOST:CONTAINER`` pairs, e.g.
    ``/srv/datasets:/home/jovyan/datasets,/srv/models:/data/models``; an optional ``:ro``
    suffix is accepted, any other mode is refused (the mounts are always read-only). Both
    paths must be absolute and normal (no ``..``), with no characters DockerSpawner would take
    for a template; a mount may not cover ``/`` or the home folder, nor expose the host's
    devices, kernel interfaces or the Docker socket.
    """
    mounts: dict[str, str] = {}
    for entry in env_list(name):
        parts = entry.split(":")
        if len(parts) == 3 and parts[2] == "ro":
            parts = parts[:2]
        if len(parts) != 2:
            raise ConfigError(
                f"{name}: {entry!r}: write HOST:CONTAINER (two absolute paths, one ':'); "
                "shared data is always mounted read-only, so no mode other than ':ro'"
            )
        host = _clean_absolute(parts[0], name=name, entry=entry, side="host")
        target = _clean_absolute(parts[1], name=name, entry=entry, side="container")
        # Even read-only: a read-only bind of the Docker socket still drives the engine.
        if problem := host_path_problem(host):
            raise ConfigError(
                f"{name}: {entry!r}: {host!r} is not a data folder: it {problem}; the host's "
                "root, devices, kernel interfaces, /etc, /run and Docker's files may not be shared"
            )
        if target == "/" or _inside(home, target):
            raise ConfigError(
                f"{name}: {entry!r}: mounting on {target!r} would hide the home folder "
                f"{home!r}; use a folder inside it (e.g. {home}/datasets) or elsewhere"
            )
        if target in mounts.values():
            raise ConfigError(f"{name}: {entry!r}: {target!r} is the target of two mounts")
        if host in mounts:
            raise ConfigError(f"{name}: {entry!r}: {host!r} is listed twice")
        mounts[host] = target
    return mounts


def home_volume_from_env(
    name: str = "GPUWS_HOME_VOLUME", default: str = "gpuws-home-{username}"
) -> str:
    """The name template of each user's home volume, checked to be one volume per user.

    It must contain ``{username}`` (DockerSpawner fills in the escaped name: lower-case
    letters, digits and ``-`` escapes, whatever the login name was) and otherwise be a plain
    Docker volume name: no ``/`` (which would make it a bind mount of a host folder) and no
    ``{raw_username}``.
    """
    template = env_str(name, default)
    probe = template.replace("{username}", "u").replace("{prefix}", "p")
    if "{username}" not in template or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", probe):
        raise ConfigError(
            f"{name}={template!r}: use a Docker volume name containing {{username}} "
            "(letters, digits, '_', '.', '-'; e.g. gpuws-home-{username}), so that each user "
            "gets their own named volume"
        )
    return template


def secret_file(path: str, *, nbytes: int = 32) -> str:
    """The secret stored in ``path``; a new random one (mode 0600) when the file is missing.

    For secrets that must outlive a hub restart but that nobody should have to set, such as
    the proxy's API token: it lives with the cookie secret in the hub's state volume.
    """
    try:
        with open(path) as f:
            value = f.read().strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    value = secrets.token_hex(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


def ensure_network(name: str, *, state_dir: str | None = None) -> str:
    """Create the Docker network if missing; return its gateway address.

    When the hub runs on the host, containers reach it at this gateway, and binding the hub's
    API there (not on 0.0.0.0) keeps it off the host's other interfaces.

    The address is remembered in ``state_dir`` (default: ``GPUWS_STATE_DIR``, else the
    working directory). When the engine does not answer at start-up (the hub came up before
    dockerd, or dockerd is restarting) the remembered address is used, so the hub starts,
    serves its pages and keeps every running server; the spawner re-checks them once Docker
    answers. Without a remembered address the hub refuses to start and says why.
    """
    cache = os.path.join(state_dir or env_str("GPUWS_STATE_DIR", os.getcwd()), "networks.json")
    try:
        gateway = _network_gateway(name)
    except ConfigError as e:
        try:
            with open(cache) as f:
                remembered = json.load(f).get(name)
        except (OSError, ValueError, AttributeError):
            remembered = None
        if not remembered or "unreachable" not in str(e):
            raise
        print(
            f"[gpu-workspaces] Docker engine not answering; using the last known gateway "
            f"{remembered} of network {name!r}. Running servers are kept and checked again "
            "once Docker answers.",
            file=sys.stderr,
        )
        return str(ipaddress.ip_address(remembered))
    try:
        with open(cache) as f:
            known = json.load(f)
        known = known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        known = {}
    if known.get(name) != gateway:
        known[name] = gateway
        try:
            with open(cache, "w") as f:
                json.dump(known, f)
        except OSError as e:
            log.warning("Cannot remember the gateway of network %s in %s: %s", name, cache, e)
    return gateway


def _network_gateway(name: str) -> str:
    import docker  # the config helpers stay importable without an engine for unit tests

    try:
        client = docker.from_env(version="auto")
    except docker.errors.DockerException as e:
        raise ConfigError(
            f"Docker engine unreachable while preparing network {name!r}: {e}\n"
            "Start Docker (or run `make up`, which installs it) and try again."
        ) from None
    try:
        try:
            network = client.networks.get(name)
        except docker.errors.NotFound:
            network = client.networks.create(
                name, driver="bridge", labels={"io.gpu-workspaces.network": "1"}
            )
            network.reload()
        configs = network.attrs.get("IPAM", {}).get("Config") or []
        for entry in configs:
            gateway = entry.get("Gateway")
            if gateway:
                return str(ipaddress.ip_address(gateway))
            subnet = entry.get("Subnet")
            if subnet:
                return str(next(ipaddress.ip_network(subnet).hosts()))
    except docker.errors.DockerException as e:
        raise ConfigError(
            f"Docker engine unreachable while preparing network {name!r}: {e}\n"
            "Start Docker (or run `make up`, which installs it) and try again."
        ) from None
    finally:
        client.close()
    raise ConfigError(f"Docker network {name!r} has no gateway address")


def other_hub_instances(labels: list[dict[str, str]], instance: str) -> list[str]:
    """Hub instances other than ``instance`` among the labels of containers of one prefix
    (containers from before instances were recorded carry none and count as ours)."""
    found = {str(lab.get(LABEL_HUB_INSTANCE) or "") for lab in labels}
    return sorted(found - {instance, ""})


def refuse_a_second_hub(probe: Any) -> None:
    """Stop a hub whose container prefix another live hub on the same engine uses."""
    instance = str(getattr(probe, "hub_instance", "") or "")
    if not instance:
        return
    try:
        live = probe.client.containers(
            filters={
                "label": f"{LABEL_PREFIX_NAME}={probe.prefix}",
                "status": ["created", "running", "paused", "restarting"],
            }
        )
    except Exception:
        return  # Docker not answering yet: nothing to compare (the hub keeps its servers)
    others = other_hub_instances([c.get("Labels") or {} for c in live], instance)
    if others:
        raise ConfigError(
            f"another hub (instance {others[0]}) runs servers with the container prefix "
            f"{probe.prefix!r} on this Docker engine; this hub would take them over or remove "
            "them, so it does not start. Give it its own GPUWS_CONTAINER_PREFIX and "
            "GPUWS_HOME_VOLUME (a compose stack: its own COMPOSE_PROJECT_NAME), or stop the "
            "other hub. If the other hub is this one with its state folder lost, remove "
            "those containers first."
        )


_WARNED: set[str] = set()


def warn_unlimited_profiles(profiles: Sequence[Profile], probe: Any) -> None:
    """Print one start-up warning per profile whose servers would run without a memory or CPU
    limit (the spawner's own ``mem_limit`` / ``cpu_limit`` count for profiles without one);
    once per process, however often the settings are checked."""
    lines = unlimited_profile_warnings(
        profiles, mem_limit=getattr(probe, "mem_limit", None), cpu_limit=probe.cpu_limit
    )
    for line in lines:
        if line not in _WARNED:
            _WARNED.add(line)
            print(f"[gpu-workspaces] warning: {line}", file=sys.stderr)


#: How a config names the Swarm spawner (entry point, class path, the old class path).
SWARM_CLASS_NAMES = (
    "gpu-swarm",
    "spawner.backends.swarm.GPUSwarmSpawner",
    "spawner.swarm_spawner.GPUSwarmSpawner",
)


def stand_in_user(name: str) -> SimpleNamespace:
    """A user for a spawner built outside any request (config checks, start-up): spawners
    render names from their user, and this one is enough to run the validators."""
    return SimpleNamespace(name=name, groups=[], url=f"/user/{name}/")


def configured_spawner_class(config: Config) -> type:
    """The GPU spawner class the config chose (``gpu-swarm`` after ``use_swarm``)."""
    chosen = str(config.JupyterHub.get("spawner_class", "") or "")
    if chosen in (
        "gpu-swarm",
        "spawner.backends.swarm.GPUSwarmSpawner",
        "spawner.swarm_spawner.GPUSwarmSpawner",
    ):
        from spawner.backends.swarm import GPUSwarmSpawner

        return GPUSwarmSpawner
    from spawner.backends.docker import GPUDockerSpawner

    return GPUDockerSpawner


def check_spawner_config(config: Config, spawner_class: type | None = None) -> None:
    """Validate the spawner's options and profiles at hub start-up, not at first spawn.

    Builds the spawner's configurable once (so every traitlet validator runs), resolves the
    GPU inventory, and checks the profiles against it. A host where the GPUs cannot be seen
    still starts (CPU profiles work) with a warning; GPU profiles are refused at spawn time.
    """
    if spawner_class is None:
        spawner_class = configured_spawner_class(config)
    try:
        probe = spawner_class(config=config, user=stand_in_user("config-check"))
        # again with the engine's own data root (docker info), which the spawner built for
        # each user only knows once it has been read
        probe.check_refused_settings(read_engine=True)
    except (TraitError, ValueError) as e:
        raise ConfigError(str(e)) from None
    refuse_a_second_hub(probe)
    option = f"{spawner_class.__name__}.profiles"
    total: int | None = None
    # A swarm has no inventory (Swarm counts the GPUs): its profiles are checked without one.
    inventory = getattr(probe, "gpu_inventory", None)
    if inventory is not None and (not uses_nvml(inventory) or asks_for_gpus(probe.profiles)):
        try:
            total = len(resolve_inventory(inventory, option="gpu_inventory"))
        except InventoryError as e:
            if not uses_nvml(inventory):
                raise ConfigError(str(e)) from None
            print(
                f"[gpu-workspaces] preflight: GPU profiles cannot be served: {e}\n"
                "  CPU profiles work; GPU profiles are refused with a message until the hub "
                "can see the GPUs (NVIDIA Container Toolkit on the host + the GPU block of the "
                "hub service in docker-compose.yaml, docs/deploy.md: GPU host wiring) or "
                "GPUWS_GPU_INVENTORY lists them.",
                file=sys.stderr,
            )
    if probe.profiles:
        try:
            parsed = parse_profiles(probe.profiles, total_gpus=total, option=option)
        except ProfileError as e:
            raise ConfigError(str(e)) from None
        warn_unlimited_profiles(parsed, probe)


#: Settings of a single-host configuration that :func:`use_swarm` does not carry over.
NOT_CARRIED_OVER = frozenset({"network_name", "pull_policy", "use_internal_ip", "host_ip"})


def use_swarm(config: Config, *, network: str) -> None:
    """Switch a hub configured for the single-host spawner to ``GPUSwarmSpawner``.

    Every ``GPUDockerSpawner`` setting that the Swarm spawner has too (profiles, images,
    quotas, limits, volumes, timeouts, prefix …) is carried over unless ``GPUSwarmSpawner``
    sets it already; ``network`` is the attachable overlay network of the servers. The result
    is checked at once, like the single-host settings, so a mistake stops the hub's start
    with a message that names the option.
    """
    from spawner.backends.swarm import GPUSwarmSpawner

    config.JupyterHub.spawner_class = "gpu-swarm"
    names = set(GPUSwarmSpawner.class_trait_names(config=True))
    single_host = config.GPUDockerSpawner
    swarm = config.GPUSwarmSpawner
    for name, value in single_host.items():
        if name in names and name not in NOT_CARRIED_OVER and name not in swarm:
            swarm[name] = value
    swarm.network_name = network
    try:
        GPUSwarmSpawner(config=config, user=stand_in_user("config-check"))
    except (TraitError, ValueError) as e:
        raise ConfigError(str(e)) from None
