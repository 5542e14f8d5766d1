"""What every GPU workspace spawner shares, whatever runs the containers.

:class:`WorkspaceMixin` holds the options and behaviour that the single-host
:class:`~spawner.backends.docker.GPUDockerSpawner` and the Swarm spawner have in common:
the GPU request, profiles and the spawn form, user-option validation, quotas, the spawn's
plan (:mod:`spawner.core.plan`), progress messages, the readiness wait, and the lifecycle
itself: ``start``, ``poll`` and ``stop`` are written once here. A concrete spawner mixes it in
before its dockerspawner base and supplies the hooks (see "hooks a concrete spawner
implements" below) and dockerspawner's object hooks.

State it adds to the hub database: ``profile`` (the slug the server was started with) and
``choices`` (the keys of the profile's options the user picked).

What a user may ask for: with profiles, ``{"profile": <slug>, <option>: <choice key>}``
(:func:`spawner.core.profiles.select`); without, DockerSpawner's own ``{"image": <key>}``
within ``allowed_images`` (:func:`spawner.core.choices.allowed_image`), other keys left to
the admin's code. An image that admin code sets (a pre-spawn hook, ``spawner.image = …``)
runs as set: only what users send is restricted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import docker
import requests
from docker.utils import kwargs_from_env
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import (
    Bool,
    CaselessStrEnum,
    Dict,
    Float,
    Int,
    List,
    TraitError,
    Unicode,
    Union,
    default,
    validate,
)
from traitlets.config import LoggingConfigurable

from spawner.backends.budgets import check_gpu_budget, form_budget_line
from spawner.backends.errors import WorkspaceError, engine_unreachable, start_failure
from spawner.core import egress, form, hardening
from spawner.core.choices import ChoiceError, allowed_image
from spawner.core.devices import (
    DEFAULT_CAPABILITIES,
    DeviceRequestError,
    parse_capabilities,
    validate_device_id,
)
from spawner.core.hardening import is_root_user
from spawner.core.idle import to_unix
from spawner.core.plan import (
    ONE_GPU_REQUEST,
    SpawnPlan,
    SpawnSettings,
    gpu_requests_chosen,
    image_for,
    resolve_plan,
)
from spawner.core.pool import PoolView, Quota
from spawner.core.profiles import (
    Profile,
    ProfileError,
    Selection,
    UserOptionsError,
    asks_for_gpus,
    parse_profiles,
    select,
    visible_profiles,
)
from spawner.core.session import (
    Deadlines,
    Estimate,
    SessionLimit,
    deadlines,
    estimate_sentence,
    estimate_wait,
    limit_from_state,
)
from spawner.core.sizes import GiB, SizeError, parse_size
from spawner.runtime.runtime import GPUSource, HubRuntime, RuntimeSettings, create_runtime


async def _accepts_connections(host: str, port: int) -> bool:
    """Whether something accepts TCP connections at host:port (refused at once if not)."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the inner result when
        # a cancel lands just as the connect is refused, and a stop while the spawn is pending
        # would be lost (JupyterHub then answers the stop with a 500).
        try:
            async with asyncio.timeout(1.0):
                await loop.sock_connect(sock, (host, port))
        except (TimeoutError, OSError):
            return False
    return True


@dataclass(frozen=True)
class GPUAvailability:
    """What the spawn form shows about the GPUs right now."""

    summary: str
    free: int
    total: int
    queue_length: int


