"""GPUDockerSpawner: DockerSpawner with exclusive GPUs, profiles, shm sizing and safe defaults.

This is the only module of the package that talks to Docker. Everything it decides comes from
the pure modules (``devices``, ``sizes``, ``profiles``, ``allocator`` via ``pool``); the
Docker-facing settings are built in one place, :meth:`GPUDockerSpawner.workspace_host_config`.

State kept in the hub database (``get_state``), in addition to DockerSpawner's:

- ``gpu_ids``: the canonical ids of the GPUs this server holds, so they are re-adopted after a
  hub restart;
- ``profile``: the slug of the profile the server was started with.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator, Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import docker
from dockerspawner import DockerSpawner
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import (
    Bool,
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

from . import form
from .allocator import AllocationError
from .devices import (
    DEFAULT_CAPABILITIES,
    DeviceRequestError,
    build_device_request,
    claimed_gpus,
    parse_capabilities,
    validate_device_id,
)
from .errors import WorkspaceError
from .inventory import Inventory, InventoryError, discover_nvml, parse_static_inventory
from .pool import GPUPool, Observation, Quota
from .profiles import (
    Profile,
    ProfileError,
    UserOptionsError,
    default_profile,
    parse_profiles,
    resolve_user_options,
    visible_profiles,
)
from .sizes import SizeError, derive_shm_size, parse_size

LABEL_PREFIX = "io.gpu-workspaces"
LABEL_GPUS = f"{LABEL_PREFIX}.gpus"
LABEL_USER = f"{LABEL_PREFIX}.user"
LABEL_SERVER = f"{LABEL_PREFIX}.server"
LABEL_PROFILE = f"{LABEL_PREFIX}.profile"
LABEL_PREFIX_NAME = f"{LABEL_PREFIX}.prefix"

_INVENTORIES: dict[str, Inventory] = {}
_POOLS: dict[tuple[str, tuple[str, ...]], GPUPool] = {}


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` wins; nested dicts are merged rather than replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class GPUDockerSpawner(DockerSpawner):
    """A DockerSpawner for shared GPU servers: each GPU to one user, chosen through profiles."""

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

    # -- inventory, profiles, allocation -------------------------------------------------

    gpu_inventory = Union(
        [List(), Int(), Unicode()],
        default_value=[],
        config=True,
        help="""The GPUs this hub hands out. Empty (default): discover them through NVML.

        Otherwise a static list, for hubs that cannot see the driver and for tests: a number
        of GPUs ("4"), a list of ids (["0", "1"] or UUIDs), or a list of objects
        ``{"id": "GPU-...", "name": "A100", "memory": "80g"}``; JSON text of those works too.
        """,
    )

    @validate("gpu_inventory")
    def _validate_inventory(self, proposal: dict[str, Any]) -> Any:
        value = proposal["value"]
        if value not in ([], ""):
            try:
                parse_static_inventory(value, option=self._opt("gpu_inventory"))
            except InventoryError as e:
                raise TraitError(str(e)) from None
        return value

    profiles = List(
        Dict(),
        config=True,
        help="""Workspace profiles a user picks from in the spawn form (or REST API
        ``{"profile": "<slug>"}``). Each: slug, display_name, description, gpus, and optional
        image, mem_limit, cpu_limit, shm_size, default, groups. Empty: no form, the static
        ``gpu_count``/``image``/limits apply. See ``spawner.profiles.DEFAULT_PROFILES``.
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
        return proposal["value"]

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

    # -- network, ports, readiness, hardening --------------------------------------------

    host_port_mode = Bool(
        False,
        config=True,
        help="""Publish each server's port on the host (bound to ``host_ip``, 127.0.0.1 by
        default) instead of reaching it over the Docker network. Off by default: no port of a
        notebook container is published.""",
    )

    @default("use_internal_ip")
    def _default_use_internal_ip(self) -> bool:
        return not self.host_port_mode

    @validate("host_ip")
    def _validate_host_ip(self, proposal: dict[str, Any]) -> str:
        if proposal["value"] in ("0.0.0.0", "::", ""):
            raise TraitError(
                f"{self._opt('host_ip')}: publishing notebook ports on all interfaces "
                f"({proposal['value']!r}) would let anyone on the network reach them; "
                "use 127.0.0.1 (the default) or one private address"
            )
        return str(proposal["value"])

    @default("remove")
    def _default_remove(self) -> bool:
        # Homes live in volumes; removing the container also revokes its API token.
        return True

    @default("prefix")
    def _default_prefix(self) -> str:
        return "gpuws"

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
        if value.split(":")[0] in ("0", "root"):
            raise TraitError(f"{self._opt('container_user')}: notebooks must not run as root")
        return value

    cap_add = List(
        Unicode(),
        config=True,
        help="""Linux capabilities kept after dropping ALL (default none: the notebook runs
        as an unprivileged user and needs none).""",
    )
    pids_limit = Int(
        4096,
        min=0,
        config=True,
        help="Most processes/threads in one container (fork bombs stop here); 0: unlimited.",
    )
    nofile_limit = Int(
        16384,
        min=0,
        config=True,
        help="""Open-files ulimit (soft and hard) of each container; 0 keeps the engine's.
        PyTorch shares tensors between DataLoader workers through file descriptors, so the
        usual 1024 is too few; it cannot exceed dockerd's own hard limit.""",
    )
    docker_threads = Int(
        8,
        min=1,
        config=True,
        help="""Threads for Docker API calls. Stock DockerSpawner uses one for all servers,
        which serialises concurrent spawns.""",
    )

    _pool_executor: ClassVar[ThreadPoolExecutor | None] = None

    # -- life cycle state ------------------------------------------------------------------

    gpu_ids = List(Unicode(), help="GPUs this server holds (state, not config).")
    profile_slug = Unicode("", help="Profile this server runs (state, not config).")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._profile: Profile | None = None
        self._progress_events: list[dict[str, Any]] = []
        self._progress_changed = asyncio.Event()
        self._check_gpu_options()
        self._configured = {
            name: getattr(self, name) for name in ("image", "mem_limit", "cpu_limit", "shm_size")
        }

    def _opt(self, name: str) -> str:
        return f"{self.__class__.__name__}.{name}"

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

    @property
    def executor(self) -> ThreadPoolExecutor:
        cls = GPUDockerSpawner
        if cls._pool_executor is None:
            cls._pool_executor = ThreadPoolExecutor(
                self.docker_threads, thread_name_prefix="gpuws-docker"
            )
        return cls._pool_executor

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.gpu_ids = list(state.get("gpu_ids", []))
        self.profile_slug = state.get("profile", "")

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self.gpu_ids:
            state["gpu_ids"] = list(self.gpu_ids)
        if self.profile_slug:
            state["profile"] = self.profile_slug
        return state

    def clear_state(self) -> None:
        super().clear_state()
        self.gpu_ids = []
        self.profile_slug = ""
        self._profile = None

    # -- inventory and pool ----------------------------------------------------------------

    async def gpu_inventory_resolved(self) -> Inventory:
        """The inventory, discovered once per hub process (NVML) or parsed from config."""
        key = repr(self.gpu_inventory)
        if key not in _INVENTORIES:
            if self.gpu_inventory in ([], ""):
                loop = asyncio.get_running_loop()
                inventory = await loop.run_in_executor(self.executor, discover_nvml)
            else:
                inventory = parse_static_inventory(
                    self.gpu_inventory, option=self._opt("gpu_inventory")
                )
            _INVENTORIES[key] = inventory
        return _INVENTORIES[key]

    async def gpu_pool(self) -> GPUPool:
        """The pool shared by every spawner of this hub on the same Docker engine."""
        inventory = await self.gpu_inventory_resolved()
        key = (str(self.client.base_url), inventory.ids())
        if key not in _POOLS:
            claims_cache: dict[str, Any] = {}

            def observe_running_claims() -> Observation:
                return self._observe_running_claims(inventory, claims_cache)

            async def observe() -> Observation:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self.executor, observe_running_claims)

            _POOLS[key] = GPUPool(inventory, observe)
        return _POOLS[key]

    def _observe_running_claims(self, inventory: Inventory, cache: dict[str, Any]) -> Observation:
        """GPU ids held by every live container on the engine, ours or started by hand.

        Device requests never change after create, so each container is inspected once.
        """
        live = self.client.containers(filters={"status": ["running", "paused", "restarting"]})
        busy: set[str] = set()
        seen = set()
        names = set()
        for summary in live:
            container_id = summary["Id"]
            seen.add(container_id)
            names.update(name.lstrip("/") for name in summary.get("Names") or [])
            claim = cache.get(container_id)
            if claim is None:
                try:
                    info = self.client.inspect_container(container_id)
                except docker.errors.NotFound:
                    continue
                claim = claimed_gpus(info.get("HostConfig") or {}, info["Config"].get("Env"))
                cache[container_id] = claim
            busy |= inventory.resolve_claim(claim)
        for gone in set(cache) - seen:
            del cache[gone]
        return Observation(frozenset(busy), frozenset(names))

    # -- profiles and user options -------------------------------------------------------

    def _user_groups(self) -> list[str]:
        return sorted(g.name for g in getattr(self.user, "groups", []) or [])

    async def _parsed_profiles(self) -> tuple[Profile, ...]:
        total: int | None = None
        if any(int(p.get("gpus", 0) or 0) > 0 for p in self.profiles if isinstance(p, dict)):
            try:
                total = len(await self.gpu_inventory_resolved())
            except InventoryError:
                total = None  # GPU profiles are refused at spawn; CPU ones still work
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
            return super()._default_options_form()
        return GPUDockerSpawner._render_options_form

    async def _render_options_form(self) -> str:
        profiles = await self._visible_profiles()
        selected = None
        previous = self.orm_spawner.user_options if self.orm_spawner is not None else None
        if isinstance(previous, dict) and isinstance(previous.get("profile"), str):
            selected = previous["profile"]
        if selected not in {p.slug for p in profiles}:
            selected = default_profile(profiles).slug if profiles else None
        free = total = queue = 0
        summary = "no GPUs"
        if any(p.gpus for p in profiles):
            try:
                pool = await self.gpu_pool()
            except InventoryError as e:
                self.log.warning("GPU inventory unavailable for the spawn form: %s", e)
            else:
                snapshot = await pool.refresh()
                free, total, queue = snapshot.free, snapshot.total, snapshot.queue_length
                summary = pool.inventory.describe()
        return form.render_form(
            profiles,
            selected=selected,
            gpu_summary=summary,
            free_gpus=free,
            total_gpus=total,
            queue_length=queue,
            template_paths=self.form_template_paths,
        )

    form_template_paths = List(
        Unicode(),
        config=True,
        help="Folders searched first for ``spawn_form.html.j2``, to restyle the spawn form.",
    )

    @default("options_from_form")
    def _default_options_from_form(self) -> Callable[..., dict[str, Any]]:
        if not self.profiles:
            return super()._default_options_from_form()  # type: ignore[no-any-return]
        return staticmethod(form.options_from_form)  # type: ignore[return-value]

    @default("apply_user_options")
    def _default_apply_user_options(self) -> Any:
        return GPUDockerSpawner._apply_profile

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
            pool = await self._pool_or_refuse()
            try:
                pool.check_quota(self.user.name, self._user_groups(), profile.gpus, self._quota())
            except AllocationError as e:
                raise WorkspaceError(str(e), reason="quota", status_code=403) from None

    def _quota(self) -> Quota:
        groups = self._user_groups()
        by_group = {g: n for g, n in self.gpu_quota_per_user_by_group.items() if g in groups}
        if by_group:
            group = max(by_group, key=lambda g: by_group[g])
            return Quota(by_group[group], f"members of group '{group}'", self.gpu_quota_per_group)
        return Quota(self.gpu_quota_per_user, "each user", self.gpu_quota_per_group)

    async def _pool_or_refuse(self) -> GPUPool:
        try:
            return await self.gpu_pool()
        except InventoryError as e:
            raise WorkspaceError(
                f"This hub cannot see any GPU ({e}); pick a CPU profile or tell an admin.",
                reason="gpu-inventory",
                status_code=503,
            ) from None

    # -- the Docker-facing settings, in one place -----------------------------------------

    def effective_shm_size(self) -> int:
        mem_limit = self.mem_limit
        if isinstance(mem_limit, str):
            mem_limit = parse_size(mem_limit, option=self._opt("mem_limit"))
        return derive_shm_size(
            explicit=self.shm_size, mem_limit=mem_limit or None, default=self.default_shm_size
        )

    def workspace_host_config(self, gpu_ids: Collection[str] | None) -> dict[str, Any]:
        """Host-config fragment for this server: GPUs, /dev/shm, limits, hardening.

        ``gpu_ids`` are the allocated ids (None: use the static request as configured).
        Admin ``extra_host_config`` is merged on top, so each default stays overridable.
        """
        if gpu_ids:
            request = build_device_request(
                device_ids=list(gpu_ids), capabilities=self.gpu_capabilities
            )
        else:
            request = build_device_request(
                count=self.gpu_count or None,
                device_ids=self.gpu_device_ids or None,
                all_gpus=self.all_gpus,
                capabilities=self.gpu_capabilities,
            )
        config: dict[str, Any] = {
            "shm_size": self.effective_shm_size(),
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            "init": True,
        }
        if self.nofile_limit:
            config["ulimits"] = [
                {"name": "nofile", "soft": self.nofile_limit, "hard": self.nofile_limit}
            ]
        if self.cap_add:
            config["cap_add"] = list(self.cap_add)
        if self.pids_limit:
            config["pids_limit"] = self.pids_limit
        if request is not None:
            # Plain snake_case dicts: DockerSpawner re-renders this fragment as templates,
            # which would turn docker-py's dict subclasses into unusable CamelCase dicts.
            config["device_requests"] = [request]
        return config

    def workspace_labels(self) -> dict[str, str]:
        labels = {
            LABEL_USER: self.user.name,
            LABEL_SERVER: self.name or "",
            LABEL_PROFILE: self.profile_slug,
            LABEL_GPUS: ",".join(self.gpu_ids),
            LABEL_PREFIX_NAME: self.prefix,
        }
        # DockerSpawner formats every string of extra_create_kwargs as a template; doubled
        # braces come out as the literal user and server names.
        return {k: v.replace("{", "{{").replace("}", "}}") for k, v in labels.items()}

    async def create_object(self) -> dict[str, Any]:
        admin_host_config = self._eval_if_callable(self.extra_host_config)
        if asyncio.iscoroutine(admin_host_config):
            admin_host_config = await admin_host_config
        admin_create_kwargs = self._eval_if_callable(self.extra_create_kwargs)
        if asyncio.iscoroutine(admin_create_kwargs):
            admin_create_kwargs = await admin_create_kwargs
        ours_create: dict[str, Any] = {"labels": self.workspace_labels()}
        if self.container_user:
            ours_create["user"] = self.container_user
        saved = self.extra_host_config, self.extra_create_kwargs
        self.extra_host_config = _deep_merge(
            self.workspace_host_config(self.gpu_ids or None), admin_host_config or {}
        )
        self.extra_create_kwargs = _deep_merge(ours_create, admin_create_kwargs or {})
        try:
            return await super().create_object()  # type: ignore[no-any-return]
        finally:
            self.extra_host_config, self.extra_create_kwargs = saved

    # -- start, poll, stop ---------------------------------------------------------------

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

    @property
    def gpu_holder(self) -> str:
        """The pool's key for this server: its container name, unique per user and server."""
        return self.object_name

    async def _claim_gpus(self) -> list[str]:
        """Pick this server's GPUs (waiting in the queue if needed); [] for a CPU server."""
        if self.gpu_count == 0 and not self.gpu_device_ids and not self.all_gpus:
            return []
        try:
            pool = await self.gpu_pool()
        except InventoryError as e:
            if self.gpu_count:
                raise WorkspaceError(
                    f"This hub cannot see any GPU ({e}); tell an admin.",
                    reason="gpu-inventory",
                    status_code=503,
                ) from None
            # Explicit ids / all GPUs without an inventory: pass through untracked.
            self.log.warning("No GPU inventory (%s); GPUs of %s are not tracked", e, self._log_name)
            return []
        if self.gpu_count:
            plural = "GPU" if self.gpu_count == 1 else "GPUs"

            def report(ahead: int, count: int) -> None:
                self._report(
                    f"Waiting for {count} {plural}, "
                    f"{ahead} request{'s' if ahead != 1 else ''} ahead of you"
                )

            try:
                ids = await pool.acquire(
                    self.gpu_holder,
                    self.gpu_count,
                    user=self.user.name,
                    groups=self._user_groups(),
                    quota=self._quota(),
                    timeout=self.gpu_wait_timeout,
                    report=report,
                )
            except AllocationError as e:
                status = 403 if type(e).__name__ == "QuotaExceeded" else 503
                raise WorkspaceError(str(e), reason="gpu-unavailable", status_code=status) from None
            return list(ids)
        wanted = pool.inventory.ids() if self.all_gpus else self.gpu_device_ids
        try:
            ids = await pool.claim_exact(
                self.gpu_holder, wanted, user=self.user.name, groups=self._user_groups()
            )
        except AllocationError as e:
            raise WorkspaceError(str(e), reason="gpu-unavailable", status_code=503) from None
        return list(ids)

    def _release_gpus(self) -> None:
        for pool in _POOLS.values():
            released = pool.release(self.gpu_holder)
            if released:
                self.log.info("Released GPUs %s of %s", ",".join(released), self._log_name)
        self.gpu_ids = []

    async def start(self) -> tuple[str, int]:
        self._progress_events = []
        if self._profile is None and self.profiles:
            # JupyterHub < 5.3 has no apply_user_options hook
            await self._apply_profile(self.user_options or {})
        try:
            self.gpu_ids = await self._claim_gpus()
            if self.gpu_ids:
                self._report(f"Assigned GPU {', '.join(self.gpu_ids)}", progress=30)
            self._report("Creating the container", progress=40)
            ip_port = await super().start()
            if self.gpu_ids:
                (await self.gpu_pool()).mark_running(self.gpu_holder)
            self._report("Starting the notebook server", progress=70)
            if self.wait_until_ready:
                await self._wait_until_answering(*ip_port)
            self._report("Server is up", progress=95)
            return ip_port  # type: ignore[no-any-return]
        except BaseException:
            self._release_gpus()
            raise

    async def _wait_until_answering(self, ip: str, port: int) -> None:
        """Poll the server's API until it answers, or fail with why it never did."""
        url = f"http://{ip}:{port}{self.server.base_url}api" if self.server else None
        if url is None:
            return
        client = AsyncHTTPClient()
        deadline = time.monotonic() + self.http_timeout
        next_state_check = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                await client.fetch(HTTPRequest(url, request_timeout=2.0, follow_redirects=False))
                return
            except HTTPClientError as e:
                if e.code < 500 and e.code != 599:
                    return
            except OSError:
                pass
            if time.monotonic() > next_state_check:
                next_state_check = time.monotonic() + 1.0
                status = await super().poll()
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

    async def poll(self) -> int | str | None:
        status = await super().poll()
        if status is None:
            if self.gpu_ids:
                await self._readopt_gpus()
        elif self.gpu_ids:
            self._release_gpus()
        return status  # type: ignore[no-any-return]

    async def _readopt_gpus(self) -> None:
        """After a hub restart the ledger is empty: take back what this server holds."""
        try:
            pool = await self.gpu_pool()
        except InventoryError:
            return
        if tuple(pool.ledger.held_by(self.gpu_holder)) == tuple(self.gpu_ids):
            return
        try:
            pool.restore(
                self.gpu_holder, self.gpu_ids, user=self.user.name, groups=self._user_groups()
            )
        except AllocationError as e:
            self.log.error("GPU conflict re-adopting %s: %s", self._log_name, e)

    async def stop(self, now: bool = False) -> None:
        try:
            await super().stop(now=now)
        finally:
            self._release_gpus()
