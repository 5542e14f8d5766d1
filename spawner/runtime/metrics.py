"""Prometheus metrics of the GPU pool, served on the hub's own ``/hub/metrics``.

Registered in prometheus_client's default registry, the one JupyterHub serves, and named the
way JupyterHub names its own (``jupyterhub_`` prefix, ``_seconds`` for durations, ``_total``
for counters):

- ``jupyterhub_gpus_total``, ``jupyterhub_gpus_allocated``, ``jupyterhub_gpus_free``,
  ``jupyterhub_gpus_external`` and ``jupyterhub_gpu_queue_length``: gauges read from the pool
  at scrape time, so they are never stale;
- ``jupyterhub_gpu_wait_duration_seconds{status}``: how long spawns waited for their GPUs;
- ``jupyterhub_gpu_allocations_total{profile}``: GPU allocations, by profile;
- ``jupyterhub_gpu_idle_reclaimed_total``: GPU servers stopped for being idle.
- ``jupyterhub_session_limit_stops_total``: servers stopped at their profile's session limit.
- ``jupyterhub_gpu_seconds_total{profile,group}``: GPU-seconds used, from the GPU-hours
  records and their summaries (so it survives hub restarts and retention); a user in two
  groups counts in both; ``jupyterhub_gpu_user_seconds_total{user}`` behind an option.

No Docker import: the hub runtime hands in its GPU sources.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from spawner.core.allocator import NotEnoughGPUs, QuotaExceeded
from spawner.core.pool import GPUWaitTimeout
from spawner.core.usage import Piece, UsageRecord, totals

#: Buckets of the wait histogram: most spawns get their GPUs at once; a queue waits minutes.
WAIT_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))

GPU_WAIT_DURATION = Histogram(
    "jupyterhub_gpu_wait_duration_seconds",
    "Time a spawn waited for its GPUs (status: success, timeout, quota, cancelled, failure)",
    ["status"],
    buckets=WAIT_BUCKETS,
)
GPU_ALLOCATIONS = Counter(
    "jupyterhub_gpu_allocations",
    "GPU allocations (servers that got their GPUs), by workspace profile",
    ["profile"],
)
GPU_IDLE_RECLAIMED = Counter(
    "jupyterhub_gpu_idle_reclaimed",
    "GPU servers stopped because they were idle (their GPUs went back to the pool)",
)

SESSION_LIMIT_STOPS = Counter(
    "jupyterhub_session_limit_stops",
    "Servers stopped because their profile's session limit (max_age) was reached",
)

#: The profile label when a server runs without profiles (static ``gpu_count``).
NO_PROFILE = "none"


def wait_status(error: BaseException | None) -> str:
    """The ``status`` label for a finished wait: how it ended."""
    if error is None:
        return "success"
    if isinstance(error, GPUWaitTimeout | NotEnoughGPUs):
        return "timeout"
    if isinstance(error, QuotaExceeded):
        return "quota"
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    return "failure"


@contextlib.contextmanager
def timed_gpu_wait(clock: Callable[[], float] = time.monotonic) -> Iterator[None]:
    """Observe how long the block (a spawn waiting for GPUs) took, labelled by how it ended."""
    started = clock()
    error: BaseException | None = None
    try:
        yield
    except BaseException as e:
        error = e
        raise
    finally:
        GPU_WAIT_DURATION.labels(status=wait_status(error)).observe(clock() - started)


def count_allocation(profile: str) -> None:
    GPU_ALLOCATIONS.labels(profile=profile or NO_PROFILE).inc()


def count_idle_reclaim() -> None:
    GPU_IDLE_RECLAIMED.inc()


def count_session_limit_stop() -> None:
    SESSION_LIMIT_STOPS.inc()


class SourceCollector(Collector):
    """Gauges of every GPU source of this hub (single-host pools, a swarm's nodes), read when
    Prometheus scrapes. The hub's runtime registers it when it is made and unregisters it
    at reset, so a process never serves a stale runtime's gauges."""

    def __init__(self, sources: Callable[[], Iterable[Any]]) -> None:
        self._sources = sources
        self._registered = False

    def collect(self) -> Iterator[Metric]:
        total = allocated = free = external = queued = 0
        for source in list(self._sources()):
            view = source.view()
            total += len(view.gpus)
            allocated += view.count("held")
            free += view.count("free")
            external += view.count("external")
            queued += len(view.queue)
        for name, doc, value in (
            ("jupyterhub_gpus_total", "GPUs this hub hands out (its inventory)", total),
            ("jupyterhub_gpus_allocated", "GPUs held by this hub's servers", allocated),
            ("jupyterhub_gpus_free", "GPUs nobody holds, ready for the next spawn", free),
            (
                "jupyterhub_gpus_external",
                "GPUs held by containers this hub did not start (e.g. docker run --gpus)",
                external,
            ),
            ("jupyterhub_gpu_queue_length", "Spawns waiting for GPUs", queued),
        ):
            yield GaugeMetricFamily(name, doc, value=value)

    def register(self, registry: CollectorRegistry = REGISTRY) -> None:
        if not self._registered:
            registry.register(self)
            self._registered = True

    def unregister(self, registry: CollectorRegistry = REGISTRY) -> None:
        if self._registered:
            registry.unregister(self)
            self._registered = False


#: (open records, ended records summed per user/profile/groups and the summaries, the
#: per-user totals of summarised records)
UsageSnapshot = tuple[list[UsageRecord], list[Piece], dict[str, float]]


class UsageCollector(SourceCollector):
    """GPU-seconds counters as of the accountant's last pass (an open record up to when it
    was last seen running, so they never go down), registered while the accountant runs."""

    def __init__(self, read: Callable[[], UsageSnapshot], per_user: bool) -> None:
        super().__init__(lambda: [])
        self._read = read
        self._per_user = per_user

    def collect(self) -> Iterator[Metric]:
        records, summaries, retired = self._read()
        now = time.time()
        family = CounterMetricFamily(
            "jupyterhub_gpu_seconds",
            "GPU-seconds used by this hub's servers, by profile and group (a user's use "
            'counts in each group they were in at spawn; group "" for none)',
            labels=["profile", "group"],
        )
        for (profile, group), seconds in sorted(totals(records, summaries, now).items()):
            family.add_metric([profile or NO_PROFILE, group], seconds)
        yield family
        if not self._per_user:
            return
        per_user = CounterMetricFamily(
            "jupyterhub_gpu_user_seconds", "GPU-seconds used, by user", labels=["user"]
        )
        users = dict(retired)
        for record in records:
            users[record.user] = users.get(record.user, 0.0) + record.gpu_seconds(now)
        for piece in summaries:
            if piece.user:  # ended records summed by the store (summaries have no name)
                users[piece.user] = users.get(piece.user, 0.0) + piece.gpu_seconds
        for user, seconds in sorted(users.items()):
            per_user.add_metric([user], seconds)
        yield per_user


__all__ = [
    "GPU_ALLOCATIONS",
    "GPU_IDLE_RECLAIMED",
    "GPU_WAIT_DURATION",
    "SESSION_LIMIT_STOPS",
    "SourceCollector",
    "UsageCollector",
    "count_allocation",
    "count_idle_reclaim",
    "count_session_limit_stop",
    "timed_gpu_wait",
    "wait_status",
]
