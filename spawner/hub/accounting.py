"""GPU-hours accounting in the hub: usage records from what Docker says, budgets enforced on
running servers, retention (docs/usage.md).

- **Records.** Every ``check_interval`` seconds, and before a budget or a report is read, the
  accountant writes each GPU container of this hub (its labels, Docker's ``StartedAt`` and
  ``FinishedAt``) into the hub's database (:mod:`spawner.runtime.usagestore`). It reads the
  engine observer's cache and every state the observer stored since (a record listener), so
  a container that came and went between two passes is counted too.
- **Ends.** A record ends at the container's ``FinishedAt``; an auto-removed container (the
  default) at the time of its ``die`` event; one removed while the hub was down at its
  ``die`` event as the engine still remembers it (:meth:`EngineObserver.deaths_since`), else
  at the last time the hub saw it running (off by at most one interval, logged).
- **Budgets.** Each running GPU server's tightest budget is projected (when its GPUs use it
  up at the present pace); the session endpoint shows it, JupyterLab warns ``warn_before``
  ahead, and with ``on_budget_exhausted`` "stop" the server is stopped when it runs out,
  through the reclaimer's REST calls.
- **Retention.** Records that ended more than ``retention_days`` ago become summary rows (per
  day, groups, profile, model; no names) and are deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterable
from typing import Any

from traitlets import Bool, Float, TraitError
from traitlets.config import Config, LoggingConfigurable

from spawner.backends.budgets import budget_rules, usage_store, user_budget_states
from spawner.core.labels import LABEL_HUB_INSTANCE, LABEL_PREFIX_NAME
from spawner.core.usage import (
    DAY,
    KEEP,
    UsageRecord,
    check_retention,
    record_from_container,
    summarise,
    tightest,
    warning,
)
from spawner.hub.config import configured_spawner_class, stand_in_user
from spawner.hub.reclaim import reclaimer_for
from spawner.runtime.metrics import UsageCollector, UsageSnapshot
from spawner.runtime.observer import ContainerRecord, created_ns
from spawner.runtime.runtime import HubRuntime, get_runtime
from spawner.runtime.usagestore import UsageStore

#: Seconds between two retention passes.
RETENTION_EVERY = 3600.0


class GPUAccounting(LoggingConfigurable):
    """Keeps the GPU-hours records and enforces budgets; one per hub process."""

    check_interval = Float(
        15.0,
        min=0.5,
        config=True,
        help="""Seconds between two passes that write Docker's view of the GPU containers into
        the usage records and check the running servers' budgets. Spawns and reports bring
        the records up to date themselves; a budget stop comes on time whatever this is.""",
    )
    retention_days = Float(
        400.0,
        min=1.0,
        config=True,
        help="""Days a usage record is kept after it ended; older ones are summarised per day,
        group, profile and GPU model (no user names, servers or times) and deleted. At least
        the budgets' period.""",
    )
    metrics_per_user = Bool(
        False,
        config=True,
        help="""Also serve ``jupyterhub_gpu_user_seconds_total{user}`` on /hub/metrics (one
        series per user: mind Prometheus' cardinality on large hubs).""",
    )

    def __init__(self, runtime: HubRuntime | None, config: Config, **kwargs: Any) -> None:
        super().__init__(config=config, **kwargs)
        self._runtime = runtime
        self.probe = configured_spawner_class(config)(config=config, user=stand_in_user("usage"))
        if problem := check_retention(self.retention_days, budget_rules(self.probe)):
            raise TraitError(f"GPUAccounting.retention_days {problem}")
        self._pending: dict[str, ContainerRecord] = {}
        self._pending_lock = threading.Lock()
        self._sync_lock = asyncio.Lock()
        self._listening: set[int] = set()
        self._replayed = False
        self._retained_at = 0.0
        self._task: asyncio.Future[None] | None = None
        self._wake = asyncio.Event()
        #: what /hub/metrics reads: every record and summary as of the last pass
        self.cached: UsageSnapshot = ([], [], {})
        self.collector = UsageCollector(lambda: self.cached, self.metrics_per_user)

    @property
    def store(self) -> UsageStore:
        return usage_store(self.probe)

    # -- the loop -------------------------------------------------------------------------

    def start(self) -> None:
        if self._runtime is not None and (self._task is None or self._task.done()):
            self._task = self._runtime.spawn(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.sync()
                await self._enforce()
                await self._retain()
                await self._refresh_cache()
            except Exception:
                self.log.exception(
                    "GPU-hours: a pass failed; trying again in %gs", self.check_interval
                )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._next_pass())
            self._wake.clear()

    def _next_pass(self) -> float:
        """Seconds to the next pass: the interval, or sooner when a budget runs out first."""
        wait = self.check_interval
        now = time.time()
        for _, spawner in self._gpu_servers():
            due = getattr(spawner, "budget_due", None)
            # one still ahead (one run out already was acted on, or is kept running)
            if due is not None and due[0] is not None and due[0] > now:
                wait = min(wait, max(due[0] - now, 0.2))
        return wait

    # -- records --------------------------------------------------------------------------

    def _observers(self) -> list[Any]:
        observers = list(self._runtime.observers.values()) if self._runtime else []
        for observer in observers:
            if id(observer) not in self._listening:
                self._listening.add(id(observer))
                observer.add_record_listener(self._on_record)
        return observers

    def _on_record(self, record: ContainerRecord) -> None:
        """In the observer's thread: keep every state a GPU container of ours goes through."""
        if self._ours(record.labels):
            with self._pending_lock:
                self._pending[record.id] = record

    def _ours(self, labels: Any) -> bool:
        if labels.get(LABEL_PREFIX_NAME) != self.probe.prefix:
            return False
        instance = str(getattr(self.probe, "hub_instance", "") or "")
        return not instance or labels.get(LABEL_HUB_INSTANCE, instance) == instance

    def _models(self) -> dict[str, str]:
        models: dict[str, str] = {}
        for inventory in list(self._runtime.inventories.values()) if self._runtime else []:
            for gpu in inventory:
                models[gpu.id] = gpu.name
        return models

    def _usage(
        self, record: ContainerRecord, died_ns: int | None, models: dict[str, str]
    ) -> UsageRecord | None:
        try:
            started = created_ns(record.started_at)
        except ValueError:
            return None
        ended: int | None = None
        if not record.running:
            with contextlib.suppress(ValueError):
                ended = created_ns(record.finished_at)
            if ended is None or ended < started:
                ended = died_ns if died_ns is not None and died_ns >= started else None
        return record_from_container(
            record.id, record.labels, started_ns=started, ended_ns=ended, models=models
        )

    async def sync(self) -> None:
        """Bring the records up to date with Docker (see the module)."""
        if self._runtime is None:
            return
        async with self._sync_lock:
            observers = [o for o in self._observers() if o.synced]
            if not observers:
                return
            with self._pending_lock:
                pending, self._pending = self._pending, {}
            seen: dict[str, tuple[ContainerRecord, Any]] = {}
            for observer in observers:
                for record in observer.records():
                    if self._ours(record.labels):
                        seen[record.id] = (record, observer)
            for cid, record in pending.items():
                seen.setdefault(cid, (record, observers[0]))
            models = self._models()
            usage = [
                u
                for record, observer in seen.values()
                if (u := self._usage(record, observer.died_at(record.id), models)) is not None
            ]
            now = time.time()
            store = self.store
            await store.run(lambda: store.upsert(usage, now))
            await self._close_gone(store, observers, {u.key for u in usage})

    async def _close_gone(self, store: UsageStore, observers: list[Any], known: set[str]) -> None:
        """End the open records whose container is gone: at its die event, else when it was
        last seen running."""
        open_records = [
            (r, seen) for r, seen in await store.run(store.open_records) if r.key not in known
        ]
        if not open_records:
            self._replayed = True
            return
        deaths: dict[str, int] = {}
        if not self._replayed:  # first pass after a hub start: what happened while it was down
            self._replayed = True
            since = int(min(seen for _, seen in open_records) * 1e9)
            for observer in observers:
                with contextlib.suppress(Exception):
                    deaths.update(
                        await asyncio.get_running_loop().run_in_executor(
                            None, observer.deaths_since, since
                        )
                    )
        for record, last_seen in open_records:
            died = deaths.get(record.container_id) or _first(
                o.died_at(record.container_id) for o in observers
            )
            if died is not None and died / 1e9 >= record.started:
                ended = died / 1e9
            else:
                ended = last_seen
                self.log.warning(
                    "GPU-hours: the container of %s's server is gone and Docker no longer "
                    "says when it stopped; its record ends when the hub last saw it (%s)",
                    record.user,
                    time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(last_seen)),
                )
            await store.run(lambda r=record, e=ended: store.close_record(r.key, e))  # type: ignore[misc]

    # -- budgets of running servers -------------------------------------------------------

    def _gpu_servers(self) -> list[tuple[tuple[str, str], Any]]:
        if self._runtime is None:
            return []
        return [(k, s) for k, s in self._runtime.servers.running() if getattr(s, "gpu_ids", None)]

    async def project(self, spawner: Any, *, sync: bool = True) -> tuple[float | None, str] | None:
        """When this running server's tightest budget runs out at the present pace, and the
        sentence about it (kept on the spawner for the session endpoint); None: no budget."""
        now = time.time()
        states = await user_budget_states(
            spawner, spawner.user.name, list(spawner._user_groups()), now, sync=sync
        )
        state = tightest(states, now)
        policy = str(spawner.on_budget_exhausted).lower()
        due = None if state is None else (state.exhausts_at(now), warning(state, now, policy))
        spawner.budget_due = due
        return due

    async def _enforce(self) -> None:
        """Project each running GPU server's tightest budget; stop the exhausted ones (with
        ``on_budget_exhausted`` "stop")."""
        for key, spawner in self._gpu_servers():
            if not hasattr(spawner, "budget_due"):
                continue
            due = await self.project(spawner, sync=False)
            policy = str(spawner.on_budget_exhausted).lower()
            if due is None or due[0] is None or due[0] > time.time() or policy == KEEP:
                continue
            if spawner.ready:
                self.log.info("GPU-hours: stopping %s: %s", spawner._log_name, due[1])
                await reclaimer_for(self.config).stop_server(key, spawner)

    # -- retention and the metrics' cache -----------------------------------------------------

    async def _retain(self) -> None:
        now = time.time()
        if now - self._retained_at < RETENTION_EVERY:
            return
        self._retained_at = now
        store = self.store
        cutoff = now - self.retention_days * DAY
        old = await store.run(lambda: store.records(0.0, cutoff))
        summary, keys = summarise(old, cutoff, now)
        done = [r for r in old if r.key in set(keys)]
        if done:
            await store.run(lambda: store.retain(summary, done))
            self.log.info(
                "GPU-hours: %d records older than %g days summarised",
                len(done),
                self.retention_days,
            )

    async def _refresh_cache(self) -> None:
        """What /hub/metrics reads: the open records, and the ended ones and the summaries
        summed by the database (a pass never reads every record)."""
        store = self.store
        async with self._sync_lock:  # one consistent view: no pass writes in between
            # an open record up to when it was last seen running: its end can only be later,
            # so the counters never go down
            open_records = [
                dataclasses.replace(record, ended=max(seen, record.started))
                for record, seen in await store.run(store.open_records)
            ]
            closed = await store.run(store.closed_totals)
            summaries = await store.run(store.summaries)
            retired = await store.run(store.user_totals) if self.metrics_per_user else {}
        self.cached = (open_records, closed + summaries, retired)

    def close(self) -> None:
        self.collector.unregister()
        if self._task is not None:
            self._task.cancel()


def _first(values: Iterable[int | None]) -> int | None:
    return next((v for v in values if v is not None), None)


def accounting_for(config: Config | None = None) -> GPUAccounting | None:
    """The hub's one accountant, attached to the hub runtime (None without a runtime)."""
    runtime = get_runtime()
    if runtime is None:
        return None
    config = config or Config()

    def make() -> GPUAccounting:
        made = GPUAccounting(runtime, config)
        runtime.usage_sync = made.sync
        made.collector.register()
        return made

    return runtime.attach(GPUAccounting, make)


__all__ = ["GPUAccounting", "accounting_for"]
