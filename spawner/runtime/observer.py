"""One observer per Docker engine: a cache of its containers, fed by Docker's event stream.

Placement, the spawn form, the dashboard and every poll read this cache instead of listing and
inspecting containers themselves. The idea is kubespawner's reflector: list once, then follow
the changes, and list again whenever the stream may have missed something.

- On (re)connect: ``info`` once (the engine's clock and DefaultRuntime), subscribe to the
  container events from that instant on, list every container and inspect each once. The
  subscription comes before the list, so nothing that happens while listing is missed; an
  event for something the list already shows only re-inspects it, which is harmless.
- While following: ``destroy`` drops a record, a lifecycle event (create, start, die, ...)
  re-inspects that one container, anything else (exec_*, health_status, ...) is ignored. An
  idle engine costs no API call at all.
- The subscription ends by itself after ``resync_interval`` (Docker's ``until``): the list is
  read again, a safety net against a missed event; ``synced`` stays True through it.
- A lost stream (engine restart, socket error) turns ``synced`` False at once; the observer
  retries with a backoff (0.5 s doubling to 5 s), then lists again. Readers that find
  ``synced`` False ask the engine themselves.

The cache sits behind one lock, and readers only ever get frozen records.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal

import docker

from spawner.core.devices import ClaimedGPUs, claimed_gpus

#: States in which a container holds its GPUs ("created": they are given to it at start).
LIVE_STATES = frozenset({"created", "running", "paused", "restarting"})
#: States in which Docker's ``State.Running`` is true (what DockerSpawner.poll reads).
RUNNING_STATES = frozenset({"running", "paused", "restarting"})
#: Events after which the container is inspected again; ``destroy`` removes it.
REINSPECT_ACTIONS = frozenset(
    {"create", "start", "die", "stop", "kill", "pause", "unpause", "restart", "rename", "oom"}
)
#: The kinds of API call counted in ``EngineObserver.api_calls``.
API_KINDS = ("info", "list", "inspect", "events")
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 5.0
#: How many destroyed ids are remembered, so ``wait_seen`` knows a container that came and went.
_GONE_MEMORY = 4096

_RFC3339_RE = re.compile(
    r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", re.ASCII | re.IGNORECASE
)


def created_ns(stamp: str) -> int:
    """A Docker time (``Created``, ``SystemTime``: RFC 3339, up to 9 fraction digits) in
    nanoseconds since the epoch. Exact to the nanosecond, where a float would round."""
    match = _RFC3339_RE.fullmatch(stamp.strip()) if isinstance(stamp, str) else None
    if match is None:
        raise ValueError(f"{stamp!r} is not an RFC 3339 time such as 2024-05-01T10:00:00.5Z")
    base, fraction, zone = match.groups()
    offset = "+00:00" if zone.upper() == "Z" else zone
    seconds = int(datetime.fromisoformat(base + offset).timestamp())
    return seconds * 1_000_000_000 + int((fraction or "")[:9].ljust(9, "0"))


def api_timestamp(ns: int) -> str:
    """Nanoseconds as the Docker API's ``since`` / ``until`` want them: ``seconds.nanos``."""
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


@dataclass(frozen=True)
class ContainerRecord:
    """What the hub needs to know of one container, from its ``docker inspect``."""

    id: str
    name: str  # without the leading "/"
    labels: Mapping[str, str] = field(hash=False)
    state: str  # State.Status: created|running|paused|restarting|removing|exited|dead
    exit_code: int | None
    error: str  # State.Error
    finished_at: str  # State.FinishedAt
    created_ns: int  # Created, in nanoseconds (0 when Docker gave none we can read)
    claim: ClaimedGPUs | None  # the GPUs it holds; None: none at all
    started_at: str = ""  # State.StartedAt ("0001-01-01T00:00:00Z": never started)

    @property
    def live(self) -> bool:
        """Whether it holds its GPUs (created, running, paused or restarting)."""
        return self.state in LIVE_STATES

    @property
    def running(self) -> bool:
        """Docker's ``State.Running``: running, paused or restarting."""
        return self.state in RUNNING_STATES


