"""GPUDockerSpawner: DockerSpawner with exclusive GPUs, profiles, shm sizing and safe defaults.

This is the only module of the package that talks to Docker. Everything it decides comes from
the pure modules (``devices``, ``sizes``, ``profiles``, ``allocator`` via ``pool``); the
Docker-facing settings are built in one place, :meth:`GPUDockerSpawner.workspace_host_config`.

State kept in the hub database (``get_state``), in addition to DockerSpawner's and
:class:`~spawner.workspace.WorkspaceMixin`'s ``profile``:

- ``gpu_ids``: the canonical ids of the GPUs this server holds, so they are re-adopted after a
  hub restart.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import docker
from dockerspawner import DockerSpawner
from traitlets import Bool, Int, List, TraitError, Unicode, Union, default, validate

from .allocator import AllocationError
from .devices import build_device_request, claimed_gpus
from .errors import WorkspaceError
from .inventory import Inventory, InventoryError, discover_nvml, parse_static_inventory
from .pool import GPUPool, Observation, Quota
from .workspace import GPUAvailability, WorkspaceMixin

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


class GPUDockerSpawner(WorkspaceMixin, DockerSpawner):
    """A DockerSpawner for shared GPU servers: each GPU to one user, chosen through profiles."""

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

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self.gpu_ids:
            state["gpu_ids"] = list(self.gpu_ids)
        return state

    def clear_state(self) -> None:
        super().clear_state()
        self.gpu_ids = []

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

    # -- the WorkspaceMixin hooks ----------------------------------------------------------

    async def total_gpus(self) -> int | None:
        try:
            return len(await self.gpu_inventory_resolved())
        except InventoryError:
            return None

    async def gpu_availability(self) -> GPUAvailability | None:
        try:
            pool = await self.gpu_pool()
        except InventoryError as e:
            self.log.warning("GPU inventory unavailable for the spawn form: %s", e)
            return None
        snapshot = await pool.refresh()
        return GPUAvailability(
            pool.inventory.describe(), snapshot.free, snapshot.total, snapshot.queue_length
        )

    def _quota(self) -> Quota:
        limit, source = self.user_gpu_limit()
        return Quota(limit, source, dict(self.gpu_quota_per_group))

    async def check_gpu_quota(self, count: int) -> None:
        pool = await self._pool_or_refuse()
        try:
            pool.check_quota(self.user.name, self._user_groups(), count, self._quota())
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

    # -- the Docker-facing settings, in one place -----------------------------------------

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

    async def create_object(self) -> dict[str, Any]:
        admin_host_config = self._eval_if_callable(self.extra_host_config)
        if asyncio.iscoroutine(admin_host_config):
            admin_host_config = await admin_host_config
        admin_create_kwargs = self._eval_if_callable(self.extra_create_kwargs)
        if asyncio.iscoroutine(admin_create_kwargs):
            admin_create_kwargs = await admin_create_kwargs
        ours_create: dict[str, Any] = {"labels": self.workspace_labels(list(self.gpu_ids))}
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
