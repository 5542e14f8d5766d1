"""``python -m spawner doctor``: preflight checks of a GPU workspaces hub, before users find out.

It reads the same configuration as the hub (``-f jupyterhub_config.py``, which reads the
``GPUWS_*`` environment variables) and checks, against the same Docker engine:

- the configuration loads and the spawner accepts its options;
- Docker answers, with an API new enough for GPU device requests;
- Docker's NVIDIA device driver is there (a probe container asking for one GPU is started);
- the GPU inventory the hub would use (NVML on this host, or the static list);
- every configured image exists, and its ``io.jupyterhub.version`` label matches this hub;
- the Docker network of the notebook containers;
- the profiles, against the inventory;
- the idle reclaim settings.

It prints one row per check (OK / WARN / FAIL, with the fix under each FAIL or WARN) and exits
1 when any check failed, else 0.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from traitlets import TraitError
from traitlets.config import Config
from traitlets.config.loader import PyFileConfigLoader

OK, WARN, FAIL, SKIP = "OK", "WARN", "FAIL", "SKIP"
#: Docker Engine API that introduced DeviceRequests (Docker 19.03).
MIN_API_VERSION = (1, 40)
VERSION_LABEL = "io.jupyterhub.version"
PROBE_LABEL = "io.gpu-workspaces.doctor"
DEFAULT_CONFIG_PLACES = ("jupyterhub_config.py", "/srv/jupyterhub/jupyterhub_config.py")

NVIDIA_FIX = (
    "Install the NVIDIA Container Toolkit on the Docker host (package nvidia-container-toolkit; "
    "`nvidia-ctk runtime configure --runtime=docker`), then restart Docker: dockerd registers "
    "its NVIDIA device driver only when nvidia-container-runtime-hook is on its PATH. "
    "Without GPUs, offer CPU profiles only."
)


@dataclass(frozen=True)
class Row:
    """One line of the report."""

    check: str
    status: str
    detail: str
    fix: str = ""


# -- pure helpers ------------------------------------------------------------------------------


def parse_version(text: str) -> tuple[int, ...]:
    """``"6.1.1"`` → ``(6, 1, 1)``; stops at the first part that is not a number."""
    parts: list[int] = []
    for piece in text.strip().lstrip("v").split("."):
        match = re.match(r"\d+", piece)
        if match is None:
            break
        parts.append(int(match.group()))
        if match.end() != len(piece):
            break
    return tuple(parts)


def compare_jupyterhub(image_version: str | None, hub_version: str) -> tuple[str, str]:
    """Status and words for an image's jupyterhub (from its label) against the hub's."""
    if not image_version:
        return WARN, f"no {VERSION_LABEL} label, so its jupyterhub version is unknown"
    image, hub = parse_version(image_version), parse_version(hub_version)
    if image == hub:
        return OK, f"jupyterhub {image_version}, as the hub"
    if image[:2] == hub[:2]:
        return WARN, f"jupyterhub {image_version}, the hub runs {hub_version} (same minor)"
    return FAIL, f"jupyterhub {image_version}, but the hub runs {hub_version}"


def classify_probe_error(message: str) -> Row:
    """What a failed GPU probe container says about Docker's NVIDIA driver."""
    if "could not select device driver" in message:
        return Row(
            "nvidia driver",
            FAIL,
            f"Docker has no NVIDIA device driver ({message.strip()})",
            NVIDIA_FIX,
        )
    return Row(
        "nvidia driver",
        FAIL,
        f"a container asking for a GPU did not start: {message.strip()}",
        "Check `nvidia-smi` on the host and `docker run --rm --gpus 1 <image> nvidia-smi`; "
        "the message above comes from the NVIDIA container runtime.",
    )


