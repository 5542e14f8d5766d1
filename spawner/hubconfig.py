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
import sys
from types import SimpleNamespace
from typing import Any

from traitlets import TraitError
from traitlets.config import Config

from .inventory import InventoryError, discover_nvml, parse_static_inventory
from .profiles import ProfileError, default_profiles_for, load_profiles_file, parse_profiles
from .sizes import SizeError, parse_size

log = logging.getLogger("gpu-workspaces")


class ConfigError(SystemExit):
    """Ends the hub's start with a message for the admin (no traceback)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"\n[gpu-workspaces] configuration error:\n{message}\n")


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


def env_json_or_text(name: str) -> Any:
    """A value that is either JSON (lists, objects) or plain text like ``0,1,2,3``."""
    raw = os.environ.get(name, "").strip()
    if raw[:1] in ("[", "{"):
        try:
            return json.loads(raw)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{name}: invalid JSON ({e})") from None
    return raw


def profiles_from_env(name: str = "GPUWS_PROFILES_FILE", *, inventory: Any = "") -> list[dict]:
    """Profiles from the YAML/JSON file the variable names, else the shipped defaults.

    The defaults (CPU, 1 GPU, 2 GPUs) are trimmed to the GPUs the host has (``inventory``:
    the static inventory, or empty to ask NVML), so a one-GPU box starts without a 2-GPU
    profile; a profile file is taken as written and checked strictly.
    """
    path = env_str(name)
    if not path:
        total: int | None = None
        if inventory not in ("", []):
            try:
                total = len(parse_static_inventory(inventory, option="GPUWS_GPU_INVENTORY"))
            except InventoryError as e:
                raise ConfigError(str(e)) from None
        else:
            try:
                total = len(discover_nvml())
            except InventoryError:
                total = None  # the start-up check prints the preflight warning
        return default_profiles_for(total)
    try:
        raw = load_profiles_file(path)
    except ProfileError as e:
        raise ConfigError(f"{name}: {e}") from None
    if not isinstance(raw, list):
        raise ConfigError(f"{name}: {path} must hold a list of profiles")
    return raw


def ensure_network(name: str) -> str:
    """Create the Docker network if missing; return its gateway address.

    When the hub runs on the host, containers reach it at this gateway, and binding the hub's
    API there (not on 0.0.0.0) keeps it off the host's other interfaces.
    """
    import docker  # the config helpers stay importable without an engine for unit tests

    client = docker.from_env(version="auto")
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


def check_spawner_config(config: Config, spawner_class: type | None = None) -> None:
    """Validate the spawner's options and profiles at hub start-up, not at first spawn.

    Builds the spawner's configurable once (so every traitlet validator runs), resolves the
    GPU inventory, and checks the profiles against it. A host where the GPUs cannot be seen
    still starts (CPU profiles work) with a warning; GPU profiles are refused at spawn time.
    """
    if spawner_class is None:
        from .docker_spawner import GPUDockerSpawner

        spawner_class = GPUDockerSpawner
    # Spawners render names from their user; a stand-in is enough to run the validators.
    stand_in_user = SimpleNamespace(name="config-check", groups=[], url="/user/config-check/")
    try:
        probe = spawner_class(config=config, user=stand_in_user)
    except (TraitError, ValueError) as e:
        raise ConfigError(str(e)) from None
    option = f"{spawner_class.__name__}.profiles"
    total: int | None = None
    if probe.gpu_inventory not in ([], ""):
        try:
            total = len(parse_static_inventory(probe.gpu_inventory, option="gpu_inventory"))
        except InventoryError as e:
            raise ConfigError(str(e)) from None
    elif any(int(p.get("gpus", 0) or 0) for p in probe.profiles if isinstance(p, dict)):
        try:
            total = len(discover_nvml())
        except InventoryError as e:
            print(
                f"[gpu-workspaces] preflight: GPU profiles cannot be served: {e}\n"
                "  CPU profiles work; GPU profiles are refused with a message until the hub "
                "can see the GPUs (NVIDIA Container Toolkit + `gpus: all` on the hub service) "
                "or GPUWS_GPU_INVENTORY lists them.",
                file=sys.stderr,
            )
    if probe.profiles:
        try:
            parse_profiles(probe.profiles, total_gpus=total, option=option)
        except ProfileError as e:
            raise ConfigError(str(e)) from None