def record_from_inspect(doc: Mapping[str, Any], default_runtime: str = "runc") -> ContainerRecord:
    """The record of one ``docker inspect`` document (``APIClient.inspect_container``)."""
    state = doc.get("State") or {}
    config = doc.get("Config") or {}
    exit_code = state.get("ExitCode")
    try:
        created = created_ns(str(doc.get("Created") or ""))
    except ValueError:
        created = 0  # counts as the oldest: in a GPU race it wins, ours tries other GPUs
    claim = claimed_gpus(
        doc.get("HostConfig") or {}, config.get("Env"), default_runtime=default_runtime
    )
    return ContainerRecord(
        id=str(doc["Id"]),
        name=str(doc.get("Name") or "").lstrip("/"),
        labels=MappingProxyType(dict(config.get("Labels") or {})),
        state=str(state.get("Status") or ""),
        exit_code=exit_code if isinstance(exit_code, int) else None,
        error=str(state.get("Error") or ""),
        finished_at=str(state.get("FinishedAt") or ""),
        created_ns=created,
        claim=claim or None,
        started_at=str(state.get("StartedAt") or ""),
    )


def event_effect(event: Mapping[str, Any]) -> tuple[Literal["inspect", "remove"], str] | None:
    """What one Docker event means for the cache: inspect that container again, remove it,
    or nothing (exec_*, health_status, attach, other object types)."""
    if str(event.get("Type") or "container") != "container":
        return None
    actor = event.get("Actor") or {}
    container_id = str(actor.get("ID") or event.get("id") or "")
    # "exec_create: sh -c env", "health_status: healthy": the verb is before the colon
    verb = str(event.get("Action") or event.get("status") or "").partition(":")[0].strip()
    if not container_id:
        return None
    if verb == "destroy":
        return ("remove", container_id)
    if verb in REINSPECT_ACTIONS:
        return ("inspect", container_id)
    return None


def event_ns(event: Mapping[str, Any]) -> int:
    """When a Docker event happened, in nanoseconds since the epoch."""
    return int(event.get("timeNano") or int(event.get("time") or 0) * 1_000_000_000)


def summary_name(summary: Mapping[str, Any]) -> str:
    """A ``docker ps`` entry's own name ("/a/alias" entries are links into other containers)."""
    names = [str(n).lstrip("/") for n in summary.get("Names") or ()]
    return next((n for n in names if "/" not in n), names[0] if names else "")


def next_backoff(delay: float) -> float:
    """The wait after ``delay``: doubling, at most BACKOFF_MAX."""
    return min(delay * 2, BACKOFF_MAX)