def api_version_row(version: dict[str, Any], base_url: str) -> Row:
    api = str(version.get("ApiVersion", "?"))
    detail = f"Docker {version.get('Version', '?')}, API {api}, at {base_url}"
    if parse_version(api)[:2] < MIN_API_VERSION:
        return Row(
            "docker",
            FAIL,
            detail + f" (GPU device requests need API {'.'.join(map(str, MIN_API_VERSION))})",
            "Upgrade Docker to 19.03 or newer (`make up` installs a current one).",
        )
    return Row("docker", OK, detail)


def render(rows: Sequence[Row], width: int = 100) -> str:
    """The report as a table: check, status, detail, and the fix under FAIL/WARN rows."""
    check_w = max([len("CHECK"), *(len(r.check) for r in rows)])
    indent = check_w + 2 + 8
    lines = [f"{'CHECK':<{check_w}}  {'STATUS':<8}DETAIL"]
    wrap_w = max(width - indent, 30)
    for row in rows:
        detail = textwrap.wrap(row.detail, wrap_w) or [""]
        lines.append(f"{row.check:<{check_w}}  {row.status:<8}{detail[0]}")
        lines.extend(" " * indent + more for more in detail[1:])
        if row.fix and row.status in (FAIL, WARN):
            fix = textwrap.wrap("fix: " + row.fix, wrap_w)
            lines.extend(" " * indent + part for part in fix)
    failed = sum(r.status == FAIL for r in rows)
    warned = sum(r.status == WARN for r in rows)
    if failed:
        lines.append(f"\n{failed} problem{'s' if failed != 1 else ''}: fix the FAIL rows above.")
    else:
        lines.append(
            "\nNo problems" + (f" ({warned} warning{'s' * (warned != 1)})." if warned else ".")
        )
    return "\n".join(lines)


# -- loading the hub's configuration -----------------------------------------------------------


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def find_config(path: str | None) -> str | None:
    if path:
        return path
    return next((p for p in DEFAULT_CONFIG_PLACES if os.path.isfile(p)), None)


def load_config(path: str) -> Config:
    """The hub's config file, loaded as JupyterHub loads it (traitlets' PyFileConfigLoader).

    The start-up check is skipped (GPUWS_SKIP_CHECKS): the doctor makes the same checks, one
    row each, instead of stopping at the first.
    """
    full = os.path.abspath(path)
    loader = PyFileConfigLoader(os.path.basename(full), path=os.path.dirname(full))
    with _env(GPUWS_SKIP_CHECKS="1"):
        config: Config = loader.load_config()
    return config


