"""The pool's view (who holds which GPU, the queue) and the Prometheus metrics built on it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from spawner.core.allocator import NotEnoughGPUs, QuotaExceeded
from spawner.core.inventory import parse_static_inventory
from spawner.core.pool import GPUPool, GPUWaitTimeout, Observation
from spawner.runtime import metrics


def make_pool(n: int = 4, external: frozenset[str] = frozenset()) -> GPUPool:
    async def observe() -> Observation:
        return Observation(external, frozenset())

    return GPUPool(parse_static_inventory(n, option="test"), observe, recheck_interval=0.01)


def scrape(pools: list[GPUPool]) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(metrics.SourceCollector(lambda: pools))
    text = generate_latest(registry).decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_view_shows_holders_with_their_server_profile_and_since() -> None:
    pool = make_pool(4)
    await pool.acquire("gpuws-ann", 1, user="ann", timeout=0, server="", profile="gpu-1")
    await pool.acquire("gpuws-ben-big", 2, user="ben", timeout=0, server="big", profile="gpu-2")
    view = pool.view()
    states = [(g.gpu.id, g.state, g.holding.user if g.holding else None) for g in view.gpus]
    held = {gpu_id: user for gpu_id, state, user in states if state == "held"}
    assert sorted(held.values()) == ["ann", "ben", "ben"]
    ben = next(g.holding for g in view.gpus if g.holding and g.holding.user == "ben")
    assert (ben.server, ben.profile, len(ben.ids)) == ("big", "gpu-2", 2)
    assert ben.since > 0
    assert view.count("free") == 1
    pool.release("gpuws-ben-big")
    assert pool.view().count("free") == 3


async def test_view_lists_the_queue_in_order_and_external_gpus() -> None:
    pool = make_pool(2, external=frozenset({"1"}))
    await pool.acquire("gpuws-ann", 1, user="ann", timeout=0, profile="gpu-1")
    waiter = asyncio.ensure_future(
        pool.acquire("gpuws-cat", 1, user="cat", timeout=30, server="x", profile="gpu-1")
    )
    while not pool.view().queue:
        await asyncio.sleep(0.01)
    view = pool.view()
    assert [(w.position, w.user, w.server, w.count) for w in view.queue] == [(0, "cat", "x", 1)]
    assert [g.state for g in view.gpus] == ["held", "external"]
    pool.release("gpuws-ann")
    assert await waiter == ("0",)
    assert pool.view().queue == ()


async def test_restore_keeps_the_start_time_it_is_given() -> None:
    pool = make_pool(2)
    pool.restore("gpuws-dan", ["1"], user="dan", groups=[], profile="gpu-1", since=1000.0)
    holding = pool.view().gpus[1].holding
    assert holding is not None and (holding.user, holding.since) == ("dan", 1000.0)


async def test_gauges_follow_the_pool() -> None:
    pool = make_pool(4, external=frozenset({"3"}))
    await pool.refresh()
    await pool.acquire("gpuws-ann", 2, user="ann", timeout=0)
    waiter = asyncio.ensure_future(pool.acquire("gpuws-ben", 2, user="ben", timeout=30))
    while not pool.view().queue:
        await asyncio.sleep(0.01)
    values = scrape([pool])
    assert values["jupyterhub_gpus_total"] == 4
    assert values["jupyterhub_gpus_allocated"] == 2
    assert values["jupyterhub_gpus_external"] == 1
    assert values["jupyterhub_gpus_free"] == 1
    assert values["jupyterhub_gpu_queue_length"] == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert scrape([pool])["jupyterhub_gpu_queue_length"] == 0


def test_gauges_without_a_pool_are_zero() -> None:
    assert scrape([])["jupyterhub_gpus_total"] == 0


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (None, "success"),
        (GPUWaitTimeout("late"), "timeout"),
        (NotEnoughGPUs(1, 0, 1), "timeout"),
        (QuotaExceeded(1, 2, 2, "each user"), "quota"),
        (asyncio.CancelledError(), "cancelled"),
        (RuntimeError("docker"), "failure"),
    ],
)
def test_wait_status(error: BaseException | None, status: str) -> None:
    assert metrics.wait_status(error) == status


def _histogram_count(status: str) -> float:
    for family in metrics.GPU_WAIT_DURATION.collect():
        for sample in family.samples:
            if sample.name.endswith("_count") and sample.labels.get("status") == status:
                return float(sample.value)
    return 0.0


def test_timed_wait_observes_the_duration_with_how_it_ended() -> None:
    ticks = iter([10.0, 12.5, 20.0, 21.0])
    clock: Any = lambda: next(ticks)  # noqa: E731 - a fake clock, the only thing faked
    before_ok, before_quota = _histogram_count("success"), _histogram_count("quota")
    with metrics.timed_gpu_wait(clock):
        pass
    with pytest.raises(QuotaExceeded), metrics.timed_gpu_wait(clock):
        raise QuotaExceeded(1, 2, 2, "each user")
    assert _histogram_count("success") == before_ok + 1
    assert _histogram_count("quota") == before_quota + 1


def test_metric_names_follow_jupyterhub() -> None:
    names = {
        family.name
        for metric in (
            metrics.GPU_WAIT_DURATION,
            metrics.GPU_ALLOCATIONS,
            metrics.GPU_IDLE_RECLAIMED,
        )
        for family in metric.describe()
    }
    # prometheus_client exposes counters with a _total suffix
    assert names == {
        "jupyterhub_gpu_wait_duration_seconds",
        "jupyterhub_gpu_allocations",
        "jupyterhub_gpu_idle_reclaimed",
    }


def test_allocations_without_a_profile_are_counted_as_none() -> None:
    counter = metrics.GPU_ALLOCATIONS.labels(profile="none")
    before = counter._value.get()  # type: ignore[attr-defined]
    metrics.count_allocation("")
    assert counter._value.get() == before + 1  # type: ignore[attr-defined]
