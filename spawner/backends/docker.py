"""GPUDockerSpawner: DockerSpawner with exclusive GPUs, profiles, shm sizing and safe defaults.

The lifecycle (start, poll, stop) is :class:`~spawner.backends.base.WorkspaceMixin`'s; this
module supplies its hooks for one Docker engine: claiming GPUs from the pool (which reads the
runtime's engine observer), the container built by the pure builders from the spawn's plan
(:func:`spawner.core.builders.make_create_kwargs`), and the clean-up of a failed start.

State kept in the hub database (``get_state``), in addition to DockerSpawner's and
:class:`~spawner.backends.base.WorkspaceMixin`'s ``profile``:

- ``gpu_ids``: the canonical ids of the GPUs this server holds, so they are re-adopted after a
  hub restart.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
from collections.abc import Callable, Coroutine, Iterable
from datetime import UTC
from typing import TYPE_CHECKING, Any

import docker
from dockerspawner import DockerSpawner
from traitlets import Bool, Enum, Int, List, TraitError, Unicode, Union, default, validate

from spawner.backends.base import GPUAvailability, WorkspaceMixin
from spawner.backends.errors import WorkspaceError, docker_trouble, start_failure
from spawner.core import hardening
from spawner.core.allocator import AllocationError, QuotaExceeded
from spawner.core.builders import BuildError, ContainerInputs, make_create_kwargs
from spawner.core.devices import (
    GPU_MECHANISMS,
    NVIDIA_RUNTIME,
    ClaimedGPUs,
    claimed_gpus,
)
from spawner.core.inventory import Inventory, InventoryError, parse_static_inventory
from spawner.core.labels import LABEL_PREFIX_NAME
from spawner.core.names import escape_name
from spawner.core.pool import GPUPool, Observation, QueueLimitReached
from spawner.runtime.gpus import resolve_inventory, uses_nvml
from spawner.runtime.metrics import count_allocation, timed_gpu_wait
from spawner.runtime.observer import LIVE_STATES, ContainerRecord, EngineObserver, created_ns

# How often a spawn tries other GPUs after another hub's container got its GPUs first.
GPU_RACE_ATTEMPTS = 3
# How long a reader waits for the engine observer to catch up before asking Docker itself.
OBSERVER_WAIT = 5.0


def _form_refusal(error: BaseException) -> WorkspaceError | None:
    """The spawn form's 503 when Docker cannot count the free GPUs."""
    return docker_trouble(error, cannot="no server can start and the free GPUs cannot be counted")


def running_claims(records: Iterable[ContainerRecord], inventory: Inventory) -> Observation:
    """GPU ids held by every live container the observer sees, ours or started by hand."""
    busy: set[str] = set()
    names: set[str] = set()
    for record in records:
        if record.live:
            names.add(record.name)
            if record.claim is not None:
                busy |= inventory.resolve_claim(record.claim)
    return Observation(frozenset(busy), frozenset(names))


