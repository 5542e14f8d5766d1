"""The hub runtime: one owner of the shared state, made once, reset explicitly."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY, generate_latest
from traitlets.config import Config

from spawner.backends.docker import GPUDockerSpawner
from spawner.backends.swarm import GPUSwarmSpawner
from spawner.core.inventory import parse_static_inventory
from spawner.core.pool import GPUPool, Observation
from spawner.runtime.runtime import (
    RuntimeSettings,
    ServerRegistry,
    create_runtime,
    get_runtime,
    reset_runtime,
)


def _user(name: str = "ann") -> SimpleNamespace:
    return SimpleNamespace(name=name, groups=[], url=f"/user/{name}/")


def test_made_once_from_the_first_settings_and_gone_after_reset() -> None:
    assert get_runtime() is None
    first = create_runtime(RuntimeSettings(docker_threads=3))
    assert create_runtime(RuntimeSettings(docker_threads=9)) is first
    assert first.executor._max_workers == 3
    reset_runtime()
    assert get_runtime() is None
    assert create_runtime(RuntimeSettings(docker_threads=9)).executor._max_workers == 9


def test_every_spawner_shares_the_hubs_runtime_whatever_its_class() -> None:
    config = Config()
    config.GPUDockerSpawner.docker_threads = 2
    single = GPUDockerSpawner(config=config, user=_user())
    swarm = GPUSwarmSpawner(config=config, user=_user("ben"))
    assert single.runtime is swarm.runtime is get_runtime()
    assert single.executor is swarm.executor
    assert single.client_kwargs_resolved() == swarm.client_kwargs_resolved()


def _gauge(name: str) -> float | None:
    for line in generate_latest(REGISTRY).decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


async def test_the_metrics_collector_lives_and_dies_with_the_runtime() -> None:
    runtime = create_runtime(RuntimeSettings())

    async def observe() -> Observation:
        return Observation(frozenset({"1"}), frozenset())

    runtime.sources["test"] = GPUPool(parse_static_inventory(3, option="t"), observe)
    await runtime.sources["test"].refresh()
    assert _gauge("jupyterhub_gpus_total") == 3
    assert _gauge("jupyterhub_gpus_external") == 1
    reset_runtime()
    assert _gauge("jupyterhub_gpus_total") is None  # unregistered: no stale gauges


async def test_start_slots_let_n_start_at_once_and_tell_the_others() -> None:
    runtime = create_runtime(RuntimeSettings(start_concurrency=2))
    told: list[str] = []
    inside = 0
    most = 0

    async def start() -> None:
        nonlocal inside, most
        async with runtime.start_slot(told.append):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.02)
            inside -= 1

    await asyncio.gather(*(start() for _ in range(5)))
    assert most == 2
    assert told and all(t.startswith("Waiting to start: 2 servers") for t in told)
    assert runtime.starting == 0


async def test_no_start_limit_when_zero() -> None:
    runtime = create_runtime(RuntimeSettings(start_concurrency=0))
    told: list[str] = []
    async with runtime.start_slot(told.append), runtime.start_slot(told.append):
        pass
    assert told == []


def test_the_server_registry_calls_its_listener_for_the_first_server() -> None:
    registry = ServerRegistry()
    calls: list[int] = []
    registry.on_first(lambda: calls.append(len(registry)))
    a, b = object(), object()
    registry.track(("ann", ""), a)
    registry.track(("ben", ""), b)
    registry.untrack(("ann", ""), b)  # not the tracked object: kept
    assert len(registry) == 2 and calls == [1]
    registry.untrack(("ann", ""), a)
    registry.untrack(("ben", ""), b)
    registry.track(("cat", "x"), a)
    assert calls == [1, 1]
    assert registry.running() == [(("cat", "x"), a)]


async def test_reset_cancels_background_tasks() -> None:
    runtime = create_runtime(RuntimeSettings())
    task = runtime.spawn(asyncio.sleep(60))
    reset_runtime()
    await asyncio.sleep(0)
    assert task.cancelled() or task.done()


@pytest.mark.parametrize("limit", [None, 0, 3])
def test_start_limit_defaults_to_the_cpus(limit: int | None) -> None:
    import os

    settings = RuntimeSettings(start_concurrency=limit)
    expected = (os.cpu_count() or 1) if limit is None else limit
    assert settings.start_limit == expected