class WorkspaceMixin(LoggingConfigurable):
    """Options and behaviour shared by the GPU workspace spawners (mix in before the base)."""

    if TYPE_CHECKING:
        # Provided by jupyterhub.spawner.Spawner, which comes after this mixin in the MRO.
        user: Any
        orm_spawner: Any
        server: Any
        name: str
        prefix: str
        http_timeout: int
        volumes: dict[str, Any]
        read_only_volumes: dict[str, Any]
        mem_limit: Any
        cpu_limit: float | None
        user_options: dict[str, Any]
        object_name: str
        _log_name: str

    # -- GPUs requested directly (no profiles) --------------------------------------------

    gpu_count = Int(
        0,
        min=0,
        config=True,
        help="""Number of GPUs for each server when no profile says otherwise.

        With a GPU inventory (discovered through NVML or given in ``gpu_inventory``) the
        spawner picks that many free GPUs and hands Docker their ids, so no two servers share
        a GPU. Mutually exclusive with ``gpu_device_ids`` and ``all_gpus``.
        """,
    )
    gpu_device_ids = List(
        Unicode(),
        config=True,
        help="""Explicit GPUs for each server: indexes ("0"), GPU UUIDs ("GPU-...") or MIG
        device ids ("MIG-..."). Mutually exclusive with ``gpu_count`` and ``all_gpus``.
        """,
    )
    all_gpus = Bool(
        False,
        config=True,
        help="Give each server every GPU of the host (Docker's ``--gpus all``).",
    )
    gpu_capabilities = Union(
        [List(Unicode()), Unicode()],
        default_value=list(DEFAULT_CAPABILITIES),
        config=True,
        help="""NVIDIA driver capabilities requested with the GPUs (``compute,utility`` by
        default: CUDA and nvidia-smi). Others: compat32, graphics, video, display.
        """,
    )

    @validate("gpu_capabilities")
    def _validate_capabilities(self, proposal: dict[str, Any]) -> list[str]:
        try:
            return list(parse_capabilities(proposal["value"], option=self._opt("gpu_capabilities")))
        except DeviceRequestError as e:
            raise TraitError(str(e)) from None

    @validate("gpu_device_ids")
    def _validate_device_ids(self, proposal: dict[str, Any]) -> list[str]:
        try:
            return [validate_device_id(str(d)) for d in proposal["value"]]
        except DeviceRequestError as e:
            raise TraitError(f"{self._opt('gpu_device_ids')}: {e}") from None

    profiles = List(
        Dict(),
        config=True,
        help="""Workspace profiles a user picks from in the spawn form (or REST API
        ``{"profile": "<slug>"}``). Each: slug, display_name, description, gpus, and optional
        image, mem_limit, cpu_limit, shm_size, default, groups, constraints, and ``options``
        (choices of image or limits inside the profile, each optionally for some groups;
        ``allowed_images`` is short for image choices). Empty: no form, the static
        ``gpu_count``/``image``/limits apply and users may name an image of
        ``allowed_images``, as with DockerSpawner. See docs/gpus.md.
        """,
    )

    @validate("profiles")
    def _validate_profiles(self, proposal: dict[str, Any]) -> list[dict[str, Any]]:
        if not proposal["value"]:
            return []  # no profiles: no form, the static settings apply
        try:
            parse_profiles(proposal["value"], total_gpus=None, option=self._opt("profiles"))
        except ProfileError as e:
            raise TraitError(str(e)) from None
        value: list[dict[str, Any]] = proposal["value"]
        return value

    gpu_image = Unicode(
        "",
        config=True,
        help="Image for profiles that ask for GPUs and name no image (empty: ``image``).",
    )

    gpu_wait_timeout = Float(
        300.0,
        min=0.0,
        config=True,
        help="""Seconds a spawn waits in the first-come-first-served queue for GPUs to become
        free before it is refused. 0: fail at once when no GPU is free.""",
    )
    gpu_queue_limit_per_user = Int(
        1,
        min=0,
        config=True,
        help="""Most GPU requests one user may have waiting in the queue at once (their named
        servers included); one more is refused at once with a sentence. 0: no limit.""",
    )
    gpu_quota_per_user = Int(
        None,
        allow_none=True,
        min=0,
        config=True,
        help="Most GPUs one user may hold across all their servers (None: no limit).",
    )
    gpu_quota_per_user_by_group = Dict(
        value_trait=Int(min=0),
        config=True,
        help="""Per-user GPU limit for members of a group, e.g. {"students": 1, "staff": 4}.
        A user in several groups gets the highest; it replaces ``gpu_quota_per_user``.""",
    )
    gpu_quota_per_group = Dict(
        value_trait=Int(min=0),
        config=True,
        help="""Most GPUs all members of a group may hold together, e.g. {"interns": 2}.""",
    )

    # -- GPU-hours budgets (docs/usage.md) -------------------------------------------------

    gpu_hours_per_user = Float(
        None,
        allow_none=True,
        min=0.0,
        config=True,
        help="""GPU-hours each user may use per ``gpu_hours_period`` (a GPU for an hour is one
        GPU-hour; two GPUs for an hour, two). None: no per-user budget.""",
    )
    gpu_hours_per_user_by_group = Dict(
        value_trait=Float(min=0.0),
        config=True,
        help="""Per-user GPU-hours budget for members of a group, e.g. {"students": 20,
        "staff": 200}. A user in several groups gets the highest; it replaces
        ``gpu_hours_per_user``.""",
    )
    gpu_hours_per_group = Dict(
        value_trait=Float(min=0.0),
        config=True,
        help="""GPU-hours all members of a group may use together per period, e.g.
        {"lab-a": 500}. Use counts against the groups its user was in at spawn.""",
    )
    gpu_hours_period = CaselessStrEnum(
        ["day", "week", "month"],
        default_value="month",
        config=True,
        help="""The period GPU-hours budgets are for: a calendar day, ISO week (from Monday)
        or month in UTC, or with ``gpu_hours_rolling`` the last 1, 7 or 30 days.""",
    )
    gpu_hours_rolling = Bool(
        False,
        config=True,
        help="Count budgets over the last 1/7/30 days instead of the calendar period.",
    )
    on_budget_exhausted = CaselessStrEnum(
        ["stop", "keep"],
        default_value="stop",
        config=True,
        help="""What happens to a running GPU server whose budget runs out: "stop" (after the
        in-session warning, ``GPUReclaimer.warn_before`` ahead) or "keep" (warned, left
        running; new GPU spawns are refused either way).""",
    )
    usage_db_url = Unicode(
        "",
        config=True,
        help="""SQLAlchemy URL of the database that keeps the GPU-hours records. Empty: the
        hub's own (``JupyterHub.db_url``: sqlite in the state folder, or PostgreSQL).""",
    )

    # -- shared memory -------------------------------------------------------------------

    shm_size = Union(
        [Int(), Unicode()],
        default_value=None,
        allow_none=True,
        config=True,
        help="""Size of /dev/shm ("2g", "512m" or bytes). Unset: half the memory limit when
        there is one, else ``default_shm_size`` — never Docker's 64 MB, which breaks PyTorch
        DataLoader workers.""",
    )
    default_shm_size = Union(
        [Int(), Unicode()],
        default_value="1g",
        config=True,
        help="/dev/shm size when neither ``shm_size`` nor a memory limit is set.",
    )

    @validate("shm_size", "default_shm_size")
    def _validate_sizes(self, proposal: dict[str, Any]) -> int | None:
        value = proposal["value"]
        if value is None:
            return None
        try:
            return parse_size(value, option=self._opt(proposal["trait"].name))
        except SizeError as e:
            raise TraitError(str(e)) from None

    wait_until_ready = Bool(
        True,
        config=True,
        help="""Return from start() only once the server answers HTTP, polling it every 50 ms.
        The hub's own check backs off exponentially (up to seconds); this hands it a server
        that answers at once.""",
    )
    container_user = Unicode(
        "1000:100",
        config=True,
        help="User (uid:gid) the notebook runs as. Empty: the image's USER. Never root.",
    )

    @validate("container_user")
    def _validate_user(self, proposal: dict[str, Any]) -> str:
        value = str(proposal["value"])
        if is_root_user(value):  # "0", "00", "+0", " 0", "root": uid 0 to Docker
            raise TraitError(f"{self._opt('container_user')}: notebooks must not run as root")
        return value

    cap_add = List(
        Unicode(),
        config=True,
        help="""Linux capabilities kept after dropping ALL (default none: the notebook runs
        as an unprivileged user with no-new-privileges and needs none). Only names on
        ``spawner.core.hardening.CAPABILITY_ALLOWLIST`` (Docker's defaults without NET_RAW and
        MKNOD) are accepted unless ``allow_host_access`` is set.""",
    )
    allow_host_access = Bool(
        False,
        config=True,
        help="""Accept settings that hand notebooks the host: binding the Docker socket or a
        host system folder (/, /etc, /proc, /sys, /dev, /run, /var/run, /boot, /root, Docker's
        data) through ``volumes``/``read_only_volumes``/``mounts``/``extra_host_config``,
        privileged mode, host namespaces, seccomp/AppArmor switched off, capabilities off the
        allowlist, ports on every interface, root. Off (default): the hub refuses to start
        with such a setting and names the option. See SECURITY.md.""",
    )
    pids_limit = Int(
        4096,
        min=0,
        config=True,
        help="Most processes/threads in one container (fork bombs stop here); 0: unlimited.",
    )
    nproc_limit = Int(
        None,
        allow_none=True,
        min=0,
        config=True,
        help="""Process ulimit (RLIMIT_NPROC, soft and hard) of each container; 0 keeps the
        engine's. The kernel counts it per uid across the whole host and every notebook
        runs as the same uid, so it is a ceiling on all notebooks together, not a
        per-container limit (that is ``pids_limit``). Unset: half the host's
        kernel.pid_max, at most 65536 and never below ``pids_limit``, which keeps process
        ids free for the hub and the host. It cannot exceed dockerd's own hard limit.""",
    )
    nofile_limit = Int(
        16384,
        min=0,
        config=True,
        help="""Open-files ulimit (soft and hard) of each container; 0 keeps the engine's.
        PyTorch shares tensors between DataLoader workers through file descriptors, so the
        usual 1024 is too few; it cannot exceed dockerd's own hard limit.""",
    )

    form_template_paths = List(
        Unicode(),
        config=True,
        help="Folders searched first for ``spawn_form.html.j2``, to restyle the spawn form.",
    )
    profile_slug = Unicode("", help="Profile this server runs (state, not config).")
    option_choices = Dict(
        value_trait=Unicode(),
        help="""The keys of the profile's options this server was started with, e.g.
        {"image": "pytorch"} (state, not config).""",
    )
    gpu_ids = List(
        Unicode(),
        help="""GPUs this server holds (state, not config): the ids the hub gave it on one
        host, or those Swarm assigned; read back after a hub restart.""",
    )

    # -- talking to the engine (single host or Swarm manager) ----------------------------

    @default("prefix")
    def _default_prefix(self) -> str:
        return "gpuws"

    docker_threads = Int(
        8,
        min=1,
        config=True,
        help="""Threads for Docker API calls. Stock DockerSpawner uses one for all servers,
        which serialises concurrent spawns.""",
    )

    @property
    def runtime(self) -> HubRuntime:
        """The hub process's runtime (made from the hub's config at start-up, else from the
        first spawner's settings): executor, start slots, pools, observers, running servers."""
        return create_runtime(
            RuntimeSettings(
                docker_threads=self.docker_threads, start_concurrency=self.start_concurrency
            )
        )

    @property
    def executor(self) -> ThreadPoolExecutor:
        return self.runtime.executor

    def client_kwargs_resolved(self) -> dict[str, Any]:
        """The Docker client's arguments as DockerSpawner makes them (TLS, DOCKER_HOST, the
        admin's client_kwargs)."""
        kwargs: dict[str, Any] = {"version": "auto"}
        tls_config = getattr(self, "tls_config", None)
        if tls_config:
            kwargs["tls"] = docker.tls.TLSConfig(**tls_config)
        kwargs.update(kwargs_from_env())
        kwargs.update(getattr(self, "client_kwargs", None) or {})
        return kwargs

    @property
    def client(self) -> Any:
        """The hub's Docker client of this engine, owned by the runtime (DockerSpawner keeps
        one per class, which no reset could stop)."""
        kwargs = self.client_kwargs_resolved()
        return self.runtime.client(repr(sorted(kwargs.items())), lambda: docker.APIClient(**kwargs))

    def docker_root_dir(self) -> str | None:
        """The data root of the engine, which holds every user's volumes; read once.

        None while the engine does not answer (the hub still starts; the next spawn reads it).
        """
        try:
            client = self.client
            key = str(client.base_url)
            roots = self.runtime.docker_roots
            if key not in roots:
                root = str(client.info().get("DockerRootDir") or "")
                roots[key] = root or hardening.DEFAULT_DOCKER_ROOT
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return None
        return roots[key]

    def known_docker_root(self) -> str:
        """The data root already read for this engine, else Docker's usual one (no call to
        the engine: spawners are built for every user, also while Docker is down)."""
        kwargs = self.client_kwargs_resolved()
        client = self.runtime.clients.get(repr(sorted(kwargs.items())))
        known = self.runtime.docker_roots.get(str(client.base_url)) if client else None
        return known or hardening.DEFAULT_DOCKER_ROOT

    start_concurrency = Int(
        None,
        allow_none=True,
        min=0,
        config=True,
        help="""Most servers that start at once (from creating the container until it
        answers); further spawns wait their turn, and the progress page says so. Starting a
        notebook server is CPU-bound (~1 s of CPU): started all at once, N servers share the
        CPUs and all finish late; in turns of about one per CPU the first are up in seconds
        and the last no later. Unset: the number of CPUs of the hub's host. 0: no limit.""",
    )

    network_guard_file = Unicode(
        "",
        config=True,
        help="""Status file of the network guard (``python -m spawner netguard --ready-file``):
        when set, no server starts unless the guard checked this hub's network's isolation
        rules less than ``network_guard_max_age`` seconds ago, so isolation fails closed.
        docker-compose.yaml sets it; empty: not checked (a host install without the guard).""",
    )
    network_guard_max_age = Float(
        30.0,
        min=1.0,
        config=True,
        help="Seconds after which the network guard's last check no longer counts.",
    )

    @validate("network_guard_file")
    def _valid_network_guard_file(self, proposal: dict[str, Any]) -> str:
        path = str(proposal["value"])
        if path and not os.path.isabs(path):
            raise TraitError(
                f"{self._opt('network_guard_file')}: {path!r} is not an absolute path (the "
                "guard's --ready-file, as the hub sees it)"
            )
        return path

    def check_network_guard(self) -> None:
        """Refuse to start while network isolation is not confirmed (see network_guard_file)."""
        if not self.network_guard_file:
            return
        try:
            with open(self.network_guard_file) as f:
                status: str | None = f.read()
        except OSError:
            status = None
        network = str(getattr(self, "network_name", ""))
        problem = egress.guard_status_problem(
            status, network, time.time(), self.network_guard_max_age
        )
        if problem:
            self.log.warning("spawn of %s refused: %s", self.user.name, problem)
            raise WorkspaceError(problem, reason="network isolation", status_code=503)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._profile: Profile | None = None
        self._plan: SpawnPlan | None = None
        self._options_applied = False  # apply_user_options ran for this spawn
        self._option_notes: tuple[str, ...] = ()  # saved choices that fell back, for progress
        # the session limit this server runs under (its profile's at the start), and how
        # often its user extended it; kept in the state, so a hub restart keeps both
        self.session_limit: SessionLimit | None = None
        self.session_extensions = 0
        # (when its budget runs out, the sentence), set by the hub's accountant for a GPU
        # server with a budget; None: no budget applies
        self.budget_due: tuple[float | None, str] | None = None
        self._last_wait_message = ""
        self._progress_events: list[dict[str, Any]] = []
        self._progress_changed = asyncio.Event()
        self._check_gpu_options()
        self._check_process_limits()
        # DockerSpawner reads the image from its trait (pull, command, environment), so a
        # profile's image is set there; the configured one is kept for the next spawn.
        self._configured_image = str(self.image)

    def _opt(self, name: str) -> str:
        return f"{self.__class__.__name__}.{name}"

    def _refuse_at_spawn(self, problems: list[str], what: str = "container") -> None:
        """End a spawn whose final settings are unsafe (before anything is created)."""
        if problems:
            raise WorkspaceError(
                f"This hub's {what} settings are unsafe, so nothing was started; tell an "
                "admin. " + hardening.refusal(problems, self._opt("allow_host_access")),
                reason="config",
                status_code=500,
            )

    def refusal_rules(self) -> hardening.Allowed:
        """What the allow-list lets this hub's containers or services name."""
        return hardening.Allowed(docker_root=self.known_docker_root())

    def check_refused_settings(self, *, read_engine: bool = False) -> None:
        """Refuse settings that hand notebooks the host (see spawner/core/hardening.py).

        Runs when the spawner is built (so the hub refuses to start, naming the option) over
        every setting that is not a callable; ``read_engine`` first asks the engine for its
        data root (start-up does; a spawner built for a user does not wait for Docker). The
        final create arguments are checked again at each spawn.
        """
        if self.allow_host_access:
            return
        if read_engine:
            self.docker_root_dir()
        allowed = self.refusal_rules()
        problems = self.shared_setting_problems(allowed) + self.backend_setting_problems(allowed)
        if problems:
            raise TraitError(hardening.refusal(problems, self._opt("allow_host_access")))

    def backend_setting_problems(self, allowed: hardening.Allowed) -> list[str]:
        """What is unsafe in the settings only this backend reads (a backend's hook)."""
        return []

    def shared_setting_problems(self, allowed: hardening.Allowed) -> list[str]:
        """What is unsafe in the settings both backends read the same way (capabilities,
        volumes), each sentence naming its option; a backend adds its own settings' checks."""
        problems = hardening.unsafe_capabilities(self.cap_add, self._opt("cap_add"))
        problems += hardening.unsafe_volumes(self.volumes, self._opt("volumes"), allowed)
        problems += hardening.unsafe_volumes(
            self.read_only_volumes, self._opt("read_only_volumes"), allowed
        )
        return problems

    def _check_gpu_options(self) -> None:
        chosen = gpu_requests_chosen(self.gpu_count, self.gpu_device_ids, self.all_gpus)
        if len(chosen) > 1:
            raise TraitError(f"{' and '.join(self._opt(n) for n in chosen)} {ONE_GPU_REQUEST}")

    def _check_process_limits(self) -> None:
        if self.nproc_limit and self.pids_limit and self.nproc_limit < self.pids_limit:
            raise TraitError(
                f"{self._opt('nproc_limit')} = {self.nproc_limit} is below "
                f"{self._opt('pids_limit')} = {self.pids_limit}: the process ulimit is shared "
                "by every notebook on the host, so one user could starve all others; raise it "
                "or lower pids_limit"
            )

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)  # type: ignore[misc]
        self.profile_slug = state.get("profile", "")
        self.gpu_ids = list(state.get("gpu_ids", []))
        self.option_choices = dict(state.get("choices", {}))
        self.session_limit, self.session_extensions = limit_from_state(state.get("session"))

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = super().get_state()  # type: ignore[misc]
        if self.profile_slug:
            state["profile"] = self.profile_slug
        if self.gpu_ids:
            state["gpu_ids"] = list(self.gpu_ids)
        if self.option_choices:
            state["choices"] = dict(self.option_choices)
        if self.session_limit is not None:
            state["session"] = self.session_limit.to_state(self.session_extensions)
        return state

    async def running_profile(self) -> Profile | None:
        """The profile this server was started with (after a hub restart, found again by its
        slug among the configured ones); None without profiles or once it is gone."""
        if self._profile is not None or not self.profile_slug or not self.profiles:
            return self._profile
        try:
            profiles = await self._parsed_profiles()  # all of them: one's groups may change
        except (ProfileError, UserOptionsError):
            return None
        return next((p for p in profiles if p.slug == self.profile_slug), None)

    def stop_deadlines(self, gpu_idle_timeout: float) -> Deadlines:
        """When idle reclaim (after ``gpu_idle_timeout``) and the session limit would stop
        this server, from the hub's record of its start and last activity."""
        orm = self.orm_spawner
        due = deadlines(
            started=to_unix(orm.started) if orm is not None else None,
            last_activity=to_unix(orm.last_activity) if orm is not None else None,
            holds_gpus=bool(self.gpu_ids),
            gpu_idle_timeout=gpu_idle_timeout,
            limit=self.session_limit,
            extensions_used=self.session_extensions,
        )
        if self.budget_due is not None and str(self.on_budget_exhausted).lower() == "stop":
            # the hub's accountant projects when this server's budget runs out
            due = dataclasses.replace(due, budget=self.budget_due[0])
        return due

    def clear_state(self) -> None:
        super().clear_state()  # type: ignore[misc]
        self.profile_slug = ""
        self.gpu_ids = []
        self.option_choices = {}
        self.session_limit = None
        self.session_extensions = 0
        self._profile = None
        self._plan = None
        self._options_applied = False
        self._option_notes = ()

    # -- the plan: everything one spawn resolves, once ------------------------------------

    def spawn_settings(self) -> SpawnSettings:
        """The configured values, as the pure plan reads them."""
        return SpawnSettings(
            image=self._configured_image,
            gpu_image=self.gpu_image,
            gpu_count=self.gpu_count,
            gpu_device_ids=tuple(self.gpu_device_ids),
            all_gpus=self.all_gpus,
            mem_limit=_bytes(self.mem_limit, self._opt("mem_limit")),
            cpu_limit=self.cpu_limit or None,
            mem_guarantee=_bytes(getattr(self, "mem_guarantee", None), self._opt("mem_guarantee")),
            cpu_guarantee=getattr(self, "cpu_guarantee", None) or None,
            shm_size=_bytes(self.shm_size, self._opt("shm_size")),
            # a default trait value is not validated: "1g" as written
            default_shm_size=_bytes(self.default_shm_size, self._opt("default_shm_size")) or GiB,
            pids_limit=self.pids_limit,
            nofile_limit=self.nofile_limit,
            nproc_limit=self.nproc_limit,
            cap_add=tuple(self.cap_add),
            capabilities=tuple(self.gpu_capabilities),
            mechanism=str(getattr(self, "gpu_mechanism", "device-requests")),
            container_user=self.container_user,
            node_constraints=tuple(getattr(self, "node_constraints", ()) or ()),
            prefix=self.prefix,
            hub_instance=str(getattr(self, "hub_instance", "") or ""),
        )

    def host_pid_max(self) -> int | None:
        """The kernel.pid_max of the host the server runs on (None: not known here)."""
        return None

    @property
    def plan(self) -> SpawnPlan:
        """This spawn's plan: the configured values with the user's profile applied (pure:
        :func:`spawner.core.plan.resolve_plan`), with the GPUs it was given."""
        if self._plan is None:
            self._plan = resolve_plan(
                self.spawn_settings(),
                self._profile,
                user=self.user.name,
                server=self.name or "",
                groups=self._user_groups(),
                host_pid_max=self.host_pid_max(),
            )
        gpu_ids = tuple(getattr(self, "gpu_ids", ()) or ())
        if self._plan.gpu_ids != gpu_ids:
            self._plan = self._plan.with_gpu_ids(gpu_ids)
        if self.image and self._plan.image != self.image:
            # DockerSpawner's own way to pick an image (a pre-spawn hook sets the trait); the
            # allow-list checks it like any other
            self._plan = dataclasses.replace(self._plan, image=str(self.image))
        return self._plan

    def wants_gpus(self) -> bool:
        return self.plan.wants_gpus

    def get_env(self) -> dict[str, str]:
        """JupyterHub's environment with this spawn's limits (a profile's, where it sets
        them); the builders add the GPU variables."""
        env: dict[str, str] = super().get_env()  # type: ignore[misc]
        plan = self.plan
        for name, value in (("MEM_LIMIT", plan.mem_limit), ("CPU_LIMIT", plan.cpu_limit)):
            if value:
                env[name] = str(float(value) if name == "CPU_LIMIT" else value)
            else:
                env.pop(name, None)
        return env

    # -- one lifecycle for both backends --------------------------------------------------
    #
    # start / poll / stop are written once here, as DockerSpawner's start() is a template over
    # its object hooks; a backend supplies only the hooks below (claim, release, observe, the
    # clean-up of a failed start) and dockerspawner's create_object / start_object.

    #: What the engine is called in sentences ("Docker engine", "Swarm manager").
    engine_words: ClassVar[str] = "Docker engine"
    #: Whether starts take one of the hub's start slots (CPU-bound on the hub's own host).
    uses_start_slots: ClassVar[bool] = True

    @property
    def server_key(self) -> tuple[str, str]:
        return (self.user.name, self.name or "")

    async def start(self) -> tuple[str, int]:
        self._progress_events = []
        self._plan = None  # this spawn's plan, from the settings as they are now
        if not self._options_applied:
            # start() called without JupyterHub's apply_user_options (admin code, tests)
            await self._apply_profile(self.user_options or {})
        for note in self._option_notes:
            self._report(note)
        self.check_network_guard()
        try:
            await self.claim_resources()
            async with self._maybe_start_slot():
                ip_port: tuple[str, int] = await super().start()  # type: ignore[misc]
                await self.resources_started()
                self._report("Starting the notebook server", progress=70)
                if self.wait_until_ready:
                    await self._wait_until_answering(*ip_port)
            self._report("Server is up", progress=95)
            self.runtime.servers.track(self.server_key, self)  # idle reclaim from now on
            return ip_port
        except Exception as e:
            await self.discard_failed_start()
            explained = start_failure(e, engine=self.engine_words)
            if explained is None:
                raise
            raise explained from None
        except BaseException:
            # Cancelled (a stop while pending): end now, within JupyterHub's wait; the
            # clean-up runs on in the background, held by the runtime.
            self.runtime.spawn(self.cancelled_start_cleanup())
            raise

    @contextlib.asynccontextmanager
    async def _maybe_start_slot(self) -> AsyncIterator[None]:
        if not self.uses_start_slots:
            yield
            return
        async with self.runtime.start_slot(self._report):
            yield

    async def poll(self) -> int | str | None:
        try:
            status = await self.observed_status()
        except Exception as e:
            if not engine_unreachable(e):
                raise
            # Cannot tell: keep the server (and its GPUs) until the engine answers again.
            # Reporting it stopped would throw away a server that is most likely still up,
            # e.g. when the hub starts before dockerd.
            self.log.warning(
                "%s not answering; keeping %s as running: %s", self.engine_words, self._log_name, e
            )
            return None
        if status is None:
            await self.readopt_resources()
            self.runtime.servers.track(self.server_key, self)  # e.g. after a hub restart
        else:
            self.runtime.servers.untrack(self.server_key, self)
            self.release_resources()
        return status

    async def stop(self, now: bool = False) -> None:
        self.runtime.servers.untrack(self.server_key, self)
        try:
            await super().stop(now=now)  # type: ignore[misc]
        except Exception as e:
            if not engine_unreachable(e):
                raise
            # JupyterHub forgets the server and revokes its token whatever happens here; the
            # object is removed by the next start of this server (same name). Its GPUs stay
            # busy in the engine's view until then, so they are never handed out twice.
            self.log.error(
                "%s not answering while stopping %s; %s is left for the next start of this "
                "server to remove: %s",
                self.engine_words,
                self._log_name,
                self.object_name,
                e,
            )
            self.clear_state()
        finally:
            self.release_resources()

    # -- hooks a concrete spawner implements ---------------------------------------------

    async def claim_resources(self) -> None:
        """Before the object is created: check and claim what the server needs (GPUs)."""

    async def resources_started(self) -> None:
        """The object started: what was claimed now belongs to a running server."""

    async def observed_status(self) -> int | str | None:
        """None while the server runs, else why not (DockerSpawner's poll answer)."""
        status: int | str | None = await super().poll()  # type: ignore[misc]
        return status

    async def readopt_resources(self) -> None:
        """A running server seen (after a hub restart): take back what it holds."""

    def release_resources(self) -> None:
        """The server stopped: free what it held."""

    async def discard_failed_start(self) -> None:
        """A start failed: remove what it made, then free what it claimed."""

    def cancelled_start_cleanup(self) -> Coroutine[Any, Any, None]:
        """A start was cancelled: the clean-up to run in the background (what it must keep
        is taken now, before JupyterHub's stop runs)."""
        return self.discard_failed_start()

    async def prepare_gpu_source(self) -> GPUSource | None:
        """At hub start: make what the dashboard and metrics read (and start following the
        engine); None when this hub has no GPUs to show."""
        return None

    async def total_gpus(self) -> int | None:
        """GPUs this hub can hand out, or None when it cannot tell."""
        return None

    async def gpu_availability(self) -> GPUAvailability | None:
        """Free/total GPUs and the queue, for the spawn form; None when unknown."""
        return None

    async def check_gpu_quota(self, count: int) -> None:
        """Raise WorkspaceError (403) if ``count`` more GPUs would exceed a quota."""

    def gpu_quota(self) -> Quota:
        """The GPU limits of this user: their own (or their groups' per-user one) and the
        totals of their groups; the one quota rule, :func:`spawner.core.pool.enforce_quota`."""
        limit, source = self.user_gpu_limit()
        return Quota(limit, source, dict(self.gpu_quota_per_group))

    # -- profiles and user options -------------------------------------------------------

    def _user_groups(self) -> list[str]:
        return sorted(g.name for g in getattr(self.user, "groups", []) or [])

    async def _parsed_profiles(self) -> tuple[Profile, ...]:
        total: int | None = None
        if asks_for_gpus(self.profiles):
            # None when the GPUs cannot be seen: GPU profiles are refused at spawn instead
            total = await self.total_gpus()
        try:
            return parse_profiles(self.profiles, total_gpus=total, option=self._opt("profiles"))
        except ProfileError as e:
            raise WorkspaceError(
                "This hub's profiles are misconfigured; tell an admin. " + str(e),
                reason="config",
                status_code=500,
            ) from None

    async def _visible_profiles(self) -> tuple[Profile, ...]:
        return visible_profiles(await self._parsed_profiles(), self._user_groups())

    @default("options_form")
    def _default_options_form(self) -> Any:
        if not self.profiles:
            # Spawner's default, after this mixin in the MRO (LoggingConfigurable has none)
            return super()._default_options_form()  # type: ignore[misc]
        return WorkspaceMixin._render_options_form

    async def _render_options_form(self) -> str:
        profiles = await self._visible_profiles()
        previous = self.orm_spawner.user_options if self.orm_spawner is not None else None
        earlier: Selection | None = None
        if profiles:
            # the user's last choices, pre-selected where they still apply
            with contextlib.suppress(UserOptionsError):
                earlier = select(profiles, previous or {}, self._user_groups(), saved=True)
        gpus = GPUAvailability("no GPUs", 0, 0, 0)
        if any(p.gpus for p in profiles):
            gpus = await self.gpu_availability() or gpus
        return form.render_form(
            profiles,
            selected=earlier.profile.slug if earlier else None,
            chosen=dict(earlier.choices) if earlier else {},
            notes=earlier.notes if earlier else (),
            user_groups=self._user_groups(),
            gpu_summary=gpus.summary,
            free_gpus=gpus.free,
            total_gpus=gpus.total,
            queue_length=gpus.queue_length,
            budget_line=await form_budget_line(self) if any(p.gpus for p in profiles) else "",
            template_paths=self.form_template_paths,
        )

    @default("options_from_form")
    def _default_options_from_form(self) -> Callable[..., dict[str, Any]]:
        if not self.profiles:
            # Spawner's default, after this mixin in the MRO (LoggingConfigurable has none)
            spawner_default: Callable[..., dict[str, Any]]
            spawner_default = super()._default_options_from_form()  # type: ignore[misc]
            return spawner_default
        return staticmethod(form.options_from_form)

    @default("apply_user_options")
    def _default_apply_user_options(self) -> Any:
        return WorkspaceMixin._apply_profile

    def _refuse_gone_profile(self, selection: Selection) -> None:
        """A start that reuses saved options naming a profile no longer offered (removed, or
        its group left) starts nothing: the form, with the default preselected, is the way on."""
        hub_url = str(getattr(getattr(self, "hub", None), "base_url", "/hub/"))
        form_url = f"{hub_url}spawn/{self.user.name}" + (f"/{self.name}" if self.name else "")
        message = (
            f"Your last profile ('{selection.profile_gone}') is no longer offered to you, so "
            f"nothing was started; choose a profile on the form at {form_url} "
            f"('{selection.profile.slug}' is preselected)."
        )
        self.log.info("spawn of %s refused: %s", self._log_name, message)
        raise WorkspaceError(message, reason="user_options", status_code=409)

    async def _apply_profile(self, user_options: Any) -> None:
        """Validate what the user asked for (form or REST API) and apply their profile."""
        self._options_applied = True
        self._option_notes = ()
        if not self.profiles:
            self._apply_allowed_image(user_options)
            return
        profiles = await self._visible_profiles()
        saved = not options_were_sent(getattr(self, "handler", None))
        try:
            selection = select(profiles, user_options or {}, self._user_groups(), saved=saved)
        except UserOptionsError as e:
            raise WorkspaceError(str(e), reason="user_options") from None
        if selection.profile_gone is not None:
            self._refuse_gone_profile(selection)
        for note in selection.notes:
            self.log.info("spawn of %s: %s", self._log_name, note)
        self._option_notes = selection.notes
        profile = selection.applied
        self.session_limit = profile.session_limit()
        self.session_extensions = 0
        self._profile = profile
        self.profile_slug = profile.slug
        self.option_choices = dict(selection.choices)
        self._plan = None  # resolved at start from the configured values and this profile
        self.image = image_for(self.spawn_settings(), profile)
        if profile.gpus:
            # Refuse over-quota requests before anything waits or is created.
            await self.check_gpu_quota(profile.gpus)
            await check_gpu_budget(self)

    def _apply_allowed_image(self, user_options: Any) -> None:
        """DockerSpawner's user option: ``{"image": <key of allowed_images>}``; other keys
        are the admin's (their own form and hooks read them)."""
        if isinstance(user_options, dict) and user_options.get("image") not in (None, ""):
            self.image = self._allowed_image(user_options["image"])

    def _allowed_image(self, key: object) -> str:
        getter = getattr(self, "_get_allowed_images", None)
        try:
            return allowed_image(getter() if callable(getter) else {}, key)
        except ChoiceError as e:
            raise WorkspaceError(str(e), reason="user_options") from None

    async def check_allowed(self, image: str) -> str:
        """DockerSpawner's start() re-reads ``user_options["image"]`` through this: once the
        user's options are applied, the image is resolved (and admin code may have set
        another since); before that, DockerSpawner's own rule."""
        if self._options_applied:
            return str(self.image)
        return self._allowed_image(image)

    def user_gpu_limit(self) -> tuple[int | None, str]:
        """The per-user GPU limit that applies to this user, and whose limit it is."""
        groups = self._user_groups()
        by_group = {g: n for g, n in self.gpu_quota_per_user_by_group.items() if g in groups}
        if by_group:
            group = max(by_group, key=lambda g: by_group[g])
            return by_group[group], f"members of group '{group}'"
        return self.gpu_quota_per_user, "each user"

    # -- sizes, labels, progress, readiness ------------------------------------------

    def queue_estimate(self, view: PoolView, ahead: int, count: int) -> Estimate | None:
        """When a request waiting behind ``ahead`` others should get its ``count`` GPUs, from
        the holders' idle-reclaim and session-limit deadlines; None without a reclaimer."""
        estimator = self.runtime.release_estimator
        if estimator is None:
            return None
        running = dict(self.runtime.servers.running())
        held: dict[str, tuple[int, float | None]] = {}
        releases: list[tuple[int, float | None]] = []
        for gpu in view.gpus:
            holding = gpu.holding
            if gpu.state == "external" or (gpu.state == "held" and holding is None):
                releases.append((1, None))  # a container outside the hub: no rule applies
            elif holding is not None:
                key = (holding.user, holding.server)
                server = running.get(key)
                n, when = held.get(holding.holder, (0, None))
                if not n and server is not None:
                    when = estimator(key, server)
                held[holding.holder] = (n + 1, when)
        return estimate_wait(
            [*releases, *held.values()],
            free=view.count("free"),
            ahead=[w.count for w in view.queue[:ahead]],
            count=count,
            now=time.time(),
        )

    def report_wait(self, ahead: int, count: int, estimate: Estimate | None) -> None:
        """The progress page's line while a request waits for GPUs, with the estimate also
        as a field (``gpuws_estimate``: ``at``, Unix time or None, and ``freed``)."""
        plural = "GPU" if count == 1 else "GPUs"
        message = f"Waiting for {count} {plural}, {ahead} request{'s' if ahead != 1 else ''} "
        message += "ahead of you."
        fields: dict[str, Any] = {}
        if estimate is not None:
            message += " " + estimate_sentence(estimate, time.time())
            fields["gpuws_estimate"] = {"at": estimate.at, "freed": estimate.freed}
        if message != self._last_wait_message:  # the pool reports at every wake-up
            self._last_wait_message = message
            self._report(message, **fields)

    def _report(self, message: str, progress: int | None = None, **fields: Any) -> None:
        event: dict[str, Any] = {"message": message, **fields}
        if progress is not None:
            event["progress"] = progress
        self._progress_events.append(event)
        self._progress_changed.set()
        self._progress_changed = asyncio.Event()

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        """Tell the user in words what the spawn is doing (queue place, create, start)."""
        sent = 0
        while True:
            changed = self._progress_changed
            while sent < len(self._progress_events):
                yield self._progress_events[sent]
                sent += 1
            await changed.wait()

    async def _wait_until_answering(self, ip: str, port: int) -> None:
        """Poll the server's API until it answers, or fail with why it never did."""
        url = f"http://{ip}:{port}{self.server.base_url}api" if self.server else None
        if url is None:
            return
        client = AsyncHTTPClient()
        deadline = time.monotonic() + self.http_timeout
        next_state_check = time.monotonic() + 1.0
        listening = False
        while time.monotonic() < deadline:
            # Until the port takes connections, probe it with a bare TCP connect: a fifth of
            # the hub's CPU of an HTTP request, which matters with dozens of spawns at once.
            listening = listening or await _accepts_connections(ip, port)
            try:
                if listening:
                    await client.fetch(
                        HTTPRequest(url, request_timeout=2.0, follow_redirects=False)
                    )
                    return
            except HTTPClientError as e:
                if e.code < 500 and e.code != 599:
                    return
            except OSError:
                listening = False
            if time.monotonic() > next_state_check:
                next_state_check = time.monotonic() + 1.0
                status = await self.observed_status()
                if status is not None:
                    raise WorkspaceError(
                        f"The notebook server exited before it answered ({status}). "
                        "Check the image, or tell an admin.",
                        reason="server-exited",
                        status_code=500,
                    )
            await asyncio.sleep(0.05)
        raise WorkspaceError(
            f"The notebook server did not answer within {self.http_timeout} seconds; "
            "it was stopped and its GPUs freed. Try again or tell an admin.",
            reason="timeout",
            status_code=504,
        )


def options_were_sent(handler: Any) -> bool:
    """Whether the request that starts a server sent user options, rather than JupyterHub
    reusing the user's earlier ones (a start with no body, no form and no query options).

    Earlier choices may name a profile or choice an admin has since removed: those fall
    back to the default with a sentence, where the same options sent now are refused.
    """
    request = getattr(handler, "request", None)
    if request is None:
        return False  # not a person's request: the hub or a service starting a server
    server_body = getattr(handler, "get_server_json_body", None)
    if request.method == "POST" and callable(server_body):
        # the REST API: JupyterHub's own reading of the body (user_options None: reuse)
        try:
            return server_body().get("user_options") is not None
        except Exception:  # JupyterHub has answered the bad body already
            return True
    if request.method == "POST":
        return True  # the spawn form
    return any(name not in ("next", "_xsrf") for name in request.query_arguments)


def _bytes(value: Any, option: str) -> int | None:
    """A size trait (JupyterHub's ByteSpecification gives int bytes; a str is parsed)."""
    if value in (None, "", 0):
        return None
    if isinstance(value, str):
        return parse_size(value, option=option)
    return int(value)
