"""GPUSwarmSpawner: the GPU workspaces on a Docker Swarm, one service per server.

Profiles, the spawn form, quotas, the /dev/shm rule, container user and limits, labels,
progress messages and the readiness wait are those of the single-host spawner
(:class:`~spawner.backends.base.WorkspaceMixin`); the base is dockerspawner's ``SwarmSpawner``.
What differs from one host:

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
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, ClassVar

import docker
from docker.types import (
    ContainerSpec,
    DriverConfig,
    EndpointSpec,
    Mount,
    Placement,
    Resources,
    RestartPolicy,
    TaskTemplate,
)
from dockerspawner import SwarmSpawner
from traitlets import List, TraitError, Unicode, default, validate
from traitlets.config import Config

from spawner.backends.base import LABEL_PREFIX_NAME, LABEL_USER, GPUAvailability, WorkspaceMixin
from spawner.backends.docker import docker_root_dir, engine_unreachable, known_docker_root
from spawner.core import hardening
from spawner.core.allocator import QuotaExceeded, check_quota
from spawner.core.errors import WorkspaceError
from spawner.core.pool import GroupQuotaExceeded
from spawner.hub.reclaim import reclaimer

#: Task states in which a task holds resources on its node (placed there and not ended).
HOLDING_STATES = frozenset({"assigned", "accepted", "preparing", "ready", "starting", "running"})
#: Task states before Swarm has placed the task on a node.
UNPLACED_STATES = frozenset({"new", "allocated", "pending"})
#: Settings of a single-host configuration that :func:`use_swarm` does not carry over.
NOT_CARRIED_OVER = frozenset({"network_name", "pull_policy", "use_internal_ip", "host_ip"})


# -- reading what Swarm reports (pure: plain dicts in, values out) -------------------------


def resource_env_var(kind: str) -> str:
    """The variable in which Docker hands a container the generic resources Swarm assigned.

    Docker writes ``DOCKER_RESOURCE_`` and the kind in upper case, character for character:
    ``NVIDIA-GPU`` gives ``DOCKER_RESOURCE_NVIDIA-GPU``, ``gpu`` gives ``DOCKER_RESOURCE_GPU``.
    The NVIDIA runtime's ``swarm-resource`` setting must name exactly this variable.
    """
    return f"DOCKER_RESOURCE_{kind.upper()}"


def _ids_of(resources: Iterable[Mapping[str, Any]] | None, kind: str) -> tuple[str, ...]:
    """Named resources of ``kind`` as their values; a discrete count N as N anonymous ids."""
    ids: list[str] = []
    for resource in resources or ():
        named = resource.get("NamedResourceSpec") or {}
        if named.get("Kind") == kind:
            ids.append(str(named.get("Value", "")))
        discrete = resource.get("DiscreteResourceSpec") or {}
        if discrete.get("Kind") == kind:
            ids.extend(f"#{i}" for i in range(int(discrete.get("Value") or 0)))
    return tuple(ids)


def advertised_gpus(node: Mapping[str, Any], kind: str) -> tuple[str, ...]:
    """The GPU ids a node advertises (its ``kind`` generic resources)."""
    resources = ((node.get("Description") or {}).get("Resources") or {}).get("GenericResources")
    return _ids_of(resources, kind)


def assigned_gpus(task: Mapping[str, Any], kind: str) -> tuple[str, ...]:
    """The GPU ids Swarm assigned to a task."""
    return _ids_of(task.get("GenericResources"), kind)


def reserved_gpus(task_template: Mapping[str, Any], kind: str) -> int:
    """How many ``kind`` resources a task template (service or task spec) reserves."""
    reservations = (task_template.get("Resources") or {}).get("Reservations") or {}
    return sum(
        int((r.get("DiscreteResourceSpec") or {}).get("Value") or 0)
        for r in reservations.get("GenericResources") or ()
        if (r.get("DiscreteResourceSpec") or {}).get("Kind") == kind
    )


def schedulable(node: Mapping[str, Any]) -> bool:
    """Whether Swarm places new tasks on this node (up and not paused or drained)."""
    return (node.get("Status") or {}).get("State") == "ready" and (node.get("Spec") or {}).get(
        "Availability", "active"
    ) == "active"


def node_hostname(node: Mapping[str, Any]) -> str:
    return str((node.get("Description") or {}).get("Hostname") or node.get("ID", "")[:12])


def task_state(task: Mapping[str, Any]) -> str:
    return str((task.get("Status") or {}).get("State", "")).lower()


def task_address(task: Mapping[str, Any], network: str) -> str | None:
    """The task's IP address on ``network`` (name or id), as the Swarm manager records it."""
    for attachment in task.get("NetworksAttachments") or ():
        net = attachment.get("Network") or {}
        if network in (net.get("ID"), (net.get("Spec") or {}).get("Name")):
            for address in attachment.get("Addresses") or ():
                return str(address).split("/")[0]
    return None


