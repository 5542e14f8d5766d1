"""The hub-wide GPU pool: one ledger, one lock and one first-come-first-served queue.

Every spawner of a hub that talks to the same Docker engine shares one :class:`GPUPool`.
The pool knows nothing about Docker: it is handed an ``observe`` coroutine that returns the
ids that running containers hold right now (Docker is the source of truth), and it merges
that with its own ledger, so a GPU is handed out only when neither shows it busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field

from spawner.core.allocator import (
    AllocationError,
    GPULedger,
    NotEnoughGPUs,
    QuotaExceeded,
    check_quota,
)
from spawner.core.inventory import GPU, Inventory


@dataclass(frozen=True)
class Observation:
    """What Docker shows right now: GPU ids held by live containers, and their names."""

    busy: frozenset[str]
    live: frozenset[str]


Observe = Callable[[], Awaitable[Observation]]
WaitReport = Callable[[int, int], None]


class GPUWaitTimeout(AllocationError):
    """No GPU became free while the request waited in the queue."""


class QueueLimitReached(AllocationError):
    """The user already has as many GPU requests waiting as one person may."""


def _gpus(n: int) -> str:
    return "1 GPU is" if n == 1 else f"{n} GPUs are"


class GroupQuotaExceeded(QuotaExceeded):
    """The members of a group together would hold more GPUs than the group may."""

    def _message(self) -> str:
        return (
            f"GPU quota: {self.scope} already holds {self.held} of its {self.limit} GPUs, "
            f"so {self.requested} more cannot be granted; ask a group member to stop a GPU server"
        )


@dataclass(frozen=True)
class Quota:
    """GPU limits that apply to one user: their own, and their groups' totals."""

    user_limit: int | None = None
    user_limit_source: str = "per user"
    group_limits: dict[str, int] = field(default_factory=dict)


def enforce_quota(
    count: int,
    quota: Quota,
    *,
    user_held: int,
    groups: Collection[str],
    group_held: Callable[[str], int],
) -> None:
    """The one quota rule of both backends: raise QuotaExceeded if ``count`` more GPUs would
    put the user (``user_held`` now) or one of their ``groups`` (``group_held(group)`` now)
    over its limit."""
    if count <= 0:
        return
    check_quota(
        requested=count, held=user_held, limit=quota.user_limit, scope=quota.user_limit_source
    )
    for group in sorted(set(groups) & set(quota.group_limits)):
        held, limit = group_held(group), quota.group_limits[group]
        if held + count > limit:
            raise GroupQuotaExceeded(count, held, limit, f"group '{group}'")


@dataclass
class _Ticket:
    holder: str
    count: int
    enqueued: float = field(default_factory=time.monotonic)
    user: str = ""
    server: str = ""
    profile: str = ""
    since: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Holding:
    """Who holds GPUs of the pool: for the dashboard (``since`` is a Unix time)."""

    holder: str
    user: str
    server: str
    profile: str
    since: float
    ids: tuple[str, ...]


@dataclass(frozen=True)
class Waiting:
    """One request in the queue, first come first served (``since`` is a Unix time)."""

    position: int
    holder: str
    user: str
    server: str
    profile: str
    count: int
    since: float


@dataclass(frozen=True)
class GPUView:
    """One GPU as the dashboard shows it: ``free``, ``held`` (by ``holding``) or
    ``external`` (held by a container this hub did not start)."""

    gpu: GPU
    state: str
    holding: Holding | None = None


@dataclass(frozen=True)
class PoolView:
    """Every GPU with who holds it, and the queue; as last seen (see :meth:`GPUPool.view`)."""

    gpus: tuple[GPUView, ...]
    queue: tuple[Waiting, ...]

    def count(self, state: str) -> int:
        return sum(1 for g in self.gpus if g.state == state)


@dataclass(frozen=True)
class PoolSnapshot:
    """What the spawn form and the dashboard show."""

    total: int
    free: int
    queue_length: int
    holders: dict[str, tuple[str, ...]]


