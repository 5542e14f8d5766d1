"""What Swarm reports, read as plain dicts (``docker node ls`` / ``service ps`` documents):
the GPUs each node advertises, the ones Swarm assigned to tasks, why a task is not placed, and
the swarm's GPUs as the dashboard's :class:`~spawner.core.pool.PoolView`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from spawner.core.inventory import GPU
from spawner.core.labels import LABEL_PREFIX_NAME, LABEL_PROFILE, LABEL_SERVER, LABEL_USER
from spawner.core.pool import GPUView, Holding, PoolView, Waiting

#: Task states in which a task holds resources on its node (placed there and not ended).
HOLDING_STATES = frozenset({"assigned", "accepted", "preparing", "ready", "starting", "running"})
#: Task states before Swarm has placed the task on a node.
UNPLACED_STATES = frozenset({"new", "allocated", "pending"})


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


def gpus_text(n: int) -> str:
    return "1 GPU" if n == 1 else f"{n} GPUs"


def current_task(tasks: Iterable[Mapping[str, Any]], service_id: str) -> Mapping[str, Any] | None:
    """The task of a service that counts for its server, as SwarmSpawner picks it: the one
    Swarm wants running, else the newest."""
    own = [t for t in tasks if t.get("ServiceID") == service_id]
    wanted = [t for t in own if t.get("DesiredState") == "running"]
    candidates = wanted or own
    if not candidates:
        return None
    return max(candidates, key=lambda t: str(t.get("CreatedAt") or ""))


def _unix(stamp: str | None) -> float:
    """A Swarm time stamp (RFC 3339, nanoseconds) as a Unix time; 0 when unknown."""
    if not stamp:
        return 0.0
    head, _, rest = stamp.rstrip("Z").partition(".")
    try:
        seconds = datetime.fromisoformat(head + "+00:00").timestamp()
    except ValueError:
        return 0.0
    digits = "".join(c for c in rest if c.isdigit())[:6]
    return seconds + (int(digits) / 10 ** len(digits) if digits else 0.0)


def _task_labels(task: Mapping[str, Any]) -> Mapping[str, str]:
    spec = (task.get("Spec") or {}).get("ContainerSpec") or {}
    labels: Mapping[str, str] = spec.get("Labels") or {}
    return labels


def swarm_view(
    nodes: Iterable[Mapping[str, Any]],
    tasks: Iterable[Mapping[str, Any]],
    kind: str,
    prefix: str,
) -> PoolView:
    """The swarm's GPUs as the dashboard and the metrics show them: each GPU a schedulable
    node advertises, ``held`` by a task of this hub (its ``prefix`` label), ``external`` when
    another task holds it, else ``free``; GPU tasks Swarm has not placed are the queue."""
    holders: dict[tuple[str, str], Holding | None] = {}
    queue: list[Waiting] = []
    for task in tasks:
        labels = _task_labels(task)
        state = task_state(task)
        ours = labels.get(LABEL_PREFIX_NAME) == prefix
        if state in HOLDING_STATES and task.get("NodeID"):
            ids = assigned_gpus(task, kind)
            holding = Holding(
                holder=str(task.get("ServiceID", ""))[:12],
                user=str(labels.get(LABEL_USER, "")),
                server=str(labels.get(LABEL_SERVER, "")),
                profile=str(labels.get(LABEL_PROFILE, "")),
                since=_unix(task.get("CreatedAt")),
                ids=ids,
            )
            for gpu_id in ids:
                holders[(str(task["NodeID"]), gpu_id)] = holding if ours else None
        elif state in UNPLACED_STATES and task.get("DesiredState") == "running" and ours:
            count = reserved_gpus(task.get("Spec") or {}, kind)
            if count:
                queue.append(
                    Waiting(
                        position=0,
                        holder=str(task.get("ServiceID", ""))[:12],
                        user=str(labels.get(LABEL_USER, "")),
                        server=str(labels.get(LABEL_SERVER, "")),
                        profile=str(labels.get(LABEL_PROFILE, "")),
                        count=count,
                        since=_unix(task.get("CreatedAt")),
                    )
                )
    gpus: list[GPUView] = []
    for node in sorted((n for n in nodes if schedulable(n)), key=node_hostname):
        node_id = str(node.get("ID", ""))
        for index, gpu_id in enumerate(advertised_gpus(node, kind)):
            gpu = GPU(id=gpu_id, index=index, name=f"GPU on {node_hostname(node)}")
            if (node_id, gpu_id) not in holders:
                gpus.append(GPUView(gpu, "free"))
                continue
            held_by = holders[(node_id, gpu_id)]
            state = "external" if held_by is None else "held"
            gpus.append(GPUView(gpu, state, held_by))
    queue.sort(key=lambda w: w.since)
    ordered = tuple(
        Waiting(i + 1, w.holder, w.user, w.server, w.profile, w.count, w.since)
        for i, w in enumerate(queue)
    )
    return PoolView(tuple(gpus), ordered)
