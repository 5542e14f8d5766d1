"""One spawn's settings, resolved once: :class:`SpawnPlan` and :func:`resolve_plan`.

A spawner gathers its configured values into a :class:`SpawnSettings`, and at each spawn
:func:`resolve_plan` applies the user's profile to them (the image, GPUs and limits the
profile names replace the configured ones) and derives what follows from them (the size of
``/dev/shm``, the process ulimit). The result is one frozen value that the builders in
:mod:`spawner.core.builders` turn into Docker's create arguments or a Swarm service spec;
nothing is written back onto the spawner, so one spawn's profile cannot leak into the next.
The GPUs a server was given are known only after the claim: add them with
:meth:`SpawnPlan.with_gpu_ids`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from spawner.core import hardening
from spawner.core.devices import DEFAULT_CAPABILITIES, GPU_MECHANISMS
from spawner.core.labels import (
    LABEL_GPUS,
    LABEL_GROUPS,
    LABEL_HUB_INSTANCE,
    LABEL_PREFIX_NAME,
    LABEL_PROFILE,
    LABEL_SERVER,
    LABEL_USER,
)
from spawner.core.profiles import Profile
from spawner.core.sizes import GiB, derive_shm_size


class PlanError(ValueError):
    """The configured values cannot make a spawn plan; the message names the setting."""


def _strings(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(str(v) for v in values)


@dataclass(frozen=True, kw_only=True)
class SpawnSettings:
    """What the admin configured, as the spawner's traits hold it (sizes in bytes).

    ``nproc_limit`` None means "derive it" (:func:`spawner.core.hardening.process_ceiling`);
    0 in any ulimit or ``pids_limit`` keeps the engine's.
    """

    image: str
    gpu_image: str = ""
    gpu_count: int = 0
    gpu_device_ids: tuple[str, ...] = ()
    all_gpus: bool = False
    mem_limit: int | None = None
    cpu_limit: float | None = None
    mem_guarantee: int | None = None
    cpu_guarantee: float | None = None
    shm_size: int | None = None
    default_shm_size: int = GiB
    pids_limit: int = 4096
    nofile_limit: int = 16384
    nproc_limit: int | None = None
    cap_add: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES
    mechanism: str = "device-requests"
    container_user: str = "1000:100"
    node_constraints: tuple[str, ...] = ()
    prefix: str = "gpuws"
    hub_instance: str = ""

    def __post_init__(self) -> None:
        # Lists from traits become tuples, so settings compare and never change underneath.
        for name in ("gpu_device_ids", "cap_add", "capabilities", "node_constraints"):
            object.__setattr__(self, name, _strings(getattr(self, name)))


@dataclass(frozen=True, kw_only=True)
class SpawnPlan:
    """Everything one spawn resolved: what the builders read, and nothing else.

    ``env`` is the environment JupyterHub gives the server (``Spawner.get_env``) without the
    GPU variables, which the builders add from ``gpu_ids`` (they differ by backend).
    ``gpu_ids`` are the GPUs the server was given, empty until they are claimed.
    """

    user: str
    server: str = ""
    groups: tuple[str, ...] = ()  # the user's groups at spawn (GPU-hours accounting)
    prefix: str = "gpuws"
    hub_instance: str = ""
    profile_slug: str = ""
    image: str
    gpu_count: int = 0
    gpu_device_ids: tuple[str, ...] = ()
    all_gpus: bool = False
    gpu_ids: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES
    mechanism: str = "device-requests"
    mem_limit: int | None = None
    cpu_limit: float | None = None
    mem_guarantee: int | None = None
    cpu_guarantee: float | None = None
    shm_size: int = GiB
    pids_limit: int = 0
    nofile_limit: int = 0
    nproc_limit: int = 0
    cap_add: tuple[str, ...] = ()
    container_user: str = ""
    constraints: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in (
            "gpu_device_ids",
            "gpu_ids",
            "capabilities",
            "cap_add",
            "constraints",
            "groups",
        ):
            object.__setattr__(self, name, _strings(getattr(self, name)))
        # A copy: the caller's dict may change after the plan is made.
        object.__setattr__(self, "env", {str(k): str(v) for k, v in self.env.items()})

    @property
    def wants_gpus(self) -> bool:
        """Whether this server asks for any GPU (a count, explicit ids or all of them)."""
        return bool(self.gpu_count or self.gpu_device_ids or self.all_gpus)

    def with_gpu_ids(self, gpu_ids: Iterable[str]) -> SpawnPlan:
        """This plan once its GPUs are claimed."""
        return dataclasses.replace(self, gpu_ids=_strings(gpu_ids))

    def labels(self) -> dict[str, str]:
        """The ``io.gpu-workspaces.*`` labels of the container or service, literal values."""
        labels = {
            LABEL_USER: self.user,
            LABEL_SERVER: self.server,
            LABEL_PROFILE: self.profile_slug,
            LABEL_GPUS: ",".join(self.gpu_ids),
            LABEL_PREFIX_NAME: self.prefix,
        }
        if self.hub_instance:
            labels[LABEL_HUB_INSTANCE] = self.hub_instance
        if self.gpu_ids:
            # whose budgets its GPU-hours count against, as they were at spawn
            labels[LABEL_GROUPS] = json.dumps(sorted(self.groups))
        return labels


def image_for(settings: SpawnSettings, profile: Profile | None) -> str:
    """The image a server runs: the profile's, else the GPU image for a GPU profile, else the
    configured one. The one image rule (the allow-list reads the same three settings)."""
    if profile is None:
        return settings.image
    return profile.image or (settings.gpu_image if profile.gpus else "") or settings.image


#: Why two ways of asking for GPUs are refused (after the names of the options set).
ONE_GPU_REQUEST = (
    "are both set; ask for a number of GPUs, explicit device ids, or all GPUs — only one"
)


def gpu_requests_chosen(count: int, device_ids: Iterable[str], all_gpus: bool) -> list[str]:
    """Which of the three ways of asking for GPUs are set (at most one may be)."""
    return [
        name
        for name, on in (
            ("gpu_count", count > 0),
            ("gpu_device_ids", bool(tuple(device_ids))),
            ("all_gpus", all_gpus),
        )
        if on
    ]


def _check(settings: SpawnSettings) -> None:
    if settings.mechanism not in GPU_MECHANISMS:
        raise PlanError(
            f"gpu_mechanism: {settings.mechanism!r} is not a GPU mechanism; use one of "
            + ", ".join(GPU_MECHANISMS)
        )
    chosen = gpu_requests_chosen(settings.gpu_count, settings.gpu_device_ids, settings.all_gpus)
    if len(chosen) > 1:
        raise PlanError(f"{' and '.join(chosen)} {ONE_GPU_REQUEST}")


def resolve_plan(
    settings: SpawnSettings,
    profile: Profile | None,
    *,
    user: str,
    server: str = "",
    groups: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    host_pid_max: int | None = None,
) -> SpawnPlan:
    """The plan of one spawn: ``settings`` with ``profile`` applied (None: no profiles).

    A profile's GPUs replace ``gpu_count``/``gpu_device_ids``/``all_gpus`` (a CPU profile
    gets none), its limits and ``/dev/shm`` size replace the configured ones where it names
    them, and its constraints are added to ``node_constraints``. ``host_pid_max`` is the
    host's kernel.pid_max (None: unknown, as on a swarm), for the derived process ulimit.
    """
    _check(settings)
    gpus = (settings.gpu_count, settings.gpu_device_ids, settings.all_gpus)
    mem, cpu, shm = settings.mem_limit, settings.cpu_limit, settings.shm_size
    constraints = settings.node_constraints
    if profile is not None:
        gpus = (profile.gpus, (), False)
        mem = profile.mem_limit if profile.mem_limit is not None else mem
        cpu = profile.cpu_limit if profile.cpu_limit is not None else cpu
        shm = profile.shm_size if profile.shm_size is not None else shm
        constraints = (*constraints, *profile.constraints)
    nproc = settings.nproc_limit
    if nproc is None:
        nproc = hardening.process_ceiling(host_pid_max, settings.pids_limit)
    return SpawnPlan(
        user=user,
        server=server,
        groups=tuple(groups),
        prefix=settings.prefix,
        hub_instance=settings.hub_instance,
        profile_slug=profile.slug if profile is not None else "",
        image=image_for(settings, profile),
        gpu_count=gpus[0],
        gpu_device_ids=gpus[1],
        all_gpus=gpus[2],
        capabilities=settings.capabilities,
        mechanism=settings.mechanism,
        mem_limit=mem,
        cpu_limit=cpu,
        mem_guarantee=settings.mem_guarantee,
        cpu_guarantee=settings.cpu_guarantee,
        shm_size=derive_shm_size(
            explicit=shm, mem_limit=mem or None, default=settings.default_shm_size
        ),
        pids_limit=settings.pids_limit,
        nofile_limit=settings.nofile_limit,
        nproc_limit=nproc,
        cap_add=settings.cap_add,
        container_user=settings.container_user,
        constraints=constraints,
        env=env or {},
    )


__all__ = [
    "ONE_GPU_REQUEST",
    "PlanError",
    "SpawnPlan",
    "SpawnSettings",
    "gpu_requests_chosen",
    "image_for",
    "resolve_plan",
]