def unplaced_reason(err: str) -> str | None:
    """Why Swarm has not placed a task: ``"resources"`` when some node lacks free resources
    (worth waiting), ``"placement"`` when no node qualifies at all (constraints, drained
    nodes), ``None`` when the scheduler has not said anything yet."""
    if "no suitable node" not in err:
        return None
    return "resources" if "insufficient resources" in err else "placement"


@dataclass(frozen=True)
class NodeGPUs:
    """One schedulable node's GPUs, as Swarm sees them now."""

    node_id: str
    hostname: str
    total: int
    used: int

    @property
    def free(self) -> int:
        return max(self.total - self.used, 0)


@dataclass(frozen=True)
class SwarmGPUs:
    """The GPUs of every schedulable node, and the GPU requests Swarm has not placed yet."""

    nodes: tuple[NodeGPUs, ...]
    waiting: int

    @property
    def total(self) -> int:
        return sum(n.total for n in self.nodes)

    @property
    def free(self) -> int:
        return sum(n.free for n in self.nodes)

    @property
    def largest(self) -> int:
        """The most GPUs one node has: no single server can get more."""
        return max((n.total for n in self.nodes), default=0)

    @property
    def most_free(self) -> int:
        return max((n.free for n in self.nodes), default=0)

    def summary(self, kind: str) -> str:
        with_gpus = [n for n in self.nodes if n.total]
        if not with_gpus:
            return f"no node of the swarm advertises {kind} resources"
        per_node = ", ".join(f"{n.hostname}: {n.free} of {n.total}" for n in with_gpus)
        nodes = "1 node" if len(with_gpus) == 1 else f"{len(with_gpus)} nodes"
        return f"{self.free} of {self.total} GPUs free on {nodes} ({per_node})"


def count_swarm_gpus(
    nodes: Iterable[Mapping[str, Any]], tasks: Iterable[Mapping[str, Any]], kind: str
) -> SwarmGPUs:
    """Free/total GPUs per schedulable node, from ``docker node ls`` and ``docker service ps``.

    A GPU is in use while a task that Swarm assigned it to is on its node and not ended,
    whoever started the task (this hub, another hub, an admin by hand).
    """
    tasks = list(tasks)
    used: dict[str, int] = {}
    waiting = 0
    for task in tasks:
        state = task_state(task)
        if state in HOLDING_STATES and task.get("NodeID"):
            used[task["NodeID"]] = used.get(task["NodeID"], 0) + len(assigned_gpus(task, kind))
        elif (
            state in UNPLACED_STATES
            and task.get("DesiredState") == "running"
            and reserved_gpus(task.get("Spec") or {}, kind)
        ):
            waiting += 1
    counted = tuple(
        NodeGPUs(
            node_id=str(node.get("ID", "")),
            hostname=node_hostname(node),
            total=len(advertised_gpus(node, kind)),
            used=used.get(str(node.get("ID", "")), 0),
        )
        for node in nodes
        if schedulable(node)
    )
    return SwarmGPUs(tuple(sorted(counted, key=lambda n: n.hostname)), waiting)


def _gpus(n: int) -> str:
    return "1 GPU" if n == 1 else f"{n} GPUs"


# -- the spawner ---------------------------------------------------------------------------


