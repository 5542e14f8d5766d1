"""What every GPU workspace spawner shares, whatever runs the containers.

:class:`WorkspaceMixin` holds the options and behaviour that the single-host
:class:`~spawner.backends.docker.GPUDockerSpawner` and the Swarm spawner have in common:
the GPU request, profiles and the spawn form, user-option validation, quotas, /dev/shm
sizing, container user and limits, labels, progress messages and the readiness wait.
A concrete spawner mixes it in before its dockerspawner base and implements the three hooks
:meth:`total_gpus`, :meth:`gpu_availability` and :meth:`check_gpu_quota`.

State it adds to the hub database: ``profile`` (the slug the server was started with).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Bool, Dict, Float, Int, List, TraitError, Unicode, Union, default, validate
from traitlets.config import LoggingConfigurable

from spawner.core import egress, form, hardening
from spawner.core.devices import (
    DEFAULT_CAPABILITIES,
    DeviceRequestError,
    parse_capabilities,
    validate_device_id,
)
from spawner.core.errors import WorkspaceError
from spawner.core.hardening import is_root_user
from spawner.core.profiles import (
    Profile,
    ProfileError,
    UserOptionsError,
    default_profile,
    parse_profiles,
    resolve_user_options,
    visible_profiles,
)
from spawner.core.sizes import SizeError, derive_shm_size, parse_size

LABEL_PREFIX = "io.gpu-workspaces"
LABEL_GPUS = f"{LABEL_PREFIX}.gpus"
LABEL_USER = f"{LABEL_PREFIX}.user"
LABEL_SERVER = f"{LABEL_PREFIX}.server"
LABEL_PROFILE = f"{LABEL_PREFIX}.profile"
LABEL_PREFIX_NAME = f"{LABEL_PREFIX}.prefix"
LABEL_HUB_INSTANCE = f"{LABEL_PREFIX}.hub-instance"


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
        image, mem_limit, cpu_limit, shm_size, default, groups. Empty: no form, the static
        ``gpu_count``/``image``/limits apply. See ``spawner.core.profiles.DEFAULT_PROFILES``.
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

    _pool_executor: ClassVar[ThreadPoolExecutor | None] = None

    @property
    def executor(self) -> ThreadPoolExecutor:
        cls = WorkspaceMixin
        if cls._pool_executor is None:
            cls._pool_executor = ThreadPoolExecutor(
                self.docker_threads, thread_name_prefix="gpuws-docker"
            )
        return cls._pool_executor

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

    # the hub's start slots: (event loop, limit) -> semaphore, and how many hold or wait
    _start_slots: ClassVar[dict[tuple[int, int], asyncio.Semaphore]] = {}
    _starting: ClassVar[int] = 0

    @contextlib.asynccontextmanager
    async def start_slot(self) -> AsyncIterator[None]:
        """Hold one of the hub's ``start_concurrency`` slots while the server starts."""
        limit = self.start_concurrency
        if limit is None:
            limit = os.cpu_count() or 1
        if not limit:
            yield
            return
        cls = WorkspaceMixin
        key = (id(asyncio.get_running_loop()), limit)
        slots = cls._start_slots.setdefault(key, asyncio.Semaphore(limit))
        if slots.locked():
            waiting = max(cls._starting - limit, 0)
            self._report(
                f"Waiting to start: {limit} servers are starting now, {waiting} more before yours"
            )
        cls._starting += 1
        try:
            async with slots:
                yield
        finally:
            cls._starting -= 1

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._profile: Profile | None = None
        self._progress_events: list[dict[str, Any]] = []
        self._progress_changed = asyncio.Event()
        self._check_gpu_options()
        self._check_process_limits()
        self._configured = {
            name: getattr(self, name) for name in ("image", "mem_limit", "cpu_limit", "shm_size")
        }

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
        chosen = [
            name
            for name, on in (
                ("gpu_count", self.gpu_count > 0),
                ("gpu_device_ids", bool(self.gpu_device_ids)),
                ("all_gpus", self.all_gpus),
            )
            if on
        ]
        if len(chosen) > 1:
            raise TraitError(
                f"{' and '.join(self._opt(n) for n in chosen)} are both set; "
                "ask for a number of GPUs, explicit device ids, or all GPUs — only one"
            )

    def _check_process_limits(self) -> None:
        if self.nproc_limit and self.pids_limit and self.nproc_limit < self.pids_limit:
            raise TraitError(
                f"{self._opt('nproc_limit')} = {self.nproc_limit} is below "
                f"{self._opt('pids_limit')} = {self.pids_limit}: the process ulimit is shared "
                "by every notebook on the host, so one user could starve all others; raise it "
                "or lower pids_limit"
            )

    def allowed_workspace_images(self) -> frozenset[str] | None:
        """Images a server of this hub may run; None when the admin allows any (``"*"``).

        Users never name an image: the form and the REST API accept only a profile. The
        images are those of the profiles, ``image``, ``gpu_image``, and DockerSpawner's
        ``allowed_images`` if the admin set it.
        """
        images = {self._configured["image"], self.gpu_image}
        images |= {p.get("image") for p in self.profiles if isinstance(p, dict)}
        getter = getattr(self, "_get_allowed_images", None)
        extra = getter() if callable(getter) else None
        if extra == "*":
            return None
        if isinstance(extra, dict):
            images |= set(extra.values())
        return frozenset(str(i) for i in images if i)

    def check_image_allowed(self) -> None:
        """Refuse to start a server whose image is not on the hub's image list."""
        allowed = self.allowed_workspace_images()
        if allowed is not None and self.image not in allowed:
            raise WorkspaceError(
                f"The image {str(self.image)[:80]!r} is not one this hub runs; "
                "pick a profile instead.",
                reason="image",
                status_code=403,
            )

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)  # type: ignore[misc]
        self.profile_slug = state.get("profile", "")

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = super().get_state()  # type: ignore[misc]
        if self.profile_slug:
            state["profile"] = self.profile_slug
        return state

    def clear_state(self) -> None:
        super().clear_state()  # type: ignore[misc]
        self.profile_slug = ""
        self._profile = None

    def wants_gpus(self) -> bool:
        return bool(self.gpu_count or self.gpu_device_ids or self.all_gpus)

    def get_env(self) -> dict[str, str]:
        env: dict[str, str] = super().get_env()  # type: ignore[misc]
        if not self.wants_gpus():
            # CUDA base images set NVIDIA_VISIBLE_DEVICES=all; on a host whose default
            # runtime is nvidia that would hand a CPU workspace every GPU behind the
            # allocator's back. "void" makes the NVIDIA runtime leave the container alone.
            env["NVIDIA_VISIBLE_DEVICES"] = "void"
        return env

    # -- hooks a concrete spawner implements ---------------------------------------------

    async def total_gpus(self) -> int | None:
        """GPUs this hub can hand out, or None when it cannot tell."""
        return None

    async def gpu_availability(self) -> GPUAvailability | None:
        """Free/total GPUs and the queue, for the spawn form; None when unknown."""
        return None

    async def check_gpu_quota(self, count: int) -> None:
        """Raise WorkspaceError (403) if ``count`` more GPUs would exceed a quota."""

    # -- profiles and user options -------------------------------------------------------

    def _user_groups(self) -> list[str]:
        return sorted(g.name for g in getattr(self.user, "groups", []) or [])

    async def _parsed_profiles(self) -> tuple[Profile, ...]:
        total: int | None = None
        if any(int(p.get("gpus", 0) or 0) > 0 for p in self.profiles if isinstance(p, dict)):
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
        selected = None
        previous = self.orm_spawner.user_options if self.orm_spawner is not None else None
        if isinstance(previous, dict) and isinstance(previous.get("profile"), str):
            selected = previous["profile"]
        if selected not in {p.slug for p in profiles}:
            selected = default_profile(profiles).slug if profiles else None
        gpus = GPUAvailability("no GPUs", 0, 0, 0)
        if any(p.gpus for p in profiles):
            gpus = await self.gpu_availability() or gpus
        return form.render_form(
            profiles,
            selected=selected,
            gpu_summary=gpus.summary,
            free_gpus=gpus.free,
            total_gpus=gpus.total,
            queue_length=gpus.queue_length,
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

    async def _apply_profile(self, user_options: Any) -> None:
        """Validate what the user asked for (form or REST API) and apply their profile."""
        if not self.profiles:
            if user_options:
                raise WorkspaceError(
                    "This hub has no workspace profiles; start without options.",
                    reason="user_options",
                )
            return
        profiles = await self._visible_profiles()
        try:
            profile = resolve_user_options(profiles, user_options or {})
        except UserOptionsError as e:
            raise WorkspaceError(str(e), reason="user_options") from None
        self._profile = profile
        self.profile_slug = profile.slug
        # Start from the configured values each time, so a profile's override never leaks
        # into the next spawn of this server with another profile.
        base = self._configured
        self.gpu_count = profile.gpus
        self.gpu_device_ids = []
        self.all_gpus = False
        self.image = profile.image or (self.gpu_image if profile.gpus else "") or base["image"]
        self.mem_limit = profile.mem_limit if profile.mem_limit is not None else base["mem_limit"]
        self.cpu_limit = profile.cpu_limit if profile.cpu_limit is not None else base["cpu_limit"]
        self.shm_size = profile.shm_size if profile.shm_size is not None else base["shm_size"]
        if profile.gpus:
            # Refuse over-quota requests before anything waits or is created.
            await self.check_gpu_quota(profile.gpus)

    def user_gpu_limit(self) -> tuple[int | None, str]:
        """The per-user GPU limit that applies to this user, and whose limit it is."""
        groups = self._user_groups()
        by_group = {g: n for g, n in self.gpu_quota_per_user_by_group.items() if g in groups}
        if by_group:
            group = max(by_group, key=lambda g: by_group[g])
            return by_group[group], f"members of group '{group}'"
        return self.gpu_quota_per_user, "each user"

    # -- sizes, labels, progress, readiness ------------------------------------------

    def effective_shm_size(self) -> int:
        mem_limit = self.mem_limit
        if isinstance(mem_limit, str):
            mem_limit = parse_size(mem_limit, option=self._opt("mem_limit"))
        return derive_shm_size(
            explicit=self.shm_size, mem_limit=mem_limit or None, default=self.default_shm_size
        )

    def workspace_labels(
        self, gpu_ids: list[str], *, template_escape: bool = True
    ) -> dict[str, str]:
        """Labels that identify the server and record its GPUs and profile on the object.

        ``template_escape=False`` gives the literal values, for labels that go to the engine
        without passing through DockerSpawner's templating (Swarm services).
        """
        labels = {
            LABEL_USER: self.user.name,
            LABEL_SERVER: self.name or "",
            LABEL_PROFILE: self.profile_slug,
            LABEL_GPUS: ",".join(gpu_ids),
            LABEL_PREFIX_NAME: self.prefix,
        }
        if not template_escape:
            return labels
        # DockerSpawner formats every string of extra_create_kwargs as a template; doubled
        # braces come out as the literal user and server names.
        return {k: v.replace("{", "{{").replace("}", "}}") for k, v in labels.items()}

    def _report(self, message: str, progress: int | None = None) -> None:
        event: dict[str, Any] = {"message": message}
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
                status = await super().poll()  # type: ignore[misc]
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
