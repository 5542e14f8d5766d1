"""The hub runtime: one object per hub process that owns what every spawner shares.

It owns the Docker executor, the start slots, the GPU inventories and pools, the engine
observers, the NVML sampler, the registry of running servers (which the idle reclaimer reads),
the GPU sources the dashboard and metrics read (a single-host pool or a swarm's nodes), the
hub's background tasks and the metrics collector. It is created once from the hub's config
(:func:`create_runtime`, called at hub start-up, or on a spawner's first use with that
spawner's settings) and torn down explicitly with :func:`reset_runtime`, which the tests call
between hubs in one process, as kubespawner stops its class-level reflectors in one place.

No JupyterHub import: spawner objects are held as opaque values.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from spawner.core.inventory import Inventory
from spawner.core.pool import GPUPool, PoolView
from spawner.runtime.metrics import SourceCollector
from spawner.runtime.nvml import GPUSampler
from spawner.runtime.usagestore import UsageStore

T = TypeVar("T")


class GPUSource(Protocol):
    """Where the GPUs of one backend are seen: a single-host pool, or a swarm's nodes."""

    async def refresh(self) -> Any:
        """Bring the view up to date (cheap: it reads the engine observer's cache)."""

    def view(self) -> PoolView:
        """Every GPU with its state and holder, and the wait queue."""


@dataclass(frozen=True)
class RuntimeSettings:
    """What the hub's config says about the shared parts (read once, when it is created)."""

    docker_threads: int = 8
    start_concurrency: int | None = None

    @property
    def start_limit(self) -> int:
        """Servers that start at once (0: no limit); unset: the CPUs of the hub's host."""
        if self.start_concurrency is None:
            return os.cpu_count() or 1
        return self.start_concurrency