class GPUSwarmSpawner(WorkspaceMixin, SwarmSpawner):  # type: ignore[misc]
    """Each user's server as a Swarm service on the node that has their GPUs free."""

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
    gpu_ids = List(Unicode(), help="GPUs Swarm assigned to this server (state, not config).")

    _create_lock: ClassVar[asyncio.Lock | None] = None
    _hostnames: ClassVar[dict[str, str]] = {}

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

    def refusal_rules(self) -> hardening.Allowed:
        """What the allow-list lets this hub's services name (spawner/hardening.py)."""
        return hardening.Allowed(
            images=self.allowed_workspace_images(), docker_root=known_docker_root(type(self))
        )

    def check_refused_settings(self, *, read_engine: bool = False) -> None:
        """Refuse settings that hand notebooks a node (see spawner/hardening.py), naming the
        option, when the hub starts; ``read_engine`` first asks the manager for its data
        root. The whole service spec is checked again when it is built."""
        if self.allow_host_access:
            return
        if read_engine:
            docker_root_dir(self)
        allowed = self.refusal_rules()
        opt = self._opt
        problems = self.shared_setting_problems(allowed)
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
        if problems:
            raise TraitError(hardening.refusal(problems, opt("allow_host_access")))

    # -- state ----------------------------------------------------------------------------

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.gpu_ids = list(state.get("gpu_ids", []))
        self.node = state.get("node", "")

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = super().get_state()
        if self.gpu_ids:
            state["gpu_ids"] = list(self.gpu_ids)
        if self.node:
            state["node"] = self.node
        return state

    def clear_state(self) -> None:
        super().clear_state()
        self.gpu_ids = []
        self.node = ""

    # -- what Swarm shows -----------------------------------------------------------------

    async def swarm_gpus(self) -> SwarmGPUs:
        nodes, tasks = await asyncio.gather(self.docker("nodes"), self.docker("tasks"))
        for node in nodes:
            self._hostnames[str(node.get("ID", ""))] = node_hostname(node)
        return count_swarm_gpus(nodes, tasks, self.gpu_resource_kind)

    async def _hostname(self, node_id: str) -> str:
        if node_id and node_id not in self._hostnames:
            try:
                node = await self.docker("inspect_node", node_id)
            except docker.errors.APIError:
                return node_id[:12]
            self._hostnames[node_id] = node_hostname(node)
        return self._hostnames.get(node_id, node_id[:12])

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
            if not (engine_unreachable(e) or isinstance(e, docker.errors.APIError)):
                raise
            self.log.warning("Spawn form refused (503), the Swarm manager did not answer: %s", e)
            down = engine_unreachable(e)
            raise WorkspaceError(
                "The Swarm manager of this hub is "
                + ("not answering" if down else "answering with errors")
                + ", so no server can start right now and the free GPUs cannot be counted. "
                "Running servers are kept; try again in a minute or tell an admin.",
                reason="docker-unreachable" if down else "docker-error",
                status_code=503,
            ) from None
        return GPUAvailability(
            gpus.summary(self.gpu_resource_kind), gpus.free, gpus.total, gpus.waiting
        )

    async def check_gpu_quota(self, count: int) -> None:
        """Refuse (403) if ``count`` more GPUs would put the user or one of their groups over
        a quota; what each user holds is read from this hub's services on the swarm."""
        if count <= 0:
            return
        held = await self._gpus_reserved_by_user()
        limit, source = self.user_gpu_limit()
        try:
            check_quota(
                requested=count, held=held.get(self.user.name, 0), limit=limit, scope=source
            )
            for group in getattr(self.user, "groups", []) or []:
                group_limit = self.gpu_quota_per_group.get(group.name)
                if group_limit is None:
                    continue
                members = {u.name for u in getattr(group, "users", []) or []} | {self.user.name}
                in_use = sum(held.get(m, 0) for m in members)
                if in_use + count > group_limit:
                    raise GroupQuotaExceeded(count, in_use, group_limit, f"group '{group.name}'")
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

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        # GPU servers too: the NVIDIA runtime takes the GPUs from the Swarm variable, which
        # wins over NVIDIA_VISIBLE_DEVICES; a node whose runtime lacks swarm-resource then
        # gives the server no GPU instead of every GPU of the node (CUDA images say "all").
        env["NVIDIA_VISIBLE_DEVICES"] = "void"
        if self.gpu_count:
            env["NVIDIA_DRIVER_CAPABILITIES"] = ",".join(self.gpu_capabilities)
        return env

    @property
    def mount_driver_config(self) -> DriverConfig | None:
        """The home volumes' driver; option values are templates like volume names, e.g.
        ``{"device": ":/export/homes/{username}"}`` for one NFS folder per user."""
        if not self.volume_driver:
            return None
        options = {
            key: self.format_volume_name(str(value), self)
            for key, value in (self.volume_driver_options or {}).items()
        }
        return DriverConfig(name=self.volume_driver, options=options or None)

    @property
    def mounts(self) -> list[Mount]:
        """``volumes`` as Swarm mounts: names are (node-local) volumes, absolute paths binds."""
        driver = self.mount_driver_config
        mounts = []
        for source, volume in self.volume_binds.items():
            is_path = source.startswith("/")
            mounts.append(
                Mount(
                    target=volume["bind"],
                    source=source,
                    type="bind" if is_path else "volume",
                    read_only=volume["mode"] == "ro",
                    driver_config=None if is_path else driver,
                )
            )
        return mounts

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

    def _ulimits(self) -> list[dict[str, Any]]:
        ulimits = []
        if self.nofile_limit:
            ulimits.append({"Name": "nofile", "Soft": self.nofile_limit, "Hard": self.nofile_limit})
        nproc = self.nproc_limit
        if nproc is None:
            # The nodes' kernel.pid_max is not known here: the ceiling without it.
            nproc = hardening.process_ceiling(None, self.pids_limit)
        if nproc:
            ulimits.append({"Name": "nproc", "Soft": nproc, "Hard": nproc})
        return ulimits

    def placement_constraints(self) -> list[str]:
        profile = tuple(self._profile.constraints) if self._profile is not None else ()
        return [*self.node_constraints, *profile]

    async def service_spec(self) -> dict[str, Any]:
        """What ``create_service`` gets: container, GPUs, limits, hardening, placement, network.

        Admin ``extra_container_spec`` / ``extra_resources_spec`` / ``extra_placement_spec`` /
        ``extra_task_spec`` / ``extra_endpoint_spec`` / ``extra_create_kwargs`` override keys.
        """
        labels = self.workspace_labels([], template_escape=False)
        shm = Mount(
            target="/dev/shm",
            source=None,
            type="tmpfs",
            tmpfs_size=self.effective_shm_size(),
            tmpfs_mode=0o1777,
        )
        container_kwargs: dict[str, Any] = {
            "image": self.image,
            "env": self.get_env(),
            "args": await self.get_command(),
            "mounts": [*self.mounts, shm],
            "user": self.container_user or None,
            "labels": labels,
            "init": True,
            "cap_drop": ["ALL"],
            "cap_add": list(self.cap_add) or None,
        }
        container_kwargs.update(self.extra_container_spec)
        container = ContainerSpec(**container_kwargs)
        if ulimits := self._ulimits():
            container.setdefault("Ulimits", ulimits)

        mem_limit = self.mem_limit or None
        resources_kwargs: dict[str, Any] = {
            "mem_limit": mem_limit,
            "mem_reservation": self.mem_guarantee or None,
            "cpu_limit": int(self.cpu_limit * 1e9) if self.cpu_limit else None,
            "cpu_reservation": int(self.cpu_guarantee * 1e9) if self.cpu_guarantee else None,
            "generic_resources": (
                {self.gpu_resource_kind: self.gpu_count} if self.gpu_count else None
            ),
        }
        resources_kwargs.update(self.extra_resources_spec)
        resources = Resources(**resources_kwargs)
        if self.pids_limit:
            resources.setdefault("Limits", {})["Pids"] = self.pids_limit

        placement = Placement(
            **{"constraints": self.placement_constraints() or None, **self.extra_placement_spec}
        )
        task_kwargs: dict[str, Any] = {
            "container_spec": container,
            "resources": resources,
            # A server that exits is stopped, as on one host: never restarted elsewhere with
            # other GPUs and another address behind the hub's back.
            "restart_policy": RestartPolicy(condition="none"),
            "placement": placement,
            "networks": [{"Target": self.network_name}],
        }
        task_kwargs.update(self.extra_task_spec)
        spec: dict[str, Any] = {
            "task_template": TaskTemplate(**task_kwargs),
            "name": self.service_name,
            "labels": labels,
            # DNS round robin, no published port: no routing mesh, no virtual IP (IPVS).
            "endpoint_spec": EndpointSpec(**{"mode": "dnsrr", **self.extra_endpoint_spec}),
        }
        spec.update(self.extra_create_kwargs)
        return spec

    async def create_object(self) -> dict[str, Any]:
        cls = GPUSwarmSpawner
        if cls._create_lock is None:
            cls._create_lock = asyncio.Lock()
        # Quota check and create under one lock: two spawns of one user cannot both slip
        # under the limit (the first one's service counts as soon as it exists).
        async with cls._create_lock:
            if self.gpu_count:
                await self.check_gpu_quota(self.gpu_count)
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
        await loop.run_in_executor(self.executor, docker_root_dir, self)
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
                f"{_gpus(count)} cannot be granted; pick a CPU profile or tell an admin."
            )
        else:
            message = (
                f"No node of this swarm has {_gpus(count)} (the largest has {gpus.largest}), "
                "and one server runs on one node; pick a profile with fewer GPUs."
            )
        raise WorkspaceError(message, reason="gpu-unavailable", status_code=503)

    async def start(self) -> tuple[str, int]:
        self._progress_events = []
        if self._profile is None and self.profiles:
            # JupyterHub < 5.3 has no apply_user_options hook
            await self._apply_profile(self.user_options or {})
        self.check_image_allowed()
        self.gpu_ids = []
        self.node = ""
        try:
            await self._check_network()
            if self.gpu_count:
                await self._check_capacity(self.gpu_count)
            self._report("Creating the service on the swarm", progress=20)
            ip_port: tuple[str, int] = await super().start()
            self._report("Starting the notebook server", progress=70)
            if self.wait_until_ready:
                await self._wait_until_answering(*ip_port)
            self._report("Server is up", progress=95)
            reclaimer(self.config).track(self)  # idle reclaim, as on one host
            return ip_port
        except Exception as e:
            await self._remove_after_failure()
            if isinstance(e, WorkspaceError):
                raise
            if engine_unreachable(e):
                raise WorkspaceError(
                    "The Swarm manager is not answering, so no server can start right now. "
                    "Running servers are kept; try again in a minute or tell an admin.",
                    reason="docker-unreachable",
                    status_code=503,
                ) from None
            if isinstance(e, docker.errors.APIError):
                raise WorkspaceError(
                    f"Swarm refused to start the server: {e.explanation}. Tell an admin.",
                    reason="swarm",
                    status_code=500,
                ) from None
            raise

    async def _remove_after_failure(self) -> None:
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
            if reason == "placement" or not self.gpu_count:
                raise WorkspaceError(self._no_node_message(err), reason="no-node", status_code=503)
            if self.gpu_wait_timeout <= 0:
                raise WorkspaceError(
                    f"No node has {_gpus(self.gpu_count)} free right now and this hub does not "
                    "queue GPU requests. Nothing was started; try again later or pick a "
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
                    f"No {_gpus(self.gpu_count)} became free on one node within "
                    f"{self.gpu_wait_timeout:g} seconds ({gpus.summary(self.gpu_resource_kind)})."
                    " Nothing was started; try again later or pick a smaller profile.",
                    reason="gpu-unavailable",
                    status_code=503,
                )
            others = max(gpus.waiting - 1, 0)
            message = (
                f"Waiting for {_gpus(self.gpu_count)}: no node has {self.gpu_count} free "
                f"({gpus.free} of {gpus.total} GPUs free on the swarm, {others} other "
                f"request{'s' if others != 1 else ''} waiting)"
            )
            if message != last_wait_message:
                self._report(message)
                last_wait_message = message
            await asyncio.sleep(1.0)

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
        constraints = self.placement_constraints()
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
        if "no longer meets constraints" in str(why) and self.gpu_count:
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

    async def poll(self) -> int | str | None:
        try:
            status: int | str | None = await super().poll()
        except Exception as e:
            if not engine_unreachable(e):
                raise
            self.log.warning(
                "Swarm manager not answering; keeping %s as running: %s", self._log_name, e
            )
            return None
        if status is None:
            reclaimer(self.config).track(self)  # e.g. after a hub restart
        else:
            reclaimer(self.config).untrack(self)
        return status


def use_swarm(config: Config, *, network: str) -> None:
    """Switch a hub configured for the single-host spawner to :class:`GPUSwarmSpawner`.

    Every ``GPUDockerSpawner`` setting that the Swarm spawner has too (profiles, images,
    quotas, limits, volumes, timeouts, prefix …) is carried over unless ``GPUSwarmSpawner``
    sets it already; ``network`` is the attachable overlay network of the servers. The result
    is checked at once, like the single-host settings, so a mistake stops the hub's start
    with a message that names the option.
    """
    from spawner.hub.config import ConfigError

    config.JupyterHub.spawner_class = "gpu-swarm"
    names = set(GPUSwarmSpawner.class_trait_names(config=True))
    single_host = config.GPUDockerSpawner
    swarm = config.GPUSwarmSpawner
    for name, value in single_host.items():
        if name in names and name not in NOT_CARRIED_OVER and name not in swarm:
            swarm[name] = value
    swarm.network_name = network
    stand_in = SimpleNamespace(name="config-check", groups=[], url="/user/config-check/")
    try:
        GPUSwarmSpawner(config=config, user=stand_in)
    except (TraitError, ValueError) as e:
        raise ConfigError(str(e)) from None


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
    "use_swarm",
]