# DockerSpawner is Any to mypy (dockerspawner ships no types), hence the ignore[misc]
class GPUDockerSpawner(WorkspaceMixin, DockerSpawner):  # type: ignore[misc]
    """A DockerSpawner for shared GPU servers: each GPU to one user, chosen through profiles."""

    if TYPE_CHECKING:
        # DockerSpawner's traits and properties (dockerspawner ships no types)
        extra_host_config: dict[str, Any] | Callable[..., Any]
        extra_create_kwargs: dict[str, Any] | Callable[..., Any]
        object_name: str

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
        if not uses_nvml(value):
            try:
                parse_static_inventory(value, option=self._opt("gpu_inventory"))
            except InventoryError as e:
                raise TraitError(str(e)) from None
        return value

    hub_instance = Unicode(
        "",
        config=True,
        help="""An id of this hub's own, kept in its state folder (jupyterhub_config.py makes
        it). Every container the hub creates carries it (label
        ``io.gpu-workspaces.hub-instance``), and the hub refuses to start while live
        containers with its container prefix carry another one: a second hub with the same
        prefix on one engine would take over or remove the first one's servers. Empty: no
        check.""",
    )

    gpu_mechanism = Enum(
        list(GPU_MECHANISMS),
        default_value="device-requests",
        config=True,
        help="""How a GPU server gets its GPUs from Docker (every way, the container also
        carries ``NVIDIA_VISIBLE_DEVICES`` set to exactly its GPU ids):

        - ``device-requests`` (default): a device request to Docker's nvidia driver, as
          ``docker run --gpus device=0`` does (NVIDIA Container Toolkit hosts);
        - ``nvidia-runtime``: the container runs under the ``nvidia`` runtime and the ids go
          in ``NVIDIA_VISIBLE_DEVICES`` (nvidia-docker2 hosts, ``--runtime=nvidia``);
        - ``cdi``: a CDI device request, ``nvidia.com/gpu=<id>`` (Docker 25 and later with
          CDI enabled, the way NVIDIA now documents).

        ``python -m spawner doctor`` tells which one a host supports.""",
    )

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

    @default("escape")
    def _default_escape(self) -> Any:
        # DockerSpawner's "safe" escaping, bounded to 63 characters (spawner/core/names.py).
        return escape_name

    def template_namespace(self) -> dict[str, Any]:
        namespace: dict[str, Any] = super().template_namespace()
        # DockerSpawner lower-cases server names before escaping, so "Work" and "work"
        # would share one container; the escape is lower-case and unique by itself.
        namespace["servername"] = self.escape(getattr(self, "name", "") or "")
        return namespace

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check_refused_settings()
        self._use_unambiguous_oauth_client_id()

    def _use_unambiguous_oauth_client_id(self) -> None:
        """JupyterHub names a server's OAuth client ``jupyterhub-user-{user}-{server}``, so the
        default server of user ``a-b`` and server ``b`` of user ``a`` share one client: the
        second to start overwrites the first's client and fails with a 500. Escaped names
        (``-`` only in escapes, ``--`` between user and server) cannot collide. A server
        that already has a client (running, e.g. after a hub restart) keeps it."""
        registered = getattr(self.orm_spawner, "oauth_client_id", None)
        if registered:
            self.oauth_client_id = registered
            return
        user = getattr(self.user, "name", None)
        if not self.oauth_client_id or not isinstance(user, str):
            return
        client_id = f"jupyterhub-user-{escape_name(user)}"
        if self.name:
            client_id += f"--{escape_name(self.name)}"
        self.oauth_client_id = client_id

    def refusal_rules(self) -> hardening.Allowed:
        """What the allow-list lets this hub's containers name (spawner/core/hardening.py)."""
        runtimes = hardening.DEFAULT_RUNTIMES
        if self.gpu_mechanism == "nvidia-runtime":
            runtimes |= {NVIDIA_RUNTIME}
        return hardening.Allowed(
            runtimes=runtimes,
            docker_root=self.known_docker_root(),
        )

    def backend_setting_problems(self, allowed: hardening.Allowed) -> list[str]:
        """The single-host settings' problems: ``mounts`` and the admin's
        ``extra_host_config`` / ``extra_create_kwargs`` (callables are checked when the
        container is built, :meth:`_create_container`)."""
        problems = hardening.unsafe_mounts(self.mounts, self._opt("mounts"), allowed)
        problems += self._admin_problems(self.extra_host_config, self.extra_create_kwargs, allowed)
        return problems

    def _admin_problems(
        self, host_config: Any, create_kwargs: Any, allowed: hardening.Allowed
    ) -> list[str]:
        """Problems of the admin's ``extra_host_config`` / ``extra_create_kwargs`` (as
        given, or as their callables returned them), each named after its option."""
        problems = []
        if not callable(host_config):
            problems += hardening.unsafe_host_config(
                host_config or {}, self._opt("extra_host_config"), allowed
            )
        if not callable(create_kwargs):
            problems += hardening.unsafe_create_kwargs(
                create_kwargs or {}, self._opt("extra_create_kwargs"), allowed
            )
        return problems

    # -- inventory and pool ----------------------------------------------------------------

    async def gpu_inventory_resolved(self) -> Inventory:
        """The inventory, discovered once per hub process (NVML) or parsed from config."""
        key = repr(self.gpu_inventory)
        inventories = self.runtime.inventories
        if key not in inventories:
            loop = asyncio.get_running_loop()
            inventories[key] = await loop.run_in_executor(
                self.executor,
                lambda: resolve_inventory(self.gpu_inventory, option=self._opt("gpu_inventory")),
            )
        return inventories[key]

    def observer(self) -> EngineObserver:
        """The one observer of this hub's engine: a cache of its containers, fed by events."""
        kwargs = self.client_kwargs_resolved()
        observer: EngineObserver = self.runtime.observer(
            str(self.client.base_url),
            lambda: EngineObserver(lambda: docker.APIClient(**kwargs), name="docker"),
        )
        return observer

    async def synced_observer(self) -> EngineObserver | None:
        """The observer once it follows the engine; None while it cannot (readers then ask
        Docker themselves, which also gives the real error while the engine is down)."""
        observer = self.observer()
        if observer.synced:
            return observer
        # Only just started: its first list is under way. Later, an observer that lost the
        # engine is not waited for (the reader's own call says what is wrong at once).
        first_sync = OBSERVER_WAIT - self.runtime.observer_age(str(self.client.base_url))
        if first_sync > 0 and await observer.wait_synced(first_sync):
            return observer
        return None

    async def gpu_pool(self) -> GPUPool:
        """The pool shared by every spawner of this hub on the same Docker engine."""
        inventory = await self.gpu_inventory_resolved()
        key = (str(self.client.base_url), inventory.ids())
        pools = self.runtime.pools
        if key not in pools:
            fallback_cache: dict[str, Any] = {}

            async def observe() -> Observation:
                observer = await self.synced_observer()
                if observer is not None:
                    seen = running_claims(observer.live(), inventory)
                    return await self._confirm_missing(seen, pools[key], inventory)
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(
                    self.executor, self._observe_running_claims, inventory, fallback_cache
                )

            pools[key] = GPUPool(inventory, observe)
            self.runtime.sources[("docker", key)] = pools[key]
        return pools[key]

    async def _confirm_missing(
        self, seen: Observation, pool: GPUPool, inventory: Inventory
    ) -> Observation:
        """The pool frees the GPUs of a running server whose container an observation lacks.
        The observer may lag a moment behind a container that was just started, so each
        such container is asked about before its GPUs could go (none at rest)."""
        busy, live = set(seen.busy), set(seen.live)
        for holder in pool.running_holders():
            if holder in live:
                continue
            try:
                info = await self.docker("inspect_container", holder)
            except docker.errors.NotFound:
                continue  # gone indeed: its GPUs are free
            if (info.get("State") or {}).get("Status") in LIVE_STATES:
                live.add(holder)
                claim = claimed_gpus(
                    info.get("HostConfig") or {},
                    (info.get("Config") or {}).get("Env"),
                    default_runtime=self.observer().default_runtime,
                )
                busy |= inventory.resolve_claim(claim)
        return Observation(frozenset(busy), frozenset(live))

    async def prepare_gpu_source(self) -> GPUPool | None:
        self.observer()  # followed from the start: the polls after a hub restart read it
        try:
            return await self.gpu_pool()
        except InventoryError as e:
            self.log.info("No GPU pool: %s", e)
            return None

    def _live_containers(self) -> list[dict[str, Any]]:
        # "created": a container whose start is still under way (or that someone created
        # and will start) is given its GPUs at start, so it holds them already.
        live: list[dict[str, Any]] = self.client.containers(
            filters={"status": ["created", "running", "paused", "restarting"]}
        )
        return live

    def _claim_of(self, container_id: str, cache: dict[str, Any]) -> ClaimedGPUs | None:
        """What a container holds (None: it is gone); device requests never change after
        create, so each container is inspected once."""
        claim: ClaimedGPUs | None = cache.get(container_id)
        if claim is not None:
            return claim
        if "default_runtime" not in cache:
            cache["default_runtime"] = str(self.client.info().get("DefaultRuntime") or "runc")
        try:
            info = self.client.inspect_container(container_id)
        except docker.errors.NotFound:
            return None
        claim = claimed_gpus(
            info.get("HostConfig") or {},
            info["Config"].get("Env"),
            default_runtime=cache["default_runtime"],
        )
        cache[container_id] = claim
        return claim

    def _observe_running_claims(self, inventory: Inventory, cache: dict[str, Any]) -> Observation:
        """Without the observer (it cannot follow the engine): list and inspect."""
        busy: set[str] = set()
        seen: set[str] = set()
        names: set[str] = set()
        for summary in self._live_containers():
            container_id = summary["Id"]
            seen.add(container_id)
            names.update(name.lstrip("/") for name in summary.get("Names") or [])
            claim = self._claim_of(container_id, cache)
            if claim is not None:
                busy |= inventory.resolve_claim(claim)
        for gone in set(cache) - seen - {"default_runtime"}:
            del cache[gone]
        return Observation(frozenset(busy), frozenset(names))

    # -- profiles and user options -------------------------------------------------------

    # -- the WorkspaceMixin hooks ----------------------------------------------------------

    async def total_gpus(self) -> int | None:
        try:
            return len(await self.gpu_inventory_resolved())
        except InventoryError:
            return None

    async def gpu_availability(self) -> GPUAvailability | None:
        """Free GPUs for the spawn form; a 503 with a sentence when Docker cannot tell."""
        try:
            pool = await self.gpu_pool()  # the first call makes the Docker client
            snapshot = await pool.refresh()
        except InventoryError as e:
            self.log.warning("GPU inventory unavailable for the spawn form: %s", e)
            return None
        except Exception as e:
            refusal = _form_refusal(e)
            if refusal is None:
                raise
            self.log.warning("Spawn form refused (503), Docker cannot tell the free GPUs: %s", e)
            raise refusal from None
        return GPUAvailability(
            pool.inventory.describe(), snapshot.free, snapshot.total, snapshot.queue_length
        )

    async def check_gpu_quota(self, count: int) -> None:
        pool = await self._pool_or_refuse()
        try:
            pool.check_quota(self.user.name, self._user_groups(), count, self.gpu_quota())
        except AllocationError as e:
            raise WorkspaceError(str(e), reason="quota", status_code=403) from None

    async def _pool_or_refuse(self) -> GPUPool:
        try:
            return await self.gpu_pool()
        except InventoryError as e:
            raise WorkspaceError(
                f"This hub cannot see any GPU ({e}); pick a CPU profile or tell an admin.",
                reason="gpu-inventory",
                status_code=503,
            ) from None
        except Exception as e:
            if explained := start_failure(e, engine=self.engine_words):
                raise explained from None
            raise

    # -- the container, built by the pure builders (spawner/core/builders.py) ------------

    def host_pid_max(self) -> int | None:
        try:
            with open("/proc/sys/kernel/pid_max") as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def container_inputs(self, command: list[str]) -> ContainerInputs:
        """What DockerSpawner works out for the container besides the plan."""
        return ContainerInputs(
            name=self.container_name,
            command=command,
            volume_mount_points=self.volume_mount_points,
            volume_binds=self.volume_binds,
            links=self.links,
            mount_binds=self.mount_binds,
            port=self.port,
            host_ip=None if self.use_internal_ip else self.host_ip,
            network_name=self.network_name,
            auto_remove=self.remove,
        )

    async def create_object(self) -> dict[str, Any]:
        """Create the container; with GPUs, make sure no other hub's container got them first.

        Two hubs on one engine each keep their own ledger and see the other's claim only once
        its container exists. So after creating ours (not yet started), the GPUs are checked
        against every other container: if one created earlier (ties: the smaller id) claims
        any of them, ours is removed and other GPUs are claimed. Both hubs apply the same
        rule, so exactly one container of such a pair keeps a GPU, and it starts alone.
        """
        self._report("Creating the container", progress=40)
        for _ in range(GPU_RACE_ATTEMPTS):
            obj = await self._create_container()
            if not self.gpu_ids:
                return obj
            inventory = await self.gpu_inventory_resolved()
            rival = await self._older_rival(inventory, obj["Id"])
            if rival is None:
                return obj
            self.log.warning(
                "GPU %s of %s also went to container %s, created before ours by another hub; "
                "trying other GPUs",
                ",".join(self.gpu_ids),
                self._log_name,
                rival,
            )
            await self.docker("remove_container", obj["Id"], force=True)
            self._release_gpus()
            self.gpu_ids = await self._claim_gpus()
            self._report(f"Assigned GPU {', '.join(self.gpu_ids)}", progress=35)
        raise WorkspaceError(
            "The GPUs this server was given were taken by another hub on this Docker engine, "
            f"{GPU_RACE_ATTEMPTS} times in a row. Nothing was started; try again.",
            reason="gpu-unavailable",
            status_code=503,
        )

    async def _older_rival(self, inventory: Inventory, own_id: str) -> str | None:
        """The name of a container created before ``own_id`` that claims one of our GPUs.

        Docker's events come in order, so once the observer has seen our own container's
        create, every container created before it is in its cache."""
        ours = inventory.canonical(self.gpu_ids)
        observer = await self.synced_observer()
        if observer is None or not await observer.wait_seen(own_id, OBSERVER_WAIT):
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self.executor, self._older_rival_asked, inventory, ours, own_id
            )
        own = observer.get(own_id)
        if own is None:
            return None
        own_key = (own.created_ns, own.id)
        for record in observer.live():
            if record.id == own_id or record.claim is None:
                continue
            if ours & inventory.resolve_claim(record.claim) and (
                (record.created_ns, record.id) < own_key
            ):
                return record.name
        return None

    def _older_rival_asked(
        self, inventory: Inventory, ours: frozenset[str], own_id: str
    ) -> str | None:
        """The same, asking Docker (while the observer cannot follow the engine)."""
        cache: dict[str, Any] = {}
        own_key: tuple[int, str] | None = None
        for summary in self._live_containers():
            claim = self._claim_of(summary["Id"], cache)
            if summary["Id"] == own_id or claim is None:
                continue
            if not ours & inventory.resolve_claim(claim):
                continue
            try:
                info = self.client.inspect_container(summary["Id"])
            except docker.errors.NotFound:
                continue
            if own_key is None:
                own_key = (created_ns(self.client.inspect_container(own_id)["Created"]), own_id)
            if (created_ns(info["Created"]), info["Id"]) < own_key:
                return str(info["Name"]).lstrip("/")
        return None

    async def _admin_dicts(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The admin's ``extra_host_config`` / ``extra_create_kwargs``, evaluated when they are
        callables and rendered as DockerSpawner renders them (user and server names)."""
        rendered = []
        for value in (self.extra_host_config, self.extra_create_kwargs):
            value = self._eval_if_callable(value)
            if asyncio.iscoroutine(value):
                value = await value
            rendered.append(dict(self._render_templates(value or {})))
        return rendered[0], rendered[1]

    async def _create_container(self) -> dict[str, Any]:
        admin_host_config, admin_create_kwargs = await self._admin_dicts()
        if not self.allow_host_access:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self.executor, self.docker_root_dir)
            # Settings given as callables are only known now (the rest was checked at
            # start-up): the same sentences, before anything is created.
            self._refuse_at_spawn(
                self._admin_problems(admin_host_config, admin_create_kwargs, self.refusal_rules())
            )
        plan = dataclasses.replace(self.plan, env=self.get_env())
        try:
            kwargs = make_create_kwargs(
                plan,
                self.container_inputs(await self.get_command()),
                admin_host_config=admin_host_config,
                admin_create_kwargs=admin_create_kwargs,
                owner=type(self).__name__,
            )
        except BuildError as e:
            self._refuse_at_spawn([str(e)])
            raise
        kwargs["host_config"] = self.client.create_host_config(**kwargs["host_config"])
        # docker() checks these final arguments against the allow-list
        created: dict[str, Any] = await self.docker("create_container", **kwargs)
        return created

    @property
    def gpu_holder(self) -> str:
        """The pool's key for this server: its container name, unique per user and server."""
        return self.object_name

    async def _claim_gpus(self) -> list[str]:
        """Pick this server's GPUs (waiting in the queue if needed); [] for a CPU server."""
        if not self.wants_gpus():
            return []
        try:
            pool = await self.gpu_pool()
        except InventoryError as e:
            if self.plan.gpu_count:
                raise WorkspaceError(
                    f"This hub cannot see any GPU ({e}); tell an admin.",
                    reason="gpu-inventory",
                    status_code=503,
                ) from None
            # Explicit ids / all GPUs without an inventory: pass through untracked.
            self.log.warning("No GPU inventory (%s); GPUs of %s are not tracked", e, self._log_name)
            return []
        if self.plan.gpu_count:
            return await self._wait_for_gpus(pool)
        wanted = pool.inventory.ids() if self.plan.all_gpus else self.plan.gpu_device_ids
        try:
            ids = await pool.claim_exact(
                self.gpu_holder,
                wanted,
                user=self.user.name,
                groups=self._user_groups(),
                server=self.name,
                profile=self.profile_slug,
            )
        except AllocationError as e:
            raise WorkspaceError(str(e), reason="gpu-unavailable", status_code=503) from None
        count_allocation(self.profile_slug)
        return list(ids)

    async def _wait_for_gpus(self, pool: GPUPool) -> list[str]:
        """``gpu_count`` free GPUs from the pool, first come first served (the queue)."""

        def report(ahead: int, count: int) -> None:
            self.report_wait(ahead, count, self.queue_estimate(pool.view(), ahead, count))

        try:
            with timed_gpu_wait():  # jupyterhub_gpu_wait_duration_seconds
                ids = await pool.acquire(
                    self.gpu_holder,
                    self.plan.gpu_count,
                    user=self.user.name,
                    groups=self._user_groups(),
                    quota=self.gpu_quota(),
                    timeout=self.gpu_wait_timeout,
                    report=report,
                    server=self.name,
                    profile=self.profile_slug,
                    max_waiting_per_user=self.gpu_queue_limit_per_user or None,
                )
            count_allocation(self.profile_slug)
        except AllocationError as e:
            # quotas (a user's or a group's) are refusals, not a shortage
            if isinstance(e, QuotaExceeded):
                status = 403
            elif isinstance(e, QueueLimitReached):
                status = 429
            else:
                status = 503
            raise WorkspaceError(str(e), reason="gpu-unavailable", status_code=status) from None
        return list(ids)

    def docker(self, method: str, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """DockerSpawner's Docker call in a worker thread, remembered until the thread ends.

        Cancelling the awaiting coroutine does not stop the thread: a ``create`` or ``start``
        can still land after a spawn was cancelled, so the clean-up waits for these.

        ``create_container`` gets its final arguments checked here, after every merge (ours,
        DockerSpawner's, the admin's, the profile's): whatever a merge let through, Docker
        never sees a key off the allow-list.
        """
        if method == "create_container" and not self.allow_host_access:
            self._refuse_at_spawn(
                hardening.unsafe_create_kwargs(
                    kwargs,
                    f"{type(self).__name__} final create_container arguments",
                    self.refusal_rules(),
                )
            )
        future = self.executor.submit(self._docker, method, *args, **kwargs)
        calls = self._calls_in_threads()
        calls.add(future)
        future.add_done_callback(calls.discard)
        return asyncio.wrap_future(future)

    def _calls_in_threads(self) -> set[concurrent.futures.Future[Any]]:
        calls: set[concurrent.futures.Future[Any]] | None = self.__dict__.get("_docker_calls")
        if calls is None:
            calls = self.__dict__["_docker_calls"] = set()
        return calls

    def _hand_over_gpus(self) -> list[tuple[GPUPool, str]]:
        """Move this server's claims to clean-up keys (see :meth:`GPUPool.hand_over`)."""
        keys = [(pool, pool.hand_over(self.gpu_holder)) for pool in self.runtime.pools.values()]
        self.gpu_ids = []
        return [(pool, key) for pool, key in keys if key]

    async def _discard_unstarted(self, keys: list[tuple[GPUPool, str]]) -> None:
        """After a failed or cancelled start: once the Docker calls still running in worker
        threads are done, remove the container they may have made, then free its GPUs.

        Until then the GPUs stay held, so they are never handed out while a container that
        was given them may still appear or run.
        """
        if not keys:
            return  # no GPUs at stake: the container is left as DockerSpawner leaves it
        try:
            pending = [asyncio.wrap_future(f) for f in list(self._calls_in_threads())]
            if pending:
                await asyncio.wait(pending, timeout=max(self.start_timeout, 60))
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self.executor, self._remove_container_named)
        except Exception as e:
            # Docker's own view still counts a leftover container's GPUs as busy
            self.log.warning("Could not remove the container of %s: %s", self._log_name, e)
        finally:
            for pool, key in keys:
                released = pool.release(key)
                if released:
                    self.log.info("Released GPUs %s of %s", ",".join(released), self._log_name)

    def _remove_container_named(self) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.client.remove_container(self.object_name, force=True, v=False)

    def _release_gpus(self) -> None:
        for pool in self.runtime.pools.values():
            released = pool.release(self.gpu_holder)
            if released:
                self.log.info("Released GPUs %s of %s", ",".join(released), self._log_name)
        self.gpu_ids = []

    # -- the lifecycle's hooks (backends/base.py runs start, poll and stop) ---------------

    async def claim_resources(self) -> None:
        await self._refuse_a_foreign_container()
        self.gpu_ids = await self._claim_gpus()
        if self.gpu_ids:
            self._report(f"Assigned GPU {', '.join(self.gpu_ids)}", progress=30)

    async def resources_started(self) -> None:
        if self.gpu_ids:
            (await self.gpu_pool()).mark_running(self.gpu_holder)

    async def observed_status(self) -> int | str | None:
        """From the engine observer's cache: no Docker call per poll while the server runs.
        Anything else (not seen yet, or seen stopped: the cache may lag a start by a moment)
        is asked of the engine, so a server is never reported gone on the cache's word."""
        observer = await self.synced_observer()
        record = observer.get(self.object_id or self.object_name) if observer else None
        if record is not None and record.running:
            return None
        return await super().observed_status()

    async def readopt_resources(self) -> None:
        if not self.api_token:
            await self._recover_api_token()
        if self.gpu_ids:
            await self._readopt_gpus()

    def release_resources(self) -> None:
        # by holder, not by gpu_ids: DockerSpawner's stop clears the state before this runs
        self._release_gpus()

    async def discard_failed_start(self) -> None:
        await self._discard_unstarted(self._hand_over_gpus())

    def cancelled_start_cleanup(self) -> Coroutine[Any, Any, None]:
        # handed over now, before JupyterHub's stop frees this server's own claims: the GPUs
        # stay held until the container is known gone
        return self._discard_unstarted(self._hand_over_gpus())

    async def _refuse_a_foreign_container(self) -> None:
        """DockerSpawner removes any container with the name it wants; never one that this
        hub did not create (another hub's on the same engine, or one started by hand)."""
        try:
            info = await self.docker("inspect_container", self.object_name)
        except docker.errors.NotFound:
            return
        labels = (info.get("Config") or {}).get("Labels") or {}
        if labels.get(LABEL_PREFIX_NAME) != self.prefix:
            raise WorkspaceError(
                f"A container named {self.object_name} exists on this Docker engine that this "
                "hub did not create (another hub's, or started by hand), so nothing was "
                "started and that container was left alone. Tell an admin: each hub on one "
                "engine needs its own GPUWS_CONTAINER_PREFIX.",
                reason="name-taken",
                status_code=409,
            )

    async def _recover_api_token(self) -> None:
        """After a hub restart the spawner has no token: read it back from the container.

        The reclaimer asks the server about busy kernels with it, and JupyterHub revokes it
        when the server stops; without it an old token would stay valid after the stop.
        """
        try:
            info = await self.get_object()
        except Exception as e:
            self.log.warning("Could not read the API token of %s: %s", self._log_name, e)
            return
        for entry in ((info or {}).get("Config") or {}).get("Env") or ():
            name, _, value = str(entry).partition("=")
            if name == "JUPYTERHUB_API_TOKEN" and value:
                self.api_token = value

    async def _readopt_gpus(self) -> None:
        """After a hub restart the ledger is empty: take back what this server holds."""
        try:
            pool = await self.gpu_pool()
        except InventoryError:
            return
        if tuple(pool.ledger.held_by(self.gpu_holder)) == tuple(self.gpu_ids):
            return
        try:
            started = self.orm_spawner.started if self.orm_spawner is not None else None
            pool.restore(
                self.gpu_holder,
                self.gpu_ids,
                user=self.user.name,
                groups=self._user_groups(),
                server=self.name,
                profile=self.profile_slug,
                since=started.replace(tzinfo=UTC).timestamp() if started else None,
            )
        except AllocationError as e:
            self.log.error("GPU conflict re-adopting %s: %s", self._log_name, e)

    async def rename(self, old_name: str, new_name: str) -> None:
        """JupyterHub 6 renames a stopped named server: refuse when a volume's name derives
        from the server's name, since the renamed server would get a new, empty volume."""
        templates = [*self.volumes, *self.read_only_volumes]
        per_server = sorted(str(t) for t in templates if "{servername}" in str(t))
        if per_server:
            raise WorkspaceError(
                f"Server {old_name!r} cannot be renamed: its volume {per_server[0]} is named "
                "after the server, so the new name would start with a new, empty one. "
                "Nothing was changed.",
                reason="rename",
                status_code=400,
            )