class ServerRegistry:
    """The servers of this hub that are running, by (user, server name); the idle reclaimer
    checks these. Backends track a server once it answers and untrack it when it stops."""

    def __init__(self) -> None:
        self._servers: dict[tuple[str, str], Any] = {}
        self._listeners: list[Callable[[], None]] = []

    def track(self, key: tuple[str, str], server: Any) -> None:
        first = not self._servers
        self._servers[key] = server
        if first:
            for listener in list(self._listeners):
                listener()

    def untrack(self, key: tuple[str, str], server: Any) -> None:
        if self._servers.get(key) is server:
            del self._servers[key]

    def running(self) -> list[tuple[tuple[str, str], Any]]:
        return list(self._servers.items())

    def on_first(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever the first server is tracked (the reclaimer's loop)."""
        self._listeners.append(listener)

    def __len__(self) -> int:
        return len(self._servers)


class HubRuntime:
    """The shared state of one hub process (see the module's docstring)."""

    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        self._executor: ThreadPoolExecutor | None = None
        self.inventories: dict[str, Inventory] = {}
        self.pools: dict[Hashable, GPUPool] = {}
        self.sources: dict[Hashable, GPUSource] = {}
        self.observers: dict[str, Any] = {}  # engine address -> EngineObserver
        self._observed_since: dict[str, float] = {}
        self.docker_roots: dict[str, str] = {}
        self.clients: dict[str, Any] = {}  # client arguments -> docker.APIClient
        self.sampler = GPUSampler()
        self.servers = ServerRegistry()
        # when a running server's GPUs free up at the latest (the reclaimer's rules): the
        # queue's estimate; None until the reclaimer is attached
        self.release_estimator: Callable[[tuple[str, str], Any], float | None] | None = None
        # GPU-hours: the records' store of each database URL, and the accountant's way to
        # bring them up to date before a budget is read (None until it is attached)
        self.usage_stores: dict[str, UsageStore] = {}
        self.usage_sync: Callable[[], Awaitable[None]] | None = None
        self.attachments: dict[type, Any] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._slots: dict[int, asyncio.Semaphore] = {}
        self.starting = 0
        self.collector = SourceCollector(lambda: list(self.sources.values()))
        self.collector.register()

    # -- threads and tasks ----------------------------------------------------------------

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The threads every Docker call of this hub runs in (``docker_threads``)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                self.settings.docker_threads, thread_name_prefix="gpuws-docker"
            )
        return self._executor

    def keep(self, future: asyncio.Future[T]) -> asyncio.Future[T]:
        """Hold a reference to a background task or clean-up until it ends (and stop it at
        reset)."""
        self._tasks.add(future)
        future.add_done_callback(self._tasks.discard)
        return future

    def spawn(self, coroutine: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        return self.keep(asyncio.ensure_future(coroutine))

    # -- start slots ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def start_slot(self, report: Callable[[str], None]) -> AsyncIterator[None]:
        """Hold one of the hub's start slots while a server starts (``start_concurrency``);
        ``report`` tells the waiting user how many are ahead."""
        limit = self.settings.start_limit
        if not limit:
            yield
            return
        slots = self._slots.setdefault(id(asyncio.get_running_loop()), asyncio.Semaphore(limit))
        if slots.locked():
            waiting = max(self.starting - limit, 0)
            report(
                f"Waiting to start: {limit} servers are starting now, {waiting} more before yours"
            )
        self.starting += 1
        try:
            async with slots:
                yield
        finally:
            self.starting -= 1

    # -- the parts, made once -------------------------------------------------------------

    def attach(self, kind: type[T], make: Callable[[], T]) -> T:
        """The one ``kind`` object of this hub (e.g. the reclaimer), made on first use."""
        if kind not in self.attachments:
            self.attachments[kind] = make()
        found: T = self.attachments[kind]
        return found

    def client(self, key: str, make: Callable[[], T]) -> T:
        """The Docker client made with one set of arguments (one per engine, in practice)."""
        if key not in self.clients:
            self.clients[key] = make()
        found: T = self.clients[key]
        return found

    def usage_store(self, url: str) -> UsageStore:
        """The GPU-hours store of one database (the hub's own, in practice)."""
        if url not in self.usage_stores:
            self.usage_stores[url] = UsageStore(url)
        return self.usage_stores[url]

    def observer(self, address: str, make: Callable[[], Any]) -> Any:
        """The engine observer of one engine address, made and started on first use."""
        if address not in self.observers:
            observer = self.observers[address] = make()
            self._observed_since[address] = time.monotonic()
            observer.start()
        return self.observers[address]

    def observer_age(self, address: str) -> float:
        """Seconds since the observer of ``address`` was started (inf: none was)."""
        since = self._observed_since.get(address)
        return time.monotonic() - since if since is not None else float("inf")

    def views(self) -> list[PoolView]:
        """What the dashboard and the metrics show, every backend alike."""
        return [source.view() for source in list(self.sources.values())]

    def close(self) -> None:
        """Stop everything this runtime started: observers, tasks, threads, the collector."""
        for observer in self.observers.values():
            with contextlib.suppress(Exception):
                observer.stop()
        for attached in self.attachments.values():
            closer = getattr(attached, "close", None)
            if callable(closer):
                with contextlib.suppress(Exception):
                    closer()
        for task in list(self._tasks):
            task.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        for client in self.clients.values():
            with contextlib.suppress(Exception):
                client.close()
        for store in self.usage_stores.values():
            with contextlib.suppress(Exception):
                store.close()
        self.collector.unregister()


_RUNTIME: HubRuntime | None = None


def create_runtime(settings: RuntimeSettings) -> HubRuntime:
    """The hub's runtime, made from its config once; later calls return the same one."""
    global _RUNTIME
    if _RUNTIME is None:
        _RUNTIME = HubRuntime(settings)
    return _RUNTIME


def get_runtime() -> HubRuntime | None:
    """The runtime of this process, if one was created."""
    return _RUNTIME


def reset_runtime() -> None:
    """Stop and forget this process's runtime (tests; a hub process never needs it)."""
    global _RUNTIME
    if _RUNTIME is not None:
        _RUNTIME.close()
    _RUNTIME = None


__all__ = [
    "GPUSource",
    "HubRuntime",
    "RuntimeSettings",
    "ServerRegistry",
    "create_runtime",
    "get_runtime",
    "reset_runtime",
]