def _short(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return " ".join(text.replace("[gpu-workspaces] configuration error:", "").split())


# -- the checks against the engine -------------------------------------------------------------


class Doctor:
    """Runs the checks in order; later ones are skipped when what they need failed."""

    def __init__(self, config_path: str | None, *, hub_version: str | None = None) -> None:
        self.config_path = find_config(config_path)
        if hub_version is None:
            import jupyterhub

            hub_version = jupyterhub.__version__
        self.hub_version = hub_version
        self.rows: list[Row] = []
        self.config: Config | None = None
        self.spawner: Any = None
        self.client: Any = None
        self.inventory: Any = None

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def run(self) -> list[Row]:
        self.check_config()
        docker_ok = self.check_docker()
        self.check_inventory()
        if docker_ok and self.spawner is not None:
            self.check_images()
            self.check_nvidia_driver()
            self.check_network()
        elif self.spawner is not None:
            for name in ("images", "nvidia driver", "network"):
                self.add(Row(name, SKIP, "needs the Docker engine"))
        self.check_profiles()
        self.check_idle_reclaim()
        return self.rows

    # -- configuration

    def check_config(self) -> None:
        if self.config_path is None:
            self.add(
                Row(
                    "config",
                    FAIL,
                    "no jupyterhub_config.py in this folder or /srv/jupyterhub",
                    "Run the doctor where the hub runs, or name the file: "
                    "python -m spawner doctor -f /path/to/jupyterhub_config.py",
                )
            )
            return
        if not os.path.isfile(self.config_path):
            self.add(
                Row(
                    "config",
                    FAIL,
                    f"{self.config_path}: no such file",
                    "Name the hub's config file: python -m spawner doctor -f PATH",
                )
            )
            return
        try:
            self.config = load_config(self.config_path)
        except (Exception, SystemExit) as e:  # ConfigError is a SystemExit with the message
            self.add(
                Row(
                    "config",
                    FAIL,
                    f"{self.config_path}: {_short(e)}",
                    "Correct the setting named above (environment variable or config line).",
                )
            )
            return
        from spawner.hub.config import configured_spawner_class, stand_in_user

        try:
            spawner_class = configured_spawner_class(self.config)
            self.spawner = spawner_class(config=self.config, user=stand_in_user("doctor"))
        except (TraitError, ValueError) as e:
            self.add(
                Row("config", FAIL, f"spawner options: {_short(e)}", "Correct the option named.")
            )
            return
        self.add(Row("config", OK, f"{self.config_path} loaded"))

    # -- docker

    def _make_client(self) -> Any:
        if self.spawner is not None:
            return self.spawner.client
        import docker

        return docker.APIClient(version="auto", **docker.utils.kwargs_from_env())

    def check_docker(self) -> bool:
        try:
            self.client = self._make_client()
            version = self.client.version()
        except Exception as e:
            self.add(
                Row(
                    "docker",
                    FAIL,
                    f"the Docker engine does not answer: {_short(e)}",
                    "Start Docker (`systemctl start docker`, or `make up`, which installs it); "
                    "check DOCKER_HOST and that this user may use the socket (root or the "
                    "docker group).",
                )
            )
            return False
        where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        if self.spawner is not None and self.spawner.client_kwargs.get("base_url"):
            where = str(self.spawner.client_kwargs["base_url"])
        row = self.add(api_version_row(version, where))
        return row.status == OK

    # -- GPUs

    def _wants_gpus(self) -> bool:
        spawner = self.spawner
        if spawner is None:
            return False
        from spawner.core.profiles import asks_for_gpus

        return bool(
            asks_for_gpus(spawner.profiles)
            or spawner.gpu_count
            or spawner.gpu_device_ids
            or spawner.all_gpus
        )

    def check_inventory(self) -> None:
        if self.spawner is None:
            self.add(Row("gpu inventory", SKIP, "needs the configuration"))
            return
        from spawner.core.inventory import InventoryError
        from spawner.runtime.gpus import resolve_inventory, uses_nvml

        if not hasattr(self.spawner, "gpu_inventory"):
            self.check_swarm_gpus()
            return
        value = self.spawner.gpu_inventory
        static = not uses_nvml(value)
        try:
            self.inventory = resolve_inventory(value, option="gpu_inventory")
        except InventoryError as e:
            status = FAIL if self._wants_gpus() else WARN
            self.add(
                Row(
                    "gpu inventory",
                    status,
                    f"NVML on this host: {_short(e)}" if not static else _short(e),
                    "Give the hub the GPUs: NVIDIA driver + Container Toolkit on the host "
                    "(in compose, the `gpus: all` block of the hub service), or list them in "
                    "GPUWS_GPU_INVENTORY (e.g. 4 or 0,1,2,3). CPU profiles work meanwhile.",
                )
            )
            return
        source = "static list" if static else "NVML"
        gpus = list(self.inventory)
        names = "; ".join(f"{g.id}: {g.describe()}" for g in gpus[:8])
        more = f"; … {len(gpus) - 8} more" if len(gpus) > 8 else ""
        detail = f"{len(gpus)} GPU{'s' * (len(gpus) != 1)} ({source})" + (
            f": {names}{more}" if gpus else ""
        )
        if not gpus and self._wants_gpus():
            self.add(
                Row(
                    "gpu inventory",
                    FAIL,
                    detail + ", but GPU profiles are configured",
                    "Check `nvidia-smi` on the host, or remove the GPU profiles.",
                )
            )
            return
        self.add(Row("gpu inventory", OK, detail))

    def check_swarm_gpus(self) -> None:
        """On a swarm: the GPUs the nodes advertise, as the hub's spawn form counts them."""
        import asyncio

        try:
            gpus = asyncio.run(self.spawner.swarm_gpus())
        except Exception as e:
            self.add(
                Row(
                    "gpu inventory",
                    FAIL if self._wants_gpus() else WARN,
                    f"the Swarm manager does not list its nodes' GPUs: {_short(e)}",
                    "Run the doctor on a manager node; docs/swarm.md: GPUs as generic resources.",
                )
            )
            return
        kind = self.spawner.gpu_resource_kind
        if gpus.total == 0 and self._wants_gpus():
            self.add(
                Row(
                    "gpu inventory",
                    FAIL,
                    gpus.summary(kind) + ", but GPU profiles are configured",
                    "Advertise the GPUs in each node's node-generic-resources (docs/swarm.md).",
                )
            )
            return
        self.add(Row("gpu inventory", OK, f"swarm: {gpus.summary(kind)}"))

    def _images(self) -> dict[str, list[str]]:
        """Each image the hub may start, with the profiles (and choices) that use it."""
        from spawner.core.profiles import ProfileError, parse_profiles

        spawner = self.spawner
        images: dict[str, list[str]] = {}
        profiles = [p for p in spawner.profiles if isinstance(p, dict)]
        for profile in profiles:
            try:
                gpus = int(profile.get("gpus", 0) or 0)
            except (TypeError, ValueError):
                gpus = 0  # the profiles row reports it
            image = profile.get("image") or (spawner.gpu_image if gpus else "") or spawner.image
            images.setdefault(str(image), []).append(str(profile.get("slug", "?")))
        with contextlib.suppress(ProfileError):  # the profiles row reports it
            for parsed in parse_profiles(profiles, total_gpus=None) if profiles else ():
                for option in parsed.options:
                    for choice in option.choices if option.name == "image" else ():
                        users = images.setdefault(str(choice.value), [])
                        users.append(f"{parsed.slug}:{choice.key}")
        if not profiles:
            images.setdefault(str(spawner.image), []).append("(no profiles)")
            allowed = spawner.allowed_images
            if isinstance(allowed, dict):  # a callable is known only per user
                for key, value in allowed.items():
                    images.setdefault(str(value), []).append(f"allowed_images[{key!r}]")
        return images

    def check_images(self) -> None:
        import docker

        for image, users in self._images().items():
            name = "image"
            try:
                info = self.client.inspect_image(image)
            except docker.errors.ImageNotFound:
                self.add(
                    Row(
                        name,
                        FAIL,
                        f"{image} is not on the engine (profiles {', '.join(users)})",
                        "Build it with `make images` (scripts/build-images.sh), or `docker pull "
                        f"{image}` if it comes from a registry; or change the image setting "
                        "(GPUWS_NOTEBOOK_IMAGE / GPUWS_GPU_IMAGE / the profile's image).",
                    )
                )
                continue
            except docker.errors.APIError as e:
                self.add(Row(name, FAIL, f"{image}: {_short(e)}"))
                continue
            labels = (info.get("Config") or {}).get("Labels") or {}
            status, words = compare_jupyterhub(labels.get(VERSION_LABEL), self.hub_version)
            fix = ""
            if status != OK:
                fix = (
                    f"Rebuild the image with jupyterhub=={self.hub_version} and LABEL "
                    f"{VERSION_LABEL}={self.hub_version} (`make images` does both)."
                )
            self.add(Row(name, status, f"{image}: {words} (profiles {', '.join(users)})", fix))
            self.add(run_selftest(self.client, image))

    def _probe_image(self) -> str | None:
        for image in self._images():
            with contextlib.suppress(Exception):
                self.client.inspect_image(image)
                return image
        return None

    def check_nvidia_driver(self) -> None:
        if not self._wants_gpus():
            self.add(Row("nvidia driver", SKIP, "no GPU profiles configured"))
            return
        if not hasattr(self.spawner, "gpu_mechanism"):
            self.add(Row("nvidia driver", SKIP, "swarm: each node's NVIDIA runtime hands out GPUs"))
            return
        image = self._probe_image()
        if image is None:
            self.add(
                Row(
                    "nvidia driver",
                    WARN,
                    "not probed: none of the configured images is on the engine",
                    "Build the images first (see the image rows), then run the doctor again.",
                )
            )
            return
        device = next((g.id for g in self.inventory or ()), "0")
        driver = self.add(probe_nvidia_driver(self.client, image, device))
        try:
            info = self.client.info()
        except Exception as e:
            self.add(Row("gpu mechanism", WARN, f"docker info failed: {_short(e)}"))
            return
        supported = supported_mechanisms(info, driver.status == OK)
        self.add(mechanism_row(str(self.spawner.gpu_mechanism), supported))

    def check_network(self) -> None:
        import docker

        name = self.spawner.network_name
        if not name or name in ("bridge", "host", "none"):
            self.add(Row("network", WARN, f"notebooks use Docker's {name or 'bridge'} network"))
            return
        try:
            info = self.client.inspect_network(name)
        except docker.errors.NotFound:
            self.add(
                Row(
                    "network",
                    FAIL,
                    f"Docker network {name!r} does not exist",
                    "`make up` (docker compose) creates it; a hub started with "
                    "`jupyterhub -f jupyterhub_config.py` creates it at start-up; or "
                    f"`docker network create {name}`.",
                )
            )
            return
        except docker.errors.APIError as e:
            self.add(Row("network", FAIL, f"{name}: {_short(e)}"))
            return
        ipam = [c for c in (info.get("IPAM") or {}).get("Config") or [] if c.get("Subnet")]
        subnet = ", ".join(c["Subnet"] for c in ipam) or "no subnet"
        self.add(Row("network", OK, f"{name}: driver {info.get('Driver')}, {subnet}"))

    # -- settings

    def check_profiles(self) -> None:
        if self.spawner is None:
            self.add(Row("profiles", SKIP, "needs the configuration"))
            return
        from spawner.core.profiles import ProfileError, parse_profiles

        if not self.spawner.profiles:
            self.add(Row("profiles", OK, "none: one static workspace, no form"))
            return
        total = len(self.inventory) if self.inventory is not None else None
        try:
            profiles = parse_profiles(
                self.spawner.profiles,
                total_gpus=total,
                option=f"{type(self.spawner).__name__}.profiles",
            )
        except ProfileError as e:
            self.add(
                Row(
                    "profiles",
                    FAIL,
                    _short(e),
                    "Edit the profile named above (GPUWS_PROFILES_FILE or "
                    "c.GPUDockerSpawner.profiles); docs/gpus.md: Profiles.",
                )
            )
            return
        listed = ", ".join(
            f"{p.slug} ({p.gpus} GPU{'s' * (p.gpus != 1)})" if p.gpus else f"{p.slug} (CPU)"
            for p in profiles
        )
        self.add(Row("profiles", OK, listed))

    def check_idle_reclaim(self) -> None:
        if self.config is None:
            self.add(Row("idle reclaim", SKIP, "needs the configuration"))
            return
        from spawner.hub.reclaim import GPUReclaimer

        try:
            r = GPUReclaimer(config=self.config)
        except TraitError as e:
            self.add(Row("idle reclaim", FAIL, _short(e), "Correct the option named."))
            return
        services = self.config.JupyterHub.get("services") or []
        if hasattr(services, "get_value"):  # a LazyConfigValue (services.append in the file)
            services = services.get_value([])
        culler = any(isinstance(s, dict) and s.get("name") == "idle-culler" for s in services)
        if not r.enabled:
            self.add(
                Row(
                    "idle reclaim",
                    WARN,
                    "off: idle servers keep their GPUs",
                    "Set GPUWS_IDLE_TIMEOUT / GPUWS_GPU_IDLE_TIMEOUT (seconds).",
                )
            )
            return
        if culler and importlib.util.find_spec("jupyterhub_idle_culler") is None:
            self.add(
                Row(
                    "idle reclaim",
                    FAIL,
                    "the idle-culler service is configured but jupyterhub-idle-culler is not "
                    "installed",
                    "pip install jupyterhub-idle-culler (the hub image has it).",
                )
            )
            return
        rule = self._utilisation_rule(r.require_no_gpu_utilization)
        self.add(
            Row(
                "idle reclaim",
                OK,
                f"GPU servers after {minutes(r.gpu_idle_timeout)} idle, any server after "
                f"{minutes(r.idle_timeout)} (jupyterhub-idle-culler"
                f"{'' if culler else ' not configured'}); GPU utilisation rule {rule}",
            )
        )

    def _utilisation_rule(self, required: bool) -> str:
        from spawner.runtime.gpus import uses_nvml

        if not required:
            return "off"
        if self.spawner is not None and not uses_nvml(getattr(self.spawner, "gpu_inventory", [])):
            return "on, but the inventory is static (no NVML): activity alone decides"
        if self.inventory is None:
            return "on, but NVML does not answer: activity alone decides"
        return "on (NVML)"


def minutes(seconds: float) -> str:
    """A timeout as an admin reads it: "never", "30 min", "2 h"."""
    if not seconds:
        return "never"
    return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds / 60:g} min"


