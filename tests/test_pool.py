"""The GPU pool against a fake engine: the ledger is the truth for the hub's own holders.

An observation may add GPUs held by other containers and drop a holder whose container it
has positively seen gone, never a holder claimed or marked running while Docker was being
read; the spawn form's and the dashboard's reads (``refresh``) never release anything.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from spawner.core.allocator import NotEnoughGPUs
from spawner.core.inventory import GPU, Inventory
from spawner.core.pool import GPUPool, GPUWaitTimeout, Observation, QueueLimitReached


class FakeEngine:
    """Containers by name with the GPU ids they hold; an observation can be held mid-read."""

    def __init__(self) -> None:
        self.containers: dict[str, frozenset[str]] = {}
        self.gate: asyncio.Event | None = None
        self.reading = asyncio.Event()

    async def observe(self) -> Observation:
        listed = dict(self.containers)  # what Docker lists at the moment it is asked
        if self.gate is not None:
            self.reading.set()
            await self.gate.wait()
        busy = frozenset(i for ids in listed.values() for i in ids)
        return Observation(busy=busy, live=frozenset(listed))

    def pause_reads(self) -> asyncio.Event:
        self.gate = asyncio.Event()
        self.reading = asyncio.Event()
        return self.gate


def pool_of(n: int) -> tuple[GPUPool, FakeEngine]:
    engine = FakeEngine()
    inventory = Inventory([GPU(id=str(i), index=i, name="T4") for i in range(n)])
    return GPUPool(inventory, engine.observe, recheck_interval=0.05), engine


async def start_server(pool: GPUPool, engine: FakeEngine, name: str) -> tuple[str, ...]:
    ids = await pool.acquire(name, 1, user=name, timeout=0)
    engine.containers[name] = frozenset(ids)
    pool.mark_running(name)
    return ids


@pytest.mark.parametrize("reader", ["refresh", "acquire"])
async def test_a_holder_marked_running_during_a_read_keeps_its_gpu(reader: str) -> None:
    """The race seen in-process: alice's container is not listed yet when a read begins, she
    is marked running while it is under way; the read must not hand her GPU to bob."""
    pool, engine = pool_of(1)
    alice = await pool.acquire("alice", 1, user="alice", timeout=0)
    gate = engine.pause_reads()
    if reader == "refresh":
        read = asyncio.ensure_future(pool.refresh())
    else:
        read = asyncio.ensure_future(pool.acquire("carol", 1, user="carol", timeout=0))
    await engine.reading.wait()
    engine.containers["alice"] = frozenset(alice)  # her container comes up meanwhile
    pool.mark_running("alice")
    gate.set()
    engine.gate = None
    if reader == "refresh":
        await read
    else:
        with pytest.raises(NotEnoughGPUs):
            await read
    assert pool.ledger.held_by("alice") == ("0",)
    with pytest.raises(NotEnoughGPUs):
        await pool.acquire("bob", 1, user="bob", timeout=0)


async def test_refresh_never_releases_and_placement_drops_a_container_seen_gone() -> None:
    pool, engine = pool_of(2)
    await start_server(pool, engine, "alice")
    del engine.containers["alice"]  # killed behind the hub's back
    snapshot = await pool.refresh()
    assert pool.ledger.held_by("alice") == ("0",)
    assert snapshot.free == 1
    ids = await pool.acquire("bob", 2, user="bob", timeout=0)  # a placement reconciles
    assert sorted(ids) == ["0", "1"]
    assert pool.ledger.held_by("alice") == ()


async def test_a_claim_not_yet_running_is_never_dropped() -> None:
    pool, _engine = pool_of(1)
    await pool.acquire("alice", 1, user="alice", timeout=0)  # container still being created
    with pytest.raises(NotEnoughGPUs):
        await pool.acquire("bob", 1, user="bob", timeout=0)
    assert pool.ledger.held_by("alice") == ("0",)


async def test_hand_over_keeps_the_gpus_until_the_clean_up_releases_them() -> None:
    pool, engine = pool_of(1)
    await start_server(pool, engine, "alice")
    key = pool.hand_over("alice")
    assert key.startswith("alice#cleanup-")
    assert pool.ledger.held_by("alice") == ()
    assert pool.ledger.held_by(key) == ("0",)
    assert [g.holding.holder for g in pool.view().gpus if g.holding] == [key]
    del engine.containers["alice"]  # gone, but the clean-up has not said so yet
    with pytest.raises(NotEnoughGPUs):
        await pool.acquire("bob", 1, user="bob", timeout=0)
    assert pool.release(key) == ("0",)
    assert await pool.acquire("bob", 1, user="bob", timeout=0) == ("0",)
    assert pool.hand_over("nobody") == ""


async def test_another_containers_gpus_count_as_busy() -> None:
    pool, engine = pool_of(2)
    engine.containers["by-hand"] = frozenset({"1"})
    assert await pool.acquire("alice", 1, user="alice", timeout=0) == ("0",)
    with pytest.raises(NotEnoughGPUs):
        await pool.acquire("bob", 1, user="bob", timeout=0)


async def test_a_timed_out_wait_says_a_free_gpu_is_held_for_the_request_ahead() -> None:
    pool, engine = pool_of(2)
    await start_server(pool, engine, "alice")
    bob = asyncio.ensure_future(pool.acquire("bob", 2, user="bob", timeout=30))
    await asyncio.sleep(0.1)  # bob is at the head of the queue
    with pytest.raises(GPUWaitTimeout) as refused:
        await pool.acquire("carol", 1, user="carol", timeout=0.3)
    assert "1 GPU is free, but held for the 2-GPU request ahead of you" in str(refused.value)
    bob.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await bob
    assert await pool.acquire("carol", 1, user="carol", timeout=0) == ("1",)


async def test_one_user_may_have_only_so_many_requests_waiting() -> None:
    pool, engine = pool_of(1)
    await start_server(pool, engine, "other")
    first = asyncio.ensure_future(
        pool.acquire("ann-a", 1, user="ann", timeout=30, max_waiting_per_user=1)
    )
    await asyncio.sleep(0.05)
    with pytest.raises(QueueLimitReached, match="already have 1 GPU request waiting"):
        await pool.acquire("ann-b", 1, user="ann", timeout=30, max_waiting_per_user=1)
    # someone else still queues
    second = asyncio.ensure_future(
        pool.acquire("ben", 1, user="ben", timeout=30, max_waiting_per_user=1)
    )
    await asyncio.sleep(0.05)
    assert [w.user for w in pool.view().queue] == ["ann", "ben"]
    for task in (first, second):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
