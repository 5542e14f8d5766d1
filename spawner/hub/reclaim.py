"""Idle reclaim inside the hub: busy kernels count as activity, idle GPU servers are stopped.

Two parts work together (docs/operations.md, "Idle reclaim"):

- **jupyterhub-idle-culler**, a hub-managed service (:func:`idle_culler_service`), stops any
  server idle for longer than ``GPUReclaimer.idle_timeout`` (the CPU timeout), through the
  REST API with only the scopes it needs.
- **GPUReclaimer**, in the hub process next to the GPU pool, checks every running server each
  ``check_interval`` seconds:

  1. a server with a busy kernel (a cell still executing, e.g. a training loop) is active:
     its ``last_activity`` is set to now, so neither it nor the idle culler ever takes it for
     idle;
  2. with ``require_no_gpu_utilization`` and GPUs discovered through NVML, a server whose GPUs
     show utilisation is active the same way (with a static inventory there is no NVML, so
     activity alone decides);
  3. a GPU server idle for ``gpu_idle_timeout`` (shorter than the CPU timeout) is stopped the
     way the REST API stops it; its GPUs go back to the pool at once and the next spawn in
     the queue gets them.

The decision is the pure function :func:`decide`; the loop only gathers what it needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import sys
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import ModuleType, SimpleNamespace
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Bool, Float, Int, TraitError
from traitlets.config import Config, LoggingConfigurable

from spawner.runtime import metrics

#: Scopes jupyterhub-idle-culler needs to stop idle servers, and nothing more.
IDLE_CULLER_SCOPES: tuple[str, ...] = (
    "list:users",
    "read:users:activity",
    "read:servers",
    "delete:servers",
)
IDLE_CULLER_NAME = "idle-culler"


def utcnow() -> datetime:
    """Now, as JupyterHub stores times in its database: UTC without tzinfo."""
    return datetime.now(UTC).replace(tzinfo=None)


# -- the decision ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Observed:
    """What the reclaimer saw of one running server.

    ``busy``: a kernel is executing (None: the server did not say). ``utilization``: percent
    per GPU id, None where unknown (no NVML, MIG device, or a static inventory).
    """

    last_activity: datetime | None
    busy: bool | None
    holds_gpus: bool
    utilization: Mapping[str, int | None]


@dataclass(frozen=True)
class Decision:
    """``keep``: leave it; ``active``: record activity now; ``reclaim``: stop it."""

    action: str
    reason: str
    idle_seconds: float


def gpus_in_use(utilization: Mapping[str, int | None], threshold: int) -> list[str]:
    """GPU ids whose sampled utilisation is at or above ``threshold`` percent."""
    return sorted(i for i, u in utilization.items() if u is not None and u >= threshold)


def decide(
    observed: Observed,
    *,
    now: datetime,
    gpu_idle_timeout: float,
    require_no_gpu_utilization: bool,
    utilization_threshold: int,
) -> Decision:
    """Whether a running server is active, may stay, or is reclaimed as idle.

    A busy kernel always wins: a running training job is never taken for idle. A server that
    did not say whether a kernel is busy is left alone (the idle culler remains the backstop).
    """
    last = observed.last_activity
    idle = max((now - last).total_seconds(), 0.0) if last is not None else 0.0
    if observed.busy:
        return Decision("active", "a kernel is busy", 0.0)
    if observed.holds_gpus and require_no_gpu_utilization:
        used = gpus_in_use(observed.utilization, utilization_threshold)
        if used:
            return Decision("active", f"GPU {', '.join(used)} in use", 0.0)
    if not observed.holds_gpus or gpu_idle_timeout <= 0:
        return Decision("keep", "not a GPU server" if not observed.holds_gpus else "off", idle)
    if observed.busy is None:
        return Decision("keep", "kernel state unknown", idle)
    if last is None or idle < gpu_idle_timeout:
        return Decision("keep", "recently active", idle)
    return Decision("reclaim", f"idle for {idle:.0f} s (limit {gpu_idle_timeout:g} s)", idle)


def kernels_busy(kernels: Any) -> bool | None:
    """From a jupyter-server ``GET /api/kernels`` answer: is any kernel executing?"""
    if not isinstance(kernels, list):
        return None
    return any(isinstance(k, dict) and k.get("execution_state") == "busy" for k in kernels)


# -- GPU utilisation through NVML -----------------------------------------------------------


@dataclass(frozen=True)
class GPUSample:
    """One GPU as NVML sees it right now; None where NVML cannot tell."""

    utilization: int | None = None
    memory_used_mib: int | None = None


def _load_nvml() -> ModuleType | None:
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


def sample_gpus(ids: Collection[str], nvml: ModuleType | None = None) -> dict[str, GPUSample]:
    """Utilisation and memory in use of GPUs named by UUID or index (MIG devices: unknown).

    Never raises: a host without NVML, or a GPU NVML does not know, gives empty samples.
    """
    samples = {gpu_id: GPUSample() for gpu_id in ids}
    nvml = nvml if nvml is not None else _load_nvml()
    if nvml is None or not samples:
        return samples
    try:
        nvml.nvmlInit()
    except Exception:
        return samples
    try:
        for gpu_id in samples:
            try:
                if gpu_id.isdigit():
                    handle = nvml.nvmlDeviceGetHandleByIndex(int(gpu_id))
                elif gpu_id.startswith("GPU-"):
                    handle = nvml.nvmlDeviceGetHandleByUUID(gpu_id)
                else:
                    continue  # MIG devices have no utilisation counter of their own
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                samples[gpu_id] = GPUSample(int(rates.gpu), int(memory.used) // (1024 * 1024))
            except Exception:
                continue
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
    return samples


class GPUSampler:
    """NVML samples, cached for ``ttl`` seconds (the dashboard refreshes every few seconds)."""

    def __init__(self, ttl: float = 2.0, sample: Callable[..., dict[str, GPUSample]] = sample_gpus):
        self.ttl = ttl
        self._sample = sample
        self._cache: dict[str, tuple[float, GPUSample]] = {}

    async def sample(self, ids: Collection[str]) -> dict[str, GPUSample]:
        now = time.monotonic()
        stale = [i for i in ids if i not in self._cache or now - self._cache[i][0] > self.ttl]
        if stale:
            loop = asyncio.get_running_loop()
            fresh = await loop.run_in_executor(None, self._sample, stale)
            for gpu_id, sample in fresh.items():
                self._cache[gpu_id] = (now, sample)
        return {i: self._cache[i][1] for i in ids if i in self._cache}


SAMPLER = GPUSampler()


# -- the reclaimer in the hub ---------------------------------------------------------------


class GPUReclaimer(LoggingConfigurable):
    """Keeps busy servers active and stops idle GPU servers; one per hub process."""

    idle_timeout = Float(
        7200.0,
        min=0.0,
        config=True,
        help="""Seconds without activity after which any server (CPU or GPU) is stopped by
        jupyterhub-idle-culler, the hub-managed service. 0: no idle culling of CPU servers.""",
    )
    gpu_idle_timeout = Float(
        1800.0,
        min=0.0,
        config=True,
        help="""Seconds without activity after which a server holding GPUs is stopped and its
        GPUs handed to the next user. Shorter than ``idle_timeout``: idle GPUs are what others
        wait for. 0: GPU servers follow ``idle_timeout`` only.""",
    )
    check_interval = Float(
        60.0,
        min=0.1,
        config=True,
        help="""Seconds between two checks of every running server (kernels busy? GPUs in
        use? idle too long?). At most half of each timeout.""",
    )
    require_no_gpu_utilization = Bool(
        True,
        config=True,
        help="""Count a GPU server as idle only if its GPUs also show no utilisation (sampled
        through NVML by the hub every ``check_interval``). Needs an NVML-discovered
        inventory; with a static inventory, activity alone decides.""",
    )
    utilization_threshold = Int(
        1,
        min=1,
        max=100,
        config=True,
        help="GPU utilisation (percent) from which a sample counts as the GPU being in use.",
    )
    kernel_check_timeout = Float(
        10.0,
        min=0.1,
        config=True,
        help="Seconds to wait for a server to list its kernels before leaving it alone.",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check_consistency()
        self._servers: dict[tuple[str, str], Any] = {}
        self._task: asyncio.Task[None] | None = None
        self._sampler = SAMPLER
        self.last_decisions: dict[tuple[str, str], Decision] = {}

    def check_consistency(self) -> None:
        """Refuse settings that contradict each other, naming the options."""
        name = self.__class__.__name__
        gpu, cpu = self.gpu_idle_timeout, self.idle_timeout
        if gpu and cpu and gpu > cpu:
            raise TraitError(
                f"{name}.gpu_idle_timeout ({self.gpu_idle_timeout:g} s) is longer than "
                f"{name}.idle_timeout ({self.idle_timeout:g} s): the idle culler would stop GPU "
                "servers first; make the GPU timeout shorter or equal"
            )
        for option in ("idle_timeout", "gpu_idle_timeout"):
            timeout = getattr(self, option)
            if timeout and self.check_interval > timeout / 2:
                raise TraitError(
                    f"{name}.check_interval ({self.check_interval:g} s) must be at most half of "
                    f"{name}.{option} ({timeout:g} s), or busy servers could be culled"
                )

    @property
    def enabled(self) -> bool:
        return bool(self.idle_timeout or self.gpu_idle_timeout)

    # -- which servers --------------------------------------------------------------------

    def track(self, spawner: Any) -> None:
        """A server is running: check it from now on (starts the loop on first use)."""
        if not self.enabled:
            return
        self._servers[(spawner.user.name, spawner.name)] = spawner
        self.start()

    def untrack(self, spawner: Any) -> None:
        key = (spawner.user.name, spawner.name)
        if self._servers.get(key) is spawner:
            del self._servers[key]
        self.last_decisions.pop(key, None)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                await self.check_once()
            except Exception:
                self.log.exception(
                    "GPU reclaimer: check failed; trying again in %gs", self.check_interval
                )

    # -- one round ------------------------------------------------------------------------

    async def check_once(self) -> list[str]:
        """Check every running server once; returns the servers it stopped."""
        servers = [(k, s) for k, s in self._servers.items() if s.ready]
        if not servers:
            return []
        gpu_ids = sorted({g for _, s in servers for g in (getattr(s, "gpu_ids", None) or [])})
        samples: Mapping[str, GPUSample] = {}
        if self.require_no_gpu_utilization and gpu_ids and _nvml_inventory(servers[0][1]):
            samples = await self._sampler.sample(gpu_ids)
        busy = await asyncio.gather(*(self._kernels_busy(s) for _, s in servers))
        reclaimed = []
        now = utcnow()
        for (key, spawner), is_busy in zip(servers, busy, strict=True):
            ids = list(getattr(spawner, "gpu_ids", None) or [])
            observed = Observed(
                last_activity=spawner.orm_spawner.last_activity,
                busy=is_busy,
                holds_gpus=bool(ids),
                utilization={i: samples[i].utilization if i in samples else None for i in ids},
            )
            decision = decide(
                observed,
                now=now,
                gpu_idle_timeout=self.gpu_idle_timeout,
                require_no_gpu_utilization=self.require_no_gpu_utilization,
                utilization_threshold=self.utilization_threshold,
            )
            self.last_decisions[key] = decision
            if decision.action == "active":
                self._record_activity(spawner, now)
            elif decision.action == "reclaim" and spawner.ready:
                await self._reclaim(spawner, decision, ids)
                reclaimed.append(spawner._log_name)
        return reclaimed

    async def _kernels_busy(self, spawner: Any) -> bool | None:
        server = spawner.server
        if server is None or not spawner.api_token:
            return None
        # no_track_activity: asking must not itself count as activity on the server.
        url = f"{server.url.rstrip('/')}/api/kernels?no_track_activity=1"
        request = HTTPRequest(
            url,
            headers={"Authorization": f"token {spawner.api_token}"},
            request_timeout=self.kernel_check_timeout,
            follow_redirects=False,
        )
        try:
            response = await AsyncHTTPClient().fetch(request)
            return kernels_busy(json.loads(response.body))
        except (HTTPClientError, OSError, ValueError) as e:
            self.log.debug("GPU reclaimer: %s did not list its kernels: %s", spawner._log_name, e)
            return None

    def _record_activity(self, spawner: Any, now: datetime) -> None:
        """Busy kernel / GPU in use: the server was active now (the idle culler sees it too)."""
        orm_spawner = spawner.orm_spawner
        if orm_spawner.last_activity is None or orm_spawner.last_activity < now:
            orm_spawner.last_activity = now
        orm_user = getattr(spawner.user, "orm_user", None)
        if orm_user is not None:
            orm_user.last_activity = max(orm_user.last_activity or now, now)
        spawner.user.db.commit()

    async def _reclaim(self, spawner: Any, decision: Decision, ids: list[str]) -> None:
        """Stop the server as the REST API does: proxy route first, then the server."""
        user = spawner.user
        self.log.info(
            "GPU reclaimer: stopping %s (GPU %s), %s",
            spawner._log_name,
            ",".join(ids),
            decision.reason,
        )
        metrics.count_idle_reclaim()
        spawner._stop_pending = True

        async def stop() -> None:
            try:
                proxy = user.settings.get("proxy")
                if proxy is not None:
                    await proxy.delete_user(user, spawner.name)
                await user.stop(spawner.name)
            except Exception:
                self.log.exception("GPU reclaimer: stopping %s failed", spawner._log_name)
            finally:
                spawner._stop_future = None
                spawner._stop_pending = False

        spawner._stop_future = asyncio.ensure_future(stop())
        await spawner._stop_future


def _nvml_inventory(spawner: Any) -> bool:
    """GPUs come from NVML (no static inventory): utilisation can be sampled."""
    return getattr(spawner, "gpu_inventory", None) in ([], "")


_RECLAIMER: GPUReclaimer | None = None
_TASKS: set[asyncio.Task[None]] = set()


def reclaimer(config: Config | None = None) -> GPUReclaimer:
    """The hub's one reclaimer, made from the hub's config on first use."""
    global _RECLAIMER
    if _RECLAIMER is None:
        _RECLAIMER = GPUReclaimer(config=config or Config())
    return _RECLAIMER


# -- wiring into the hub ---------------------------------------------------------------------


def idle_culler_service(
    timeout: float, every: float, *, python: str = sys.executable
) -> tuple[dict[str, Any], dict[str, Any]]:
    """jupyterhub-idle-culler as a hub-managed service, and its least-privilege role."""
    service = {
        "name": IDLE_CULLER_NAME,
        "command": [
            python,
            "-m",
            "jupyterhub_idle_culler",
            f"--timeout={max(int(timeout), 1)}",
            f"--cull-every={max(int(every), 1)}",
        ],
    }
    role = {
        "name": IDLE_CULLER_NAME,
        "description": "Stop servers idle for longer than the idle timeout",
        "scopes": list(IDLE_CULLER_SCOPES),
        "services": [IDLE_CULLER_NAME],
    }
    return service, role


def start_with_hub(config: Config) -> None:
    """In the hub process (called from jupyterhub_config.py): check the reclaim settings,
    and prepare the GPU pool as soon as the hub runs, so /hub/metrics and the dashboard show
    the inventory before the first spawn. Anywhere else (e.g. ``python -m spawner doctor``
    loading the same config) it only checks the settings."""
    from spawner.hub.config import ConfigError

    try:
        GPUReclaimer(config=config)
    except TraitError as e:
        raise ConfigError(str(e)) from None
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    if "jupyterhub.app" not in sys.modules:
        return
    _TASKS.add(task := loop.create_task(_prepare_pool(config)))
    task.add_done_callback(_TASKS.discard)


async def _prepare_pool(config: Config) -> None:
    from spawner.backends.docker import GPUDockerSpawner  # the hub's spawner; Docker only from here

    # Runs once the config files are read: settings made after start_with_hub() count too.
    log = reclaimer(config).log
    stand_in = SimpleNamespace(name="gpu-pool", groups=[], url="/user/gpu-pool/")
    try:
        probe = GPUDockerSpawner(config=config, user=stand_in)
        pool = await probe.gpu_pool()
        await pool.refresh()
    except Exception as e:
        log.warning("GPU pool not prepared at start-up (%s); it is made at the first spawn", e)


__all__ = [
    "IDLE_CULLER_SCOPES",
    "Decision",
    "GPUReclaimer",
    "GPUSample",
    "GPUSampler",
    "Observed",
    "decide",
    "idle_culler_service",
    "kernels_busy",
    "reclaimer",
    "sample_gpus",
    "start_with_hub",
]