def supported_mechanisms(info: dict[str, Any], driver_ok: bool) -> list[str]:
    """The ``gpu_mechanism`` values an engine supports, from ``docker info`` and the probe."""
    found = ["device-requests"] if driver_ok else []
    if "nvidia" in (info.get("Runtimes") or {}):
        found.append("nvidia-runtime")
    if info.get("CDISpecDirs"):  # Docker 27+ lists them when CDI is enabled
        found.append("cdi")
    return found


def mechanism_row(configured: str, supported: list[str]) -> Row:
    """Whether the configured ``gpu_mechanism`` is one the engine supports."""
    offered = ", ".join(supported) or "none"
    if configured in supported:
        return Row("gpu mechanism", OK, f"{configured} (this engine supports: {offered})")
    return Row(
        "gpu mechanism",
        FAIL,
        f"{configured} is configured, but this engine supports: {offered}",
        "Set GPUWS_GPU_MECHANISM (c.GPUDockerSpawner.gpu_mechanism) to one the engine "
        "supports, or install the NVIDIA Container Toolkit (docs/deploy.md, GPU host wiring).",
    )


SELFTEST_TIMEOUT_S = 180


def selftest_row(image: str, exit_code: int | None, output: str) -> Row:
    """What an image's gpuws-selftest said, as a row (exit_code None: it did not run)."""
    name = "image stack"
    if exit_code is None:
        words = "no gpuws-selftest in it (not a gpu-workspaces image); not checked"
        return Row(name, SKIP, f"{image}: {words}")
    try:
        report = json.loads(output.strip().splitlines()[-1])
        modules = dict(report["modules"])
    except (IndexError, KeyError, TypeError, ValueError):
        tail = " ".join(output.split())[-200:] or "nothing"
        return Row(name, FAIL, f"{image}: gpuws-selftest exited {exit_code} and printed {tail}")
    failures = dict(report.get("import_failures") or {})
    torch = report.get("torch") or {}
    if exit_code != 0 or failures or "error" in torch:
        broken = [f"{module} ({why})" for module, why in failures.items()]
        if "error" in torch:
            broken.append(f"the torch step ({torch['error']})")
        return Row(
            name,
            FAIL,
            f"{image}: " + ("; ".join(broken) or f"gpuws-selftest exited {exit_code}"),
            "Rebuild the image with `make images`; run `docker run --rm IMAGE gpuws-selftest` "
            "to see the whole report.",
        )
    detail = f"{image}: {len(modules)} modules import"
    if torch:
        build = f"CUDA {torch['torch_cuda_build']}" if torch.get("torch_cuda_build") else "CPU"
        detail += f"; torch {torch['torch']} ({build} build) trains a step"
    return Row(name, OK, detail)


