"""GPUSwarmSpawner: the GPU workspaces on a Docker Swarm, one service per server.

The lifecycle (start, poll, stop), profiles, the spawn form, the quota rule, the plan and the
readiness wait are :class:`~spawner.backends.base.WorkspaceMixin`'s; the service spec is the
pure :func:`~spawner.core.builders.make_service_spec`; reading what Swarm reports is
:mod:`spawner.core.swarm_view`. This module supplies the hooks, over dockerspawner's
``SwarmSpawner``. What differs from one host:

- **GPUs are Swarm generic resources.** Each node advertises its GPUs in its daemon settings
  (``"node-generic-resources": ["NVIDIA-GPU=GPU-<uuid>", ...]``). A profile's N GPUs become a
  reservation of N ``NVIDIA-GPU``: Swarm's scheduler puts the service on a node with N free
  GPUs and assigns them, and Docker hands their ids to the container in
  ``DOCKER_RESOURCE_NVIDIA-GPU`` (:func:`resource_env_var`), which the NVIDIA runtime reads
  when its ``swarm-resource`` names that variable. The hub never picks GPUs: Swarm's nodes and
  tasks are the source of truth, for placement, the spawn form and quotas alike.
- **No routing mesh.** Each service has endpoint mode ``dnsrr`` and no published port; the hub
  reaches the server at its task's address on ``network_name`` (an attachable overlay
  network), so neither IPVS nor service virtual IPs are involved.
- **Queue.** While Swarm says no node has the GPUs free (the task stays pending,
  "insufficient resources"), the spawn waits up to ``gpu_wait_timeout`` and the progress page
  says so; then the service is removed and the spawn fails with a sentence. A request that no
  node could ever hold, or whose placement constraints no node meets, fails at once.

State kept in the hub database, in addition to DockerSpawner's and the mixin's ``profile``:
``gpu_ids`` (what Swarm assigned) and ``node`` (the node's hostname), for messages and admins.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import docker
from dockerspawner import SwarmSpawner
from traitlets import List, TraitError, Unicode, default, validate

from spawner.backends.base import GPUAvailability, WorkspaceMixin
from spawner.backends.errors import WorkspaceError, docker_trouble
from spawner.core import hardening
from spawner.core.allocator import QuotaExceeded
from spawner.core.builders import BuildError, ServiceExtras, ServiceInputs, make_service_spec
from spawner.core.labels import LABEL_PREFIX_NAME, LABEL_USER
from spawner.core.pool import PoolView, enforce_quota
from spawner.core.swarm_view import (
    HOLDING_STATES,
    UNPLACED_STATES,
    NodeGPUs,
    SwarmGPUs,
    advertised_gpus,
    assigned_gpus,
    count_swarm_gpus,
    current_task,
    gpus_text,
    node_hostname,
    reserved_gpus,
    resource_env_var,
    swarm_view,
    task_address,
    task_state,
    unplaced_reason,
)


class SwarmState:
    """The nodes and tasks of one swarm, read at most once per ``ttl`` seconds however many
    polls, spawn forms and dashboard refreshes ask (one pair of calls per interval, not one
    per server: Docker 20.10 sends no task events to follow). It is also the swarm's GPU
    source for the dashboard and the metrics."""

    def __init__(
        self, call: Callable[..., Awaitable[Any]], kind: str, prefix: str, ttl: float = 1.0
    ) -> None:
        self._call = call
        self.kind = kind
        self.prefix = prefix
        self.ttl = ttl
        self._nodes: list[dict[str, Any]] = []
        self._tasks: list[dict[str, Any]] = []
        self._read_at: float | None = None
        self._pending: asyncio.Future[None] | None = None
        #: Quota check and create under one lock: two spawns of one user cannot both slip
        #: under the limit (the first one's service counts as soon as it exists).
        self.create_lock = asyncio.Lock()
        self.hostnames: dict[str, str] = {}  # node id -> hostname

    async def read(
        self, *, fresh: bool = False
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        stale = self._read_at is None or time.monotonic() - self._read_at > self.ttl
        if fresh or stale:
            if self._pending is None:
                self._pending = asyncio.ensure_future(self._fetch())
            pending = self._pending
            try:
                await asyncio.shield(pending)
            finally:
                if self._pending is pending and pending.done():
                    self._pending = None
        return self._nodes, self._tasks

    async def _fetch(self) -> None:
        nodes, tasks = await asyncio.gather(self._call("nodes"), self._call("tasks"))
        self._nodes, self._tasks = list(nodes), list(tasks)
        self.hostnames.update({str(n.get("ID", "")): node_hostname(n) for n in self._nodes})
        self._read_at = time.monotonic()

    async def refresh(self) -> None:
        await self.read()

    def view(self) -> PoolView:
        return swarm_view(self._nodes, self._tasks, self.kind, self.prefix)


# -- the spawner ---------------------------------------------------------------------------


class GPUSwarmSpawner(WorkspaceMixin, SwarmSpawner):  # type: ignore[misc]
    """Each user's server as a Swarm service on the node that has their GPUs free."""

    engine_words = "Swarm manager"
    # Starting is CPU-bound on the nodes, not on the hub's host.
    uses_start_slots = False

    gpu_resource_kind = Unicode(
        "NVIDIA-GPU",
        config=True,
        help="""The Swarm generic resource that counts GPUs: the name before ``=`` in each
        node's ``node-generic-resources`` ("NVIDIA-GPU=GPU-<uuid>"). Docker hands a task its
        GPUs in ``DOCKER_RESOURCE_`` + this name in upper case, and each node's NVIDIA runtime
        must read that variable (``swarm-resource`` in
        /etc/nvidia-container-runtime/config.toml). New in 0.1.
        """,
    )

    @validate("gpu_resource_kind")
    def _validate_kind(self, proposal: dict[str, Any]) -> str:
        value = str(proposal["value"])
        if not value or any(c in value for c in "=, \t\n"):
            raise TraitError(
                f"{self._opt('gpu_resource_kind')}: {value!r} is not a generic resource name; "
                "use the name before '=' in the nodes' node-generic-resources, e.g. NVIDIA-GPU"
            )
        return value

    node_constraints = List(
        Unicode(),
        config=True,
        help="""Swarm placement constraints for every server, e.g. ["node.role==worker"];
        a profile's ``constraints`` are added to these. New in 0.1.""",
    )

    @validate("node_constraints")
    def _validate_constraints(self, proposal: dict[str, Any]) -> list[str]:
        values = [str(v) for v in proposal["value"]]
        for i, value in enumerate(values):
            if "==" not in value and "!=" not in value:
                raise TraitError(
                    f"{self._opt('node_constraints')}[{i}]: {value[:64]!r} is not a Swarm "
                    "constraint like 'node.labels.gpu==a100'"
                )
        return values

    @default("use_internal_ip")
    def _default_use_internal_ip(self) -> bool:
        return True

    node = Unicode("", help="Hostname of the node the server runs on (state, not config).")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._check_swarm_options()
        self.check_refused_settings()

    def _check_swarm_options(self) -> None:
        """Refuse settings with no meaning on a swarm when the hub starts."""
        for name in ("gpu_device_ids", "all_gpus"):
            if getattr(self, name):
                raise TraitError(
                    f"{self._opt(name)}: on a swarm the scheduler picks the GPUs; ask for a "
                    f"number of them with {self._opt('gpu_count')} or profiles instead"
                )

    def backend_setting_problems(self, allowed: hardening.Allowed) -> list[str]:
        """The Swarm settings' problems: the volume driver and the ``extra_*`` specs (the
        whole service spec is checked again when it is built)."""
        opt = self._opt
        problems: list[str] = []
        if self.volume_driver or self.volume_driver_options:
            problems += hardening.unsafe_driver_config(
                self.volume_driver, self.volume_driver_options, opt("volume_driver"), allowed
            )
        for name, table in (
            ("extra_container_spec", hardening.CONTAINER_SPEC),
            ("extra_resources_spec", hardening.RESOURCES),
            ("extra_placement_spec", hardening.PLACEMENT),
            ("extra_task_spec", hardening.TASK_TEMPLATE),
            ("extra_endpoint_spec", hardening.ENDPOINT_SPEC),
            ("extra_create_kwargs", hardening.SERVICE_SPEC),
        ):
            value = getattr(self, name)
            if not callable(value):
                problems += hardening.check(value or {}, table, opt(name), allowed)
        return problems

    # -- state ----------------------------------------------------------------------------

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.node = state.get("node", "")

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = super().get_state()
        if self.node:
            state["node"] = self.node
        return state

    def clear_state(self) -> None:
        super().clear_state()
        self.node = ""

    # -- what Swarm shows -----------------------------------------------------------------

    def swarm_state(self) -> SwarmState:
        """The one reader of this manager's nodes and tasks (owned by the hub runtime), which
        is also the dashboard's and the metrics' GPU source of the swarm."""
        address = str(self.client.base_url)
        key = ("swarm", address, self.gpu_resource_kind, self.prefix)
        source = self.runtime.sources.get(key)
        if not isinstance(source, SwarmState):
            source = SwarmState(self.docker, self.gpu_resource_kind, self.prefix)
            self.runtime.sources[key] = source
        return source

    async def prepare_gpu_source(self) -> SwarmState:
        return self.swarm_state()

    async def swarm_gpus(self, *, fresh: bool = False) -> SwarmGPUs:
        nodes, tasks = await self.swarm_state().read(fresh=fresh)
        return count_swarm_gpus(nodes, tasks, self.gpu_resource_kind)

    async def _hostname(self, node_id: str) -> str:
        hostnames = self.swarm_state().hostnames
        if node_id and node_id not in hostnames:
            try:
                node = await self.docker("inspect_node", node_id)
            except docker.errors.APIError:
                return node_id[:12]
            hostnames[node_id] = node_hostname(node)
        return hostnames.get(node_id, node_id[:12])

    # -- the WorkspaceMixin hooks ---------------------------------------------------------

    async def total_gpus(self) -> int | None:
        """None: on a swarm the GPUs come and go with the nodes, so profiles are not checked
        against them up front (a node being drained must not break every user's form); a
        request that no node can hold is refused when it is made, with a sentence."""
        return None

    async def gpu_availability(self) -> GPUAvailability | None:
        """Free GPUs on the swarm for the spawn form; a 503 with a sentence when the manager
        does not answer or answers with an error."""
        try:
            gpus = await self.swarm_gpus()
        except Exception as e:
            refusal = docker_trouble(
                e,
                cannot="no server can start and the free GPUs cannot be counted",
                engine=self.engine_words,
            )
            if refusal is None:
                raise
            self.log.warning("Spawn form refused (503), the Swarm manager did not answer: %s", e)
            raise refusal from None
        return GPUAvailability(
            gpus.summary(self.gpu_resource_kind), gpus.free, gpus.total, gpus.waiting
        )

    async def check_gpu_quota(self, count: int) -> None:
        """Refuse (403) if ``count`` more GPUs would put the user or one of their groups over
        a quota (the one rule, :func:`~spawner.core.pool.enforce_quota`); what each user holds
        is read from this hub's services on the swarm."""
        if count <= 0:
            return
        held = await self._gpus_reserved_by_user()
        members = {
            group.name: {u.name for u in getattr(group, "users", []) or []} | {self.user.name}
            for group in getattr(self.user, "groups", []) or []
        }
        try:
            enforce_quota(
                count,
                self.gpu_quota(),
                user_held=held.get(self.user.name, 0),
                groups=self._user_groups(),
                group_held=lambda g: sum(held.get(m, 0) for m in members.get(g, ())),
            )
        except QuotaExceeded as e:
            raise WorkspaceError(str(e), reason="quota", status_code=403) from None

    async def _gpus_reserved_by_user(self) -> dict[str, int]:
        services = await self.docker(
            "services", filters={"label": [f"{LABEL_PREFIX_NAME}={self.prefix}"]}
        )
        held: dict[str, int] = {}
        for service in services:
            spec = service.get("Spec") or {}
            if spec.get("Name") == self.service_name:
                continue  # this server's own leftover is replaced, not added
            user = (spec.get("Labels") or {}).get(LABEL_USER, "")
            count = reserved_gpus(spec.get("TaskTemplate") or {}, self.gpu_resource_kind)
            held[user] = held.get(user, 0) + count
        return held

    # -- the service, built in one place --------------------------------------------------

    async def get_command(self) -> list[str]:
        try:
            return await super().get_command()  # type: ignore[no-any-return]
        except docker.errors.NotFound:
            raise WorkspaceError(
                f"The image {self.image!r} is not on the Swarm manager, so the hub cannot read "
                f"its command; tell an admin (load the image there, or set {self._opt('cmd')}, "
                "e.g. ['jupyterhub-singleuser']).",
                reason="config",
                status_code=500,
            ) from None

    def service_inputs(self, command: list[str]) -> ServiceInputs:
        """What the service needs besides the plan: its name, command, network and volumes
        (driver options are templates like volume names, e.g. one NFS folder per user)."""
        return ServiceInputs(
            name=self.service_name,
            command=command,
            network_name=self.network_name,
            volume_binds=self.volume_binds,
            volume_driver=self.volume_driver or "",
            volume_driver_options={
                key: self.format_volume_name(str(value), self)
                for key, value in (self.volume_driver_options or {}).items()
            },
            gpu_resource_kind=self.gpu_resource_kind,
        )

    async def service_spec(self) -> dict[str, Any]:
        """What ``create_service`` gets, from the pure builder
        (:func:`spawner.core.builders.make_service_spec`) with the admin's ``extra_*`` on top."""
        plan = dataclasses.replace(self.plan, env=self.get_env())
        extras = ServiceExtras(
            container_spec=self.extra_container_spec or {},
            resources_spec=self.extra_resources_spec or {},
            placement_spec=self.extra_placement_spec or {},
            task_spec=self.extra_task_spec or {},
            endpoint_spec=self.extra_endpoint_spec or {},
            create_kwargs=self.extra_create_kwargs or {},
            owner=type(self).__name__,
        )
        try:
            return make_service_spec(
                plan, self.service_inputs(await self.get_command()), extras=extras
            )
        except BuildError as e:
            self._refuse_at_spawn([str(e)], "service")
            raise

    async def create_object(self) -> dict[str, Any]:
        async with self.swarm_state().create_lock:  # quota check and create, one at a time
            if self.plan.gpu_count:
                await self.check_gpu_quota(self.plan.gpu_count)
            spec = await self.service_spec()
            if not self.allow_host_access:
                await self._refuse_an_unsafe_spec(spec)
            service: dict[str, Any] = await self.docker("create_service", **spec)
        self.object_id = service[self.object_id_key]
        while not await self.docker("tasks", filters={"service": self.object_id}):
            await asyncio.sleep(0.1)
        return service

    async def _refuse_an_unsafe_spec(self, spec: Mapping[str, Any]) -> None:
        """The final ``create_service`` arguments, after every merge, on the allow-list."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self.docker_root_dir)
        problems = hardening.unsafe_service_spec(
            spec, f"{type(self).__name__} final create_service arguments", self.refusal_rules()
        )
        self._refuse_at_spawn(problems, "service")

    async def remove_object(self) -> None:
        if not self.object_id:
            return
        self.log.info("Removing service %s (%s)", self.service_name, self.object_id[:7])
        try:
            await self.docker("remove_service", self.object_id)
        except docker.errors.NotFound:
            self.log.debug("Service %s already removed", self.service_name)

    # -- start, wait, stop ----------------------------------------------------------------

    async def _check_network(self) -> None:
        name = self.network_name
        if not name:
            raise WorkspaceError(
                f"{self._opt('network_name')} is not set, so the hub cannot reach servers on "
                "the swarm; tell an admin (see docs/swarm.md).",
                reason="config",
                status_code=500,
            )
        try:
            network = await self.docker("inspect_network", name)
        except docker.errors.NotFound:
            raise WorkspaceError(
                f"The swarm network {name!r} does not exist; tell an admin (on a manager: "
                f"docker network create -d overlay --attachable {name}).",
                reason="config",
                status_code=503,
            ) from None
        if network.get("Scope") != "swarm":
            raise WorkspaceError(
                f"The network {name!r} is local to one host (driver {network.get('Driver')}), "
                "so servers on other nodes could not join it; tell an admin (it must be an "
                "attachable overlay network).",
                reason="config",
                status_code=503,
            )

    async def _check_capacity(self, count: int) -> None:
        """Refuse at once a request for more GPUs than any node has, even all free."""
        gpus = await self.swarm_gpus()
        if gpus.largest >= count:
            return
        if gpus.largest == 0:
            message = (
                f"No node of this swarm has GPUs ({self.gpu_resource_kind} resources), so "
                f"{gpus_text(count)} cannot be granted; pick a CPU profile or tell an admin."
            )
        else:
            message = (
                f"No node of this swarm has {gpus_text(count)} (the largest has {gpus.largest}), "
                "and one server runs on one node; pick a profile with fewer GPUs."
            )
        raise WorkspaceError(message, reason="gpu-unavailable", status_code=503)

    # -- the lifecycle's hooks (backends/base.py runs start, poll and stop) ---------------

    async def claim_resources(self) -> None:
        """Swarm's scheduler places the server and assigns its GPUs; the hub only refuses at
        once what no node could ever run."""
        self.gpu_ids = []
        self.node = ""
        await self._check_network()
        if self.plan.gpu_count:
            await self._check_capacity(self.plan.gpu_count)
        self._report("Creating the service on the swarm", progress=20)

    async def observed_status(self) -> int | str | None:
        """From the swarm's task list, read once per interval for every server (Docker 20.10
        sends no task events); a service not in it (just created) is asked about."""
        if not self.object_id:
            return await super().observed_status()
        _nodes, tasks = await self.swarm_state().read()
        task = current_task(tasks, self.object_id)
        if task is None:
            return await super().observed_status()
        state = task_state(task)
        if state in {"running", "starting", "pending", "preparing"}:
            return None
        return str(task.get("Status") or state)

    async def discard_failed_start(self) -> None:
        if self.object_id:
            try:
                await self._log_what_the_service_did()
            except Exception as e:
                self.log.debug("No log of service %s: %s", self.service_name, e)
        try:
            await self.remove_object()
        except Exception as e:  # the original error is what the user must see
            self.log.warning("Could not remove service %s: %s", self.service_name, e)
        self.object_id = ""
        self.gpu_ids = []
        self.node = ""

    async def _log_what_the_service_did(self) -> None:
        """For the admin, before a failed server's service goes: its task and its output
        (``docker service logs`` through the manager, whichever node ran it)."""
        task = await self.get_task()
        if task is not None:
            status = task.get("Status") or {}
            self.log.warning(
                "Server %s failed to start: task %s on node %s, address %s: %s",
                self._log_name,
                task_state(task),
                await self._hostname(str(task.get("NodeID", ""))) if task.get("NodeID") else "-",
                task_address(task, self.network_name),
                status.get("Err") or status.get("Message", ""),
            )

        def tail() -> str:
            chunks = self.client.service_logs(
                self.object_id, stdout=True, stderr=True, tail=30, follow=False
            )
            return b"".join(chunks).decode(errors="replace")

        output = await asyncio.get_running_loop().run_in_executor(self.executor, tail)
        if output.strip():
            self.log.warning("Last output of %s:\n%s", self.service_name, output.rstrip())

    async def start_object(self) -> None:
        """Wait until Swarm runs the task; queue while no node has the GPUs free."""
        deadline: float | None = None
        last_wait_message = ""
        placed = False
        while True:
            task = await self.get_task()
            if task is None:
                raise WorkspaceError(
                    "The server's service disappeared while it was starting (removed outside "
                    "the hub?); try again.",
                    reason="service-gone",
                    status_code=500,
                )
            state = task_state(task)
            if state in HOLDING_STATES:
                if not placed:
                    placed = True
                    await self._note_placement(task)
                if state == "running":
                    return
                await asyncio.sleep(0.2)
                continue
            if state not in UNPLACED_STATES:
                raise WorkspaceError(await self._ended_message(task), reason="task-failed")
            err = str((task.get("Status") or {}).get("Err") or "")
            reason = unplaced_reason(err)
            if reason is None:
                await asyncio.sleep(0.2)
                continue
            if reason == "placement" or not self.plan.gpu_count:
                raise WorkspaceError(self._no_node_message(err), reason="no-node", status_code=503)
            deadline, last_wait_message = await self._wait_for_a_node(deadline, last_wait_message)

    async def _wait_for_a_node(
        self, deadline: float | None, last_wait_message: str
    ) -> tuple[float, str]:
        """One round of waiting while no node has the GPUs free: refuse when the hub does not
        queue or the wait is over, else say how things stand; returns the deadline and what
        the user was told."""
        if self.gpu_wait_timeout <= 0:
            raise WorkspaceError(
                f"No node has {gpus_text(self.plan.gpu_count)} free right now and this hub "
                "does not queue GPU requests. Nothing was started; try again later or pick a "
                "smaller profile.",
                reason="gpu-unavailable",
                status_code=503,
            )
        now = time.monotonic()
        if deadline is None:
            deadline = now + self.gpu_wait_timeout
        gpus = await self.swarm_gpus()
        if now >= deadline:
            raise WorkspaceError(
                f"No {gpus_text(self.plan.gpu_count)} became free on one node within "
                f"{self.gpu_wait_timeout:g} seconds ({gpus.summary(self.gpu_resource_kind)})."
                " Nothing was started; try again later or pick a smaller profile.",
                reason="gpu-unavailable",
                status_code=503,
            )
        others = max(gpus.waiting - 1, 0)
        message = (
            f"Waiting for {gpus_text(self.plan.gpu_count)}: no node has {self.plan.gpu_count} free "
            f"({gpus.free} of {gpus.total} GPUs free on the swarm, {others} other "
            f"request{'s' if others != 1 else ''} waiting)"
        )
        if message != last_wait_message:
            self._report(message)
        await asyncio.sleep(1.0)
        return deadline, message

    async def _note_placement(self, task: Mapping[str, Any]) -> None:
        self.node = await self._hostname(str(task.get("NodeID", "")))
        self.gpu_ids = list(assigned_gpus(task, self.gpu_resource_kind))
        if self.gpu_ids:
            self._report(
                f"Placed on node {self.node} with GPU {', '.join(self.gpu_ids)}", progress=40
            )
        else:
            self._report(f"Placed on node {self.node}", progress=40)

    def _no_node_message(self, err: str) -> str:
        constraints = self.plan.constraints
        where = f" (placement: {', '.join(constraints)})" if constraints else ""
        return (
            f"No node of the swarm can run this server{where}: Swarm says {err!r}. "
            "Nothing was started; pick another profile or tell an admin."
        )

    async def _ended_message(self, task: Mapping[str, Any]) -> str:
        status = task.get("Status") or {}
        why = status.get("Err") or status.get("Message") or task_state(task)
        node = await self._hostname(str(task.get("NodeID", ""))) if task.get("NodeID") else ""
        on = f" on node {node}" if node else ""
        hint = ""
        if "no longer meets constraints" in str(why) and self.plan.gpu_count:
            hint = (
                " (Docker 20.10 rejects GPU tasks when their node is updated, moby/moby#44378;"
                " see docs/swarm.md)"
            )
        return (
            f"Swarm could not start the server{on}: {why}{hint}. Nothing is left running; "
            "try again or tell an admin."
        )

    async def get_ip_and_port(self) -> tuple[str, int]:
        """The task's address on ``network_name``: no routing mesh, no service VIP."""
        task = await self.get_task()
        address = task_address(task, self.network_name) if task else None
        if not address:
            raise WorkspaceError(
                f"Swarm gives the server no address on network {self.network_name!r}, so the "
                "hub cannot reach it; tell an admin (use an attachable overlay network).",
                reason="config",
                status_code=500,
            )
        return address, self.port


__all__ = [
    "GPUSwarmSpawner",
    "NodeGPUs",
    "SwarmGPUs",
    "advertised_gpus",
    "assigned_gpus",
    "count_swarm_gpus",
    "reserved_gpus",
    "resource_env_var",
    "task_address",
    "unplaced_reason",
]