def _close_quietly(thing: Any) -> None:
    with contextlib.suppress(Exception):  # closing what may already be broken
        thing.close()


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class EngineObserver:
    """The containers of one Docker engine, kept up to date from its event stream.

    ``make_client`` returns a ``docker.APIClient``; the observer makes two on each connect,
    one for the blocking event stream and one for list and inspect.
    """

    def __init__(
        self,
        make_client: Callable[[], Any],
        *,
        name: str = "",
        resync_interval: float = 600.0,
        log: logging.Logger | None = None,
    ) -> None:
        if not resync_interval > 0:
            raise ValueError(
                f"resync_interval must be a number of seconds > 0, not {resync_interval!r}"
            )
        self.name = name or "engine"
        self.resync_interval = float(resync_interval)
        self.log = log or logging.getLogger(__name__)
        self.version = 0  # bumps on every change of the cache or of ``synced``
        self.default_runtime = "runc"
        self.api_calls: collections.Counter[str] = collections.Counter(dict.fromkeys(API_KINDS, 0))
        self._make_client = make_client
        self._lock = threading.Lock()
        self._by_id: dict[str, ContainerRecord] = {}
        self._by_name: dict[str, str] = {}
        self._gone: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._synced = False
        self._listeners: list[Callable[[], None]] = []
        self._record_listeners: list[Callable[[ContainerRecord], None]] = []
        # when each container last died, by Docker's die events (GPU-hours accounting: an
        # auto-removed container is gone before anyone can read its FinishedAt)
        self._deaths: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()
        self._thread: threading.Thread | None = None
        self._stop: threading.Event = threading.Event()
        self._stream: Any = None
        self._clients: list[Any] = []

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start following the engine (one daemon thread); a second call does nothing."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and not self._stop.is_set():
                return
            self._stop = stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(stop,), name=f"engine-observer-{self.name}", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the stream and the clients and wait for the thread, at most ``timeout``
        seconds (it is a daemon thread: one stuck on a dead engine does not keep the hub)."""
        with self._lock:
            thread, stream, clients = self._thread, self._stream, list(self._clients)
            self._stop.set()
            self._thread = None
        if stream is not None:
            _close_quietly(stream)  # wakes the thread's blocking read
        for client in clients:
            _close_quietly(client)
        if thread is not None:
            thread.join(timeout)
        self._set_synced(False, None)

    # -- readers -----------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        """Listed, and following the event stream right now."""
        return self._synced

    def get(self, name_or_id: str) -> ContainerRecord | None:
        """A container by full id or by name (with or without the leading "/")."""
        with self._lock:
            record = self._by_id.get(name_or_id)
            if record is None:
                record = self._by_id.get(self._by_name.get(name_or_id.lstrip("/"), ""))
            return record

    def records(self) -> list[ContainerRecord]:
        """Every container, oldest first."""
        with self._lock:
            return sorted(self._by_id.values(), key=lambda r: (r.created_ns, r.id))

    def live(self) -> list[ContainerRecord]:
        """The containers that hold their GPUs, oldest first."""
        return [record for record in self.records() if record.live]

    def add_listener(self, callback: Callable[[], None]) -> None:
        """``callback()`` runs in the observer's thread after each change (callers hand it
        over to their own event loop); it must not block."""
        with self._lock:
            self._listeners.append(callback)

    def add_record_listener(self, callback: Callable[[ContainerRecord], None]) -> None:
        """``callback(record)`` runs in the observer's thread with every container record
        it stores (each state a container goes through); it must not block."""
        with self._lock:
            self._record_listeners.append(callback)

    def died_at(self, container_id: str) -> int | None:
        """When the stream last saw that container die (ns since the epoch), or None."""
        with self._lock:
            return self._deaths.get(container_id)

    def deaths_since(self, since_ns: int) -> dict[str, int]:
        """Die events since ``since_ns`` as the engine still remembers them (a bounded
        buffer: Docker keeps its last events in memory), read with a client of its own."""
        api = self._make_client()
        try:
            info = api.info()
            now = created_ns(str(info.get("SystemTime") or ""))
            stream = api.events(
                since=api_timestamp(since_ns),
                until=api_timestamp(now),
                decode=True,
                filters={"type": "container", "event": "die"},
            )
            found: dict[str, int] = {}
            for event in stream:
                found[str(event.get("id") or "")] = event_ns(event)
            return found
        finally:
            _close_quietly(api)

    async def wait_synced(self, timeout: float) -> bool:
        """Wait until ``synced`` (False when ``timeout`` seconds pass first)."""
        return await self._wait_until(lambda: self._synced, timeout)

    async def wait_seen(self, container_id: str, timeout: float) -> bool:
        """Wait until the cache has seen that container (by full id): listed, or its create
        delivered by the stream. Events come in order, so every container created before it
        is known by then."""

        def seen() -> bool:
            with self._lock:
                return container_id in self._by_id or container_id in self._gone

        return await self._wait_until(seen, timeout)

    async def _wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            waiter = (loop, loop.create_future())
            with self._lock:
                self._waiters.add(waiter)
            try:
                if predicate():  # a change between the check and the registration
                    return True
                await asyncio.wait({waiter[1]}, timeout=remaining)
            finally:
                with self._lock:
                    self._waiters.discard(waiter)
        return True

    # -- the thread --------------------------------------------------------------------

    def _run(self, stop: threading.Event) -> None:
        delay, reuse = BACKOFF_FIRST, False
        while not stop.is_set():
            began = time.monotonic()
            try:
                planned = self._follow(stop, reuse)
                problem = "" if planned else "the event stream ended"
            except Exception as e:  # any failure means: reconnect
                planned, problem = False, f"{type(e).__name__}: {e}"
            finally:
                self._drop_clients()
            if stop.is_set():
                break
            reuse = planned
            if planned:
                continue
            self._set_synced(False, stop)
            if time.monotonic() - began > BACKOFF_MAX:
                delay = BACKOFF_FIRST  # it followed the engine a while: start the backoff over
            self.log.warning(
                "Engine observer %s lost Docker (%s); listing again in %.1fs",
                self.name,
                problem,
                delay,
            )
            stop.wait(delay)
            delay = next_backoff(delay)

    def _follow(self, stop: threading.Event, reuse: bool) -> bool:
        """Connect, list, follow the stream until it ends; True when it ended on schedule."""
        api, stream_client = self._make_client(), self._make_client()
        with self._lock:
            self._clients = [api, stream_client]
        if stop.is_set():
            return True
        info = self._call("info", api.info)
        runtime = str(info.get("DefaultRuntime") or "runc")
        try:
            now = created_ns(str(info.get("SystemTime") or ""))  # the engine's clock
        except ValueError:
            now = time.time_ns()
        stream = self._call(
            "events",
            stream_client.events,
            since=api_timestamp(now),
            until=api_timestamp(now + int(self.resync_interval * 1e9)),
            decode=True,
            filters={"type": "container"},
        )
        subscribed = time.monotonic()
        try:
            with self._lock:
                self._stream = stream
            if stop.is_set():
                return True
            self._relist(api, runtime, reuse, stop)
            self._set_synced(True, stop)
            for event in stream:
                if stop.is_set():
                    return True
                self._apply(api, event, stop)
        finally:
            with self._lock:
                self._stream = None
            _close_quietly(stream)
        # Docker ends the stream at ``until``; earlier means the engine went away
        return time.monotonic() - subscribed >= self.resync_interval - min(
            1.0, self.resync_interval / 10
        )

    def _relist(self, api: Any, runtime: str, reuse: bool, stop: threading.Event) -> None:
        """Replace the cache by what the engine lists; with ``reuse`` (a scheduled resync),
        a container whose state and name did not change is not inspected again."""
        summaries: list[dict[str, Any]] = self._call("list", api.containers, all=True)
        with self._lock:
            keep = dict(self._by_id) if reuse and runtime == self.default_runtime else {}
        fresh: dict[str, ContainerRecord] = {}
        for summary in summaries:
            container_id = str(summary["Id"])
            known = keep.get(container_id)
            if (
                known is not None
                and known.state == summary.get("State")
                and known.name == summary_name(summary)
            ):
                fresh[container_id] = known
                continue
            doc = self._inspect(api, container_id)
            if doc is not None:
                fresh[container_id] = record_from_inspect(doc, runtime)
        with self._lock:
            if stop.is_set():
                return
            changed = fresh != self._by_id
            self.default_runtime = runtime
            self._by_id = fresh
            self._by_name = {record.name: record.id for record in fresh.values()}
            if changed:
                self.version += 1
        if changed:
            self._notify()

    def _apply(self, api: Any, event: Mapping[str, Any], stop: threading.Event) -> None:
        effect = event_effect(event)
        if effect is None:
            return
        action, container_id = effect
        if event.get("Action") == "die" or event.get("status") == "die":
            with self._lock:
                self._deaths[container_id] = event_ns(event)
                while len(self._deaths) > _GONE_MEMORY:
                    self._deaths.popitem(last=False)
        doc = self._inspect(api, container_id) if action == "inspect" else None
        if doc is None:
            self._commit(container_id, None, stop)
        else:
            self._commit(container_id, record_from_inspect(doc, self.default_runtime), stop)

    def _commit(
        self, container_id: str, record: ContainerRecord | None, stop: threading.Event
    ) -> None:
        """Put one record in the cache (None: the container is gone)."""
        with self._lock:
            if stop.is_set():
                return
            old = self._by_id.get(container_id)
            if old == record:
                return
            if old is not None and self._by_name.get(old.name) == container_id:
                del self._by_name[old.name]
            if record is None:
                del self._by_id[container_id]
                self._gone[container_id] = None
                while len(self._gone) > _GONE_MEMORY:
                    self._gone.popitem(last=False)
            else:
                self._by_id[container_id] = record
                self._by_name[record.name] = container_id
            self.version += 1
            record_listeners = list(self._record_listeners)
        for callback in record_listeners:
            if record is None:
                break
            try:
                callback(record)
            except Exception:
                self.log.exception("Engine observer %s: a record listener failed", self.name)
        self._notify()

    def _inspect(self, api: Any, container_id: str) -> dict[str, Any] | None:
        try:
            doc: dict[str, Any] = self._call("inspect", api.inspect_container, container_id)
        except docker.errors.NotFound:
            return None
        return doc

    def _call(self, kind: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.api_calls[kind] += 1  # only this thread writes; the keys are fixed
        return method(*args, **kwargs)

    def _drop_clients(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            _close_quietly(client)

    def _set_synced(self, value: bool, stop: threading.Event | None) -> None:
        with self._lock:
            if self._synced == value or (value and stop is not None and stop.is_set()):
                return
            self._synced = value
            self.version += 1
        self._notify()

    def _notify(self) -> None:
        with self._lock:
            listeners, waiters = list(self._listeners), list(self._waiters)
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(_wake, future)
        for callback in listeners:
            try:
                callback()
            except Exception:
                self.log.exception("Engine observer %s: a listener failed", self.name)


__all__ = [
    "API_KINDS",
    "LIVE_STATES",
    "RUNNING_STATES",
    "ContainerRecord",
    "EngineObserver",
    "api_timestamp",
    "created_ns",
    "event_effect",
    "event_ns",
    "record_from_inspect",
    "summary_name",
]