def run_selftest(client: Any, image: str) -> Row:
    """Run the image's gpuws-selftest in a container with no network and no GPUs."""
    import docker

    container = None
    try:
        container = client.create_container(
            image,
            entrypoint=["gpuws-selftest"],
            command=["--json"],
            labels={PROBE_LABEL: "selftest"},
            network_disabled=True,
            host_config=client.create_host_config(network_mode="none", auto_remove=False),
        )
        try:
            client.start(container)
        except docker.errors.APIError as e:
            if "executable file not found" in str(e) or "no such file" in str(e).lower():
                return selftest_row(image, None, "")
            raise
        code = int(client.wait(container, timeout=SELFTEST_TIMEOUT_S)["StatusCode"])
        output = client.logs(container, stdout=True, stderr=False).decode(errors="replace")
        return selftest_row(image, code, output)
    except Exception as e:  # the engine's answer, in a row: the doctor never stops on it
        return Row("image stack", FAIL, f"{image}: gpuws-selftest could not run ({_short(e)})")
    finally:
        if container is not None:
            with contextlib.suppress(Exception):
                client.remove_container(container, force=True)


def probe_nvidia_driver(client: Any, image: str, device: str) -> Row:
    """Start (and remove) a container asking Docker for one GPU: does the driver take it?"""
    import docker

    request = docker.types.DeviceRequest(device_ids=[device], capabilities=[["gpu"]])
    container = None
    try:
        container = client.create_container(
            image,
            entrypoint=["true"],
            command=[],
            labels={PROBE_LABEL: "nvidia-probe"},
            network_disabled=True,
            host_config=client.create_host_config(
                device_requests=[request], network_mode="none", auto_remove=False
            ),
        )
        client.start(container)
        client.wait(container, timeout=60)
    except docker.errors.APIError as e:
        return classify_probe_error(str(getattr(e, "explanation", None) or e))
    except Exception as e:
        return classify_probe_error(_short(e))
    finally:
        if container is not None:
            with contextlib.suppress(Exception):
                client.remove_container(container, force=True)
    return Row("nvidia driver", OK, f"a container was given GPU {device} by Docker's driver")


def run(argv: Sequence[str] | None = None, *, out: Callable[[str], Any] = print) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spawner doctor",
        description="Preflight checks of a GPU workspaces hub (Docker, NVIDIA driver, GPUs, "
        "images, network, profiles, idle reclaim). Exits 1 when a check fails.",
    )
    parser.add_argument(
        "-f",
        "--config",
        help="the hub's config file (default: ./jupyterhub_config.py, then "
        "/srv/jupyterhub/jupyterhub_config.py); it reads the GPUWS_* variables",
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    doctor = Doctor(args.config)
    rows = doctor.run()
    if args.json:
        out(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        width = shutil.get_terminal_size((100, 24)).columns
        out(f"gpu-workspaces doctor (hub: jupyterhub {doctor.hub_version})\n")
        out(render(rows, width=max(width, 60)))
    return 1 if any(r.status == FAIL for r in rows) else 0


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run(argv))


__all__ = [
    "Doctor",
    "Row",
    "classify_probe_error",
    "compare_jupyterhub",
    "load_config",
    "main",
    "parse_version",
    "probe_nvidia_driver",
    "render",
    "run",
]