class GPUPool:
    """Exclusive GPU allocation for every server of one hub on one Docker engine."""

    def __init__(self, inventory: Inventory, observe: Observe, *, recheck_interval: float = 2.0):
        self.inventory = inventory
        self.ledger = GPULedger(inventory)
        self._observe = observe
        self._recheck_interval = recheck_interval
        self._lock = asyncio.Lock()
        self._queue: list[_Ticket] = []
        self._changed = asyncio.Event()
        self._owners: dict[str, tuple[str, frozenset[str]]] = {}
        self._holdings: dict[str, Holding] = {}
        self._observed: frozenset[str] = frozenset()
        # Holders whose container is up, each with the count of marks when it was marked:
        # only these may be reconciled away when Docker no longer shows them (a holder still
        # being created keeps its claim), and only if marked before the observation began.
        self._running: dict[str, int] = {}
        self._marks = 0
        self._handovers = 0

    # -- what is busy ---------------------------------------------------------------------

    async def _external_busy(self, *, reconcile: bool = True) -> frozenset[str]:
        """Ids that live containers hold according to Docker, mapped onto the inventory.

        With ``reconcile`` (placements, under the lock) it also frees the claims of running
        servers whose container Docker no longer lists (killed, removed or died behind the
        hub's back), so their GPUs return before the next poll. The ledger stays the truth
        for this hub's own holders: only a holder marked running before this observation
        began can be dropped, never one claimed or marked while Docker was being read.
        """
        began = self._marks
        observation = await self._observe()
        if reconcile:
            gone = [h for h in self._running if h not in observation.live]
            for holder in sorted(gone):
                if self._running[holder] <= began:
                    self.release(holder)
        self._observed = observation.busy
        return self._observed

    def running_holders(self) -> tuple[str, ...]:
        """This hub's holders whose container is up (the ones an observation may drop)."""
        return tuple(self._running)

    def mark_running(self, holder: str) -> None:
        """The holder's container is up: from now on Docker's view decides its claim."""
        if self.ledger.held_by(holder):
            self._marks += 1
            self._running[holder] = self._marks

    def hand_over(self, holder: str) -> str:
        """Move ``holder``'s claim to a new, unique key and return it; the GPUs stay held.

        For a spawn that failed or was cancelled while its container may still exist: the
        clean-up that removes the container releases the returned key afterwards, and the
        server itself can start again at once under its own key.
        """
        ids = self.ledger.held_by(holder)
        if not ids:
            return ""
        self._handovers += 1
        key = f"{holder}#cleanup-{self._handovers}"
        holding = self._holdings.pop(holder, None)
        owner = self._owners.pop(holder, None)
        self._running.pop(holder, None)
        self.ledger.release(holder)
        self.ledger.restore(key, ids)
        if owner is not None:
            self._owners[key] = owner
        if holding is not None:
            self._holdings[key] = Holding(
                key, holding.user, holding.server, holding.profile, holding.since, holding.ids
            )
        return key

    def snapshot(self) -> PoolSnapshot:
        """Free/total as last seen; cheap, for rendering a page."""
        return PoolSnapshot(
            total=len(self.inventory),
            free=self.ledger.free_count(external=self._observed),
            queue_length=len(self._queue),
            holders=self.ledger.holders(),
        )

    def view(self) -> PoolView:
        """Every GPU with its state and holder, and the queue, as last seen; cheap."""
        held = {gpu_id: holder for holder, ids in self.ledger.holders().items() for gpu_id in ids}
        gpus = []
        for gpu in self.inventory:
            holder = held.get(gpu.id)
            if holder is not None:
                holding = self._holdings.get(holder) or Holding(
                    holder, self._owners.get(holder, ("", frozenset()))[0], "", "", 0.0, ()
                )
                gpus.append(GPUView(gpu, "held", holding))
            elif gpu.id in self._observed:
                gpus.append(GPUView(gpu, "external"))
            else:
                gpus.append(GPUView(gpu, "free"))
        queue = tuple(
            Waiting(i, t.holder, t.user, t.server, t.profile, t.count, t.since)
            for i, t in enumerate(self._queue)
        )
        return PoolView(tuple(gpus), queue)

    async def refresh(self) -> PoolSnapshot:
        """Ask Docker again, then return the snapshot; never releases anything (the spawn
        form and the dashboard call it outside the lock)."""
        await self._external_busy(reconcile=False)
        return self.snapshot()

    def held_by_user(self, user: str) -> int:
        return sum(len(self.ledger.held_by(h)) for h, (u, _) in self._owners.items() if u == user)

    def held_by_group(self, group: str) -> int:
        return sum(len(self.ledger.held_by(h)) for h, (_, g) in self._owners.items() if group in g)

    def check_quota(self, user: str, groups: Collection[str], count: int, quota: Quota) -> None:
        """Raise QuotaExceeded if ``count`` more GPUs would put the user or a group over."""
        enforce_quota(
            count,
            quota,
            user_held=self.held_by_user(user),
            groups=groups,
            group_held=self.held_by_group,
        )

    def queue_position(self, holder: str) -> int | None:
        for position, ticket in enumerate(self._queue):
            if ticket.holder == holder:
                return position
        return None

    async def acquire(
        self,
        holder: str,
        count: int,
        *,
        user: str,
        groups: Collection[str] = (),
        quota: Quota | None = None,
        timeout: float,
        report: WaitReport | None = None,
        server: str = "",
        profile: str = "",
        max_waiting_per_user: int | None = None,
    ) -> tuple[str, ...]:
        """Claim ``count`` GPUs for ``holder``, waiting first-come-first-served up to ``timeout``.

        The queue is strict FIFO: a request never overtakes the one at its head, even when
        enough GPUs for it are free (so a large request is never starved by small ones).
        ``report(ahead, count)`` is called at each wake-up while the request waits (a change,
        or every recheck interval), so the spawn progress page can say how many requests are
        ahead and when its turn should come. Quotas are checked under the lock,
        so two concurrent spawns of one user cannot both slip under the limit. A user already
        waiting ``max_waiting_per_user`` times is refused at once (QueueLimitReached).
        """
        if max_waiting_per_user is not None and timeout > 0:
            waiting = sum(t.user == user for t in self._queue)
            if waiting >= max_waiting_per_user:
                raise QueueLimitReached(
                    f"You already have {waiting} GPU request{'s' if waiting != 1 else ''} "
                    f"waiting, the most one person may have (gpu_queue_limit_per_user = "
                    f"{max_waiting_per_user}). Nothing was started; wait for it, or stop it."
                )
        ticket = _Ticket(holder, count, user=user, server=server, profile=profile)
        self._queue.append(ticket)
        deadline = time.monotonic() + max(timeout, 0.0)
        try:
            while True:
                # Taken before the attempt: a release during the attempt sets this very event,
                # so the wait below returns at once instead of missing the wake-up.
                changed = self._changed
                # A fail-fast request (timeout 0) never queues, so it need not wait its turn
                # behind requests still being placed; it just tries under the lock.
                if self._queue[0] is ticket or timeout <= 0:
                    async with self._lock:
                        external = await self._external_busy()
                        if quota is not None:
                            self.check_quota(user, groups, count, quota)
                        try:
                            ids = self.ledger.claim(holder, count, external=external)
                        except NotEnoughGPUs as e:
                            shortage = e
                        else:
                            self._owners[holder] = (user, frozenset(groups))
                            self._hold(holder, user, server, profile, ids)
                            return ids
                else:
                    shortage = None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if shortage is not None and timeout <= 0:
                        raise shortage
                    raise GPUWaitTimeout(self._timeout_message(count, timeout, ticket))
                if report is not None:
                    report(self._queue.index(ticket), count)
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can turn a cancel that
                # lands as its own timeout fires into a TimeoutError, and a cancelled spawn
                # (a stop while it waits) would go on waiting in the queue.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, self._recheck_interval)):
                        await changed.wait()
        finally:
            self._queue.remove(ticket)
            self._notify()

    def _timeout_message(self, count: int, timeout: float, ticket: _Ticket) -> str:
        plural = "GPU" if count == 1 else "GPUs"
        if timeout <= 0:
            return (
                f"No {count} {plural} free right now and this hub does not queue GPU requests. "
                "Nothing was started; try again later or pick a smaller profile."
            )
        free = self.ledger.free_count(external=self._observed)
        ahead = [t for t in self._queue[: self._queue.index(ticket)] if t.count > free]
        if free >= count and ahead:
            head = ahead[0]
            return (
                f"{_gpus(free)} free, but held for the {head.count}-GPU request ahead of you "
                f"(requests are served in order), and none went to you within {timeout:g} "
                "seconds. Nothing was started; try again later."
            )
        return (
            f"No {count} {plural} became free within {timeout:g} seconds "
            f"({len(self.inventory)} GPUs on this host, all in use). "
            "Nothing was started; try again later or pick a smaller profile."
        )

    async def claim_exact(
        self,
        holder: str,
        wanted: Collection[str],
        *,
        user: str,
        groups: Collection[str] = (),
        server: str = "",
        profile: str = "",
    ) -> tuple[str, ...]:
        """Claim these particular GPUs (admin-configured ids) if nobody holds any of them."""
        resolved = [self.inventory.resolve(i) for i in wanted]
        unknown = [i for i, gpu in zip(wanted, resolved, strict=True) if gpu is None]
        if unknown:
            raise AllocationError(f"GPU {', '.join(unknown)} is not in this hub's inventory")
        ids = tuple(gpu.id for gpu in resolved if gpu is not None)
        async with self._lock:
            external = await self._external_busy()
            taken = sorted(set(ids) & (set(external) | set(self.ledger.busy())))
            if taken:
                raise AllocationError(f"GPU {', '.join(taken)} is in use by another container")
            self.ledger.restore(holder, ids)
            self._owners[holder] = (user, frozenset(groups))
            self._hold(holder, user, server, profile, ids)
        return ids

    def _hold(
        self,
        holder: str,
        user: str,
        server: str,
        profile: str,
        ids: Collection[str],
        since: float | None = None,
    ) -> None:
        self._holdings[holder] = Holding(
            holder, user, server, profile, time.time() if since is None else since, tuple(ids)
        )

    def release(self, holder: str) -> tuple[str, ...]:
        """Give back what ``holder`` held; wakes the queue."""
        self._owners.pop(holder, None)
        self._holdings.pop(holder, None)
        self._running.pop(holder, None)
        ids = self.ledger.release(holder)
        if ids:
            self._observed = self._observed - frozenset(ids)
            self._notify()
        return ids

    def restore(
        self,
        holder: str,
        ids: Collection[str],
        *,
        user: str,
        groups: Collection[str],
        server: str = "",
        profile: str = "",
        since: float | None = None,
    ) -> None:
        """Re-adopt the GPUs of a server that is still running (e.g. after a hub restart)."""
        if tuple(self.ledger.held_by(holder)) != tuple(ids):
            self.ledger.restore(holder, ids)
        self._owners[holder] = (user, frozenset(groups))
        if holder not in self._holdings or since is not None:
            self._hold(holder, user, server, profile, ids, since)
        self.mark_running(holder)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


__all__ = [
    "GPUPool",
    "GPUView",
    "GPUWaitTimeout",
    "GroupQuotaExceeded",
    "Holding",
    "Observation",
    "PoolSnapshot",
    "PoolView",
    "QueueLimitReached",
    "Quota",
    "Waiting",
]
