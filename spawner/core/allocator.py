"""Exclusive GPU allocation: every device to at most one holder.

Pure: it is handed the inventory, what is busy and what is asked for, and answers with device
ids or an error. It never looks at Docker; the caller passes in what running containers hold
(``external``) and, after a hub restart, re-adopts running servers with
:meth:`GPULedger.restore` or :meth:`GPULedger.sync`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from spawner.core.inventory import GPU, Inventory


class AllocationError(Exception):
    """A GPU request that cannot be met; ``str()`` is a sentence for the user."""


class NotEnoughGPUs(AllocationError):
    """Fewer free GPUs than requested (right now; waiting may help)."""

    def __init__(self, requested: int, free: int, total: int) -> None:
        self.requested = requested
        self.free = free
        self.total = total
        super().__init__(self._message())

    def _message(self) -> str:
        asked = _gpus(self.requested)
        if self.total == 0:
            return f"{asked} requested but this host has no GPUs"
        if self.requested > self.total:
            return f"{asked} requested but this host has only {self.total}"
        if self.free == 0:
            return f"{asked} requested but all {self.total} are in use"
        verb = "is" if self.free == 1 else "are"
        return f"{asked} requested but only {self.free} of {self.total} {verb} free"


class QuotaExceeded(AllocationError):
    """Granting the request would put the user (or their group) over a GPU limit."""

    def __init__(self, requested: int, held: int, limit: int, scope: str) -> None:
        self.requested = requested
        self.held = held
        self.limit = limit
        self.scope = scope
        super().__init__(self._message())

    def _message(self) -> str:
        scope = f" ({self.scope})" if self.scope else ""
        if self.limit == 0:
            return f"GPU quota: GPU servers are not available to you{scope}"
        if self.held == 0:
            return (
                f"GPU quota: {_gpus(self.requested)} requested, the limit for you is "
                f"{self.limit}{scope}; choose a profile with fewer GPUs"
            )
        if self.held >= self.limit:
            return (
                f"GPU quota: you hold {_gpus(self.held)}, the limit for you is "
                f"{self.limit}{scope}; stop a GPU server first"
            )
        return (
            f"GPU quota: you hold {_gpus(self.held)} and ask for {self.requested} more, "
            f"the limit for you is {self.limit}{scope}; stop a GPU server or choose a "
            "profile with fewer GPUs"
        )


def _gpus(n: int) -> str:
    return f"{n} GPU" if n == 1 else f"{n} GPUs"


def check_quota(*, requested: int, held: int, limit: int | None, scope: str) -> None:
    """Raise :class:`QuotaExceeded` if ``held + requested`` GPUs would exceed ``limit``.

    ``limit=None`` means no limit; a request for 0 GPUs (a CPU server) always passes.
    ``scope`` says whose limit it is (e.g. ``"group 'students'"``) and is shown in brackets.
    """
    if limit is None or requested <= 0:
        return
    if held + requested > limit:
        raise QuotaExceeded(requested=requested, held=held, limit=limit, scope=scope)


def choose_gpus(inventory: Inventory, busy: Collection[str], count: int) -> tuple[str, ...]:
    """Pick ``count`` free devices, packing requests so that whole groups stay free.

    Devices are grouped by :attr:`GPU.placement_group`: the admin's ``group`` (an NVLink island,
    a NUMA node), else the physical GPU a MIG device lives on, else each GPU on its own.

    Policy (best fit):

    1. Among the groups whose free devices can take the whole request, pick the one with the
       *fewest* free devices. A request fills the gaps of partly used groups first, so the
       untouched groups stay whole for larger requests, and a multi-GPU job lands on devices
       that are close together.
    2. If no single group can take it, take from the fullest groups (fewest free) first.
    3. Ties, and the devices within a group, go by inventory order (index, then as listed),
       so the same state always gives the same answer.

    ``busy`` may hold any name of a device (id, index, UUID); names the inventory does not
    know are ignored. Returns canonical ids in inventory order, ``()`` for ``count == 0``.
    Raises :class:`NotEnoughGPUs` when fewer than ``count`` devices are free.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise AllocationError(f"a GPU request must be a whole number ≥ 0, got {count!r}")
    if count == 0:
        return ()
    taken = inventory.canonical(busy)
    position = {gpu.id: i for i, gpu in enumerate(inventory)}
    groups: dict[str, list[GPU]] = {}
    free_total = 0
    for gpu in inventory:
        if gpu.id not in taken:
            groups.setdefault(gpu.placement_group, []).append(gpu)
            free_total += 1
    if free_total < count:
        raise NotEnoughGPUs(requested=count, free=free_total, total=len(inventory))
    # dicts keep insertion order, so each group's first free device is its earliest one
    by_fit = sorted(groups.values(), key=lambda free: (len(free), position[free[0].id]))
    fitting = [free for free in by_fit if len(free) >= count]
    if fitting:
        chosen = fitting[0][:count]
    else:
        chosen = []
        for free in by_fit:
            chosen.extend(free[: count - len(chosen)])
            if len(chosen) == count:
                break
    return tuple(sorted((gpu.id for gpu in chosen), key=position.__getitem__))


class GPULedger:
    """Who holds which GPUs, in memory; one per hub and Docker engine.

    Every method is synchronous, so under asyncio a :meth:`claim` cannot interleave with
    another. Holders are opaque strings (the spawner uses one per server, e.g.
    ``"alice/train"``).
    """

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self._held: dict[str, tuple[str, ...]] = {}

    @property
    def total(self) -> int:
        return len(self.inventory)

    def claim(self, holder: str, count: int, *, external: Collection[str] = ()) -> tuple[str, ...]:
        """Give ``holder`` ``count`` free GPUs and record them.

        ``external`` are ids busy for reasons the ledger does not know (containers started by
        hand, another hub); they are never handed out. A holder that already holds GPUs must
        :meth:`release` them first. ``count == 0`` records nothing and returns ``()``.
        """
        held = self._held.get(holder)
        if held:
            raise AllocationError(
                f"'{holder}' already holds {_gpus(len(held))} ({', '.join(held)}); "
                "stop that server before starting it again"
            )
        busy = self.busy() | self.inventory.canonical(external)
        ids = choose_gpus(self.inventory, busy, count)
        if ids:
            self._held[holder] = ids
        return ids

    def release(self, holder: str) -> tuple[str, ...]:
        """Forget what ``holder`` held and return exactly that (``()`` if nothing)."""
        return self._held.pop(holder, ())

    def held_by(self, holder: str) -> tuple[str, ...]:
        return self._held.get(holder, ())

    def holders(self) -> dict[str, tuple[str, ...]]:
        """A copy: holder → the ids it holds."""
        return dict(self._held)

    def busy(self) -> frozenset[str]:
        """Every id some holder holds."""
        return frozenset(gpu_id for ids in self._held.values() for gpu_id in ids)

    def free_count(self, external: Collection[str] = ()) -> int:
        """Devices neither held nor in ``external``."""
        return self.total - len(self.busy() | self.inventory.canonical(external))

    def _ordered(self, ids: Collection[str]) -> tuple[str, ...]:
        wanted = self.inventory.canonical(ids)
        return tuple(gpu_id for gpu_id in self.inventory.ids() if gpu_id in wanted)

    def restore(self, holder: str, ids: Collection[str]) -> tuple[str, ...]:
        """Re-adopt the GPUs of a server that is still running (e.g. after a hub restart).

        Replaces what ``holder`` held. Ids the inventory does not know are dropped; returns
        the canonical ids adopted. Raises :class:`AllocationError` if another holder holds any.
        """
        adopted = self._ordered(ids)
        for other, theirs in self._held.items():
            clash = sorted(set(adopted) & set(theirs))
            if other != holder and clash:
                raise AllocationError(
                    f"cannot re-adopt GPU(s) {', '.join(clash)} for '{holder}': "
                    f"'{other}' holds them"
                )
        if adopted:
            self._held[holder] = adopted
        else:
            self._held.pop(holder, None)
        return adopted

    def sync(self, observed: Mapping[str, Collection[str]]) -> list[str]:
        """Replace the ledger's view with what Docker shows running: holder → ids.

        Ids the inventory does not know are dropped. If two holders are seen on the same
        device, both are kept (the device is busy either way) and each such device is
        reported: the returned list has one sentence per conflict, for the hub log.
        """
        held: dict[str, tuple[str, ...]] = {}
        for holder, ids in observed.items():
            adopted = self._ordered(ids)
            if adopted:
                held[holder] = adopted
        self._held = held
        owners: dict[str, list[str]] = {}
        for holder, ids in held.items():
            for gpu_id in ids:
                owners.setdefault(gpu_id, []).append(holder)
        return [
            f"GPU {gpu_id} is used by {len(names)} servers at once: "
            + ", ".join(f"'{name}'" for name in sorted(names))
            for gpu_id in self.inventory.ids()
            if len(names := owners.get(gpu_id, [])) > 1
        ]


__all__ = [
    "AllocationError",
    "GPULedger",
    "NotEnoughGPUs",
    "QuotaExceeded",
    "check_quota",
    "choose_gpus",
]
