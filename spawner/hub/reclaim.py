"""Idle reclaim inside the hub: busy kernels count as activity, idle GPU servers are stopped.

Two parts work together (docs/operations.md, "Idle reclaim"):

- **jupyterhub-idle-culler**, a hub-managed service (:func:`idle_culler_service`), stops any
  server idle for longer than ``GPUReclaimer.idle_timeout`` (the CPU timeout), through the
  REST API with only the scopes it needs.
- **GPUReclaimer**, in the hub process next to the GPU pool, checks every running server of
  the hub runtime's registry each ``check_interval`` seconds:

  1. a server with a busy kernel (a cell still executing, e.g. a training loop) is active:
     its ``last_activity`` is set to now, so neither it nor the idle culler ever takes it for
     idle;
  2. with ``require_no_gpu_utilization`` and GPUs discovered through NVML, a server whose GPUs
     show utilisation is active the same way (with a static inventory there is no NVML, so
     activity alone decides);
  3. a GPU server idle for ``gpu_idle_timeout`` (shorter than the CPU timeout) is stopped;
     its GPUs go back to the pool at once and the next spawn in the queue gets them;
  4. a server past its profile's session limit (``max_age``, plus its extensions) is stopped,
     busy or not.

Before either stop, the JupyterLab extension in the server warns its user ``warn_before``
seconds ahead, from the deadlines :mod:`spawner.hub.sessionapi` serves; "Keep running"
records activity, "Extend" uses one of the profile's extensions. The same deadlines give
the queue its estimate (:meth:`GPUReclaimer.release_at`).

The decision is the pure function :func:`~spawner.core.idle.decide`; the loop only gathers
what it needs and acts as the service ``gpu-reclaimer`` through the hub's public REST API
(``POST /users/{name}/activity``, ``DELETE /users/{name}/server``), with a role holding only
:data:`RECLAIMER_SCOPES`, as jupyterhub-idle-culler does. It never writes the hub's database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Bool, Float, Int, TraitError, Unicode, validate
from traitlets.config import Config, LoggingConfigurable

from spawner.core.idle import Decision, Observed, decide, kernels_busy, utcnow
from spawner.core.session import IDLE
from spawner.runtime import metrics
from spawner.runtime.nvml import GPUSample, GPUSampler
from spawner.runtime.runtime import HubRuntime, get_runtime

#: Scopes jupyterhub-idle-culler needs to stop idle servers, and nothing more.
IDLE_CULLER_SCOPES: tuple[str, ...] = (
    "list:users",
    "read:users:activity",
    "read:servers",
    "delete:servers",
)
IDLE_CULLER_NAME = "idle-culler"

#: Scopes the GPU reclaimer needs: ``POST /users/{name}/activity`` needs ``users:activity``,
#: ``DELETE /users/{name}/server`` and ``/servers/{name}`` need ``delete:servers``.
RECLAIMER_SCOPES: tuple[str, ...] = ("users:activity", "delete:servers")
RECLAIMER_NAME = "gpu-reclaimer"

#: Seconds one REST call may take: a DELETE waits for the stop up to JupyterHub's
#: slow_stop_timeout (10 s by default) before it answers 202.
API_TIMEOUT = 60.0

Server = tuple[tuple[str, str], Any]  # ((user, server name), spawner)


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
    warn_before = Float(
        600.0,
        min=0.0,
        config=True,
        help="""Seconds before an idle reclaim or a session limit at which JupyterLab warns
        the server's user (a notification with "Keep running", or "Extend" where the profile
        allows it). 0: no warning.""",
    )
    status_poll_interval = Float(
        15.0,
        min=1.0,
        config=True,
        help="""Seconds between two reads of the session endpoint by the JupyterLab
        extension of each server (the status bar and the warnings).""",
    )
    kernel_check_timeout = Float(
        10.0,
        min=0.1,
        config=True,
        help="Seconds to wait for a server to list its kernels before leaving it alone.",
    )
    api_token = Unicode(
        "",
        config=True,
        help="""API token of the hub service ``gpu-reclaimer``, whose role holds only
        ``users:activity`` and ``delete:servers``: the reclaimer records activity and stops
        servers with it through the hub's REST API. jupyterhub_config.py makes it once and
        keeps it in the state directory. Empty: the reclaimer only observes.""",
    )
    api_url = Unicode(
        "",
        config=True,
        help="""The hub's REST API, e.g. ``http://127.0.0.1:8081/hub/api``, as the hub process
        reaches it. Empty: the API URL JupyterHub gives its spawners (``hub.api_url``).""",
    )

    def __init__(self, runtime: HubRuntime | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check_consistency()
        self._runtime = runtime
        self._sampler = runtime.sampler if runtime is not None else GPUSampler()
        self._task: asyncio.Future[None] | None = None
        self._warned_no_token = False
        self.last_decisions: dict[tuple[str, str], Decision] = {}

    @validate("api_url")
    def _valid_api_url(self, proposal: Any) -> str:
        url = str(proposal.value).strip().rstrip("/")
        if url and not url.startswith(("http://", "https://")):
            raise TraitError(
                f"{self.__class__.__name__}.api_url must be an http:// or https:// URL such as "
                f"http://127.0.0.1:8081/hub/api, or empty for the hub's own; got {url!r}"
            )
        return url

    @validate("api_token")
    def _valid_api_token(self, proposal: Any) -> str:
        token = str(proposal.value).strip()
        if any(ch.isspace() for ch in token):
            raise TraitError(f"{self.__class__.__name__}.api_token must not contain spaces")
        return token

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
        """Whether idle culling or GPU reclaim is on (session limits are enforced anyway)."""
        return bool(self.idle_timeout or self.gpu_idle_timeout)

    # -- the loop -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the checks (the runtime calls this when its first server is tracked); they
        run even with both timeouts off, as profiles' session limits need them."""
        if self._runtime is None:
            return
        if self._task is None or self._task.done():
            self._task = self._runtime.spawn(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                await self.check_once()
            except Exception:
                self.log.exception(
                    "GPU reclaimer: check failed; trying again in %gs", self.check_interval
                )

    def _running(self) -> list[Server]:
        if self._runtime is None:
            return []
        return [(key, s) for key, s in self._runtime.servers.running() if s.ready]

    # -- one round ------------------------------------------------------------------------

    async def check_once(self) -> list[str]:
        """Check every running server once; returns the servers it stopped."""
        servers = self._running()
        if not servers:
            self.last_decisions = {}
            return []
        gpu_ids = sorted({g for _, s in servers for g in (getattr(s, "gpu_ids", None) or [])})
        samples: Mapping[str, GPUSample] = {}
        if self.require_no_gpu_utilization and gpu_ids and _nvml_inventory(servers[0][1]):
            samples = await self._sampler.sample(gpu_ids)
        busy = await asyncio.gather(*(self._kernels_busy(s) for _, s in servers))
        now = utcnow()
        decisions = {
            key: self._decide(spawner, is_busy, samples, now)
            for (key, spawner), is_busy in zip(servers, busy, strict=True)
        }
        self.last_decisions = decisions
        active = [(k, s) for k, s in servers if decisions[k].action == "active"]
        # still ready: a server stopped while its kernels were asked about is not counted
        idle = [(k, s) for k, s in servers if decisions[k].action == "reclaim" and s.ready]
        results = await asyncio.gather(
            self._record_activity(active, now),
            *(self._reclaim(key, spawner, decisions[key]) for key, spawner in idle),
        )
        return [str(name) for name in results[1:] if name]

    def _decide(
        self, spawner: Any, busy: bool | None, samples: Mapping[str, GPUSample], now: datetime
    ) -> Decision:
        ids = list(getattr(spawner, "gpu_ids", None) or [])
        limits = getattr(spawner, "stop_deadlines", None)
        observed = Observed(
            last_activity=spawner.orm_spawner.last_activity,  # read only
            busy=busy,
            holds_gpus=bool(ids),
            utilization={i: samples[i].utilization if i in samples else None for i in ids},
            session_deadline=limits(self.gpu_idle_timeout).session if limits else None,
        )
        return decide(
            observed,
            now=now,
            gpu_idle_timeout=self.gpu_idle_timeout,
            require_no_gpu_utilization=self.require_no_gpu_utilization,
            utilization_threshold=self.utilization_threshold,
        )

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

    # -- acting through the REST API --------------------------------------------------------

    async def _record_activity(self, servers: list[Server], now: datetime) -> None:
        """Busy kernel / GPU in use: the server was active now; one POST per user, as the
        servers' own activity reports are (the idle culler sees it too)."""
        stamp = now.isoformat() + "Z"
        by_user: dict[str, list[Any]] = {}
        for (user, name), spawner in servers:
            by_user.setdefault(user, []).append((name, spawner))
        calls = []
        for user, named in by_user.items():
            body = {
                "last_activity": stamp,
                "servers": {n: {"last_activity": stamp} for n, _ in named},
            }
            path = f"/users/{quote(user, safe='')}/activity"
            calls.append(self._call("POST", named[0][1], path, body, f"record activity of {user}"))
        await asyncio.gather(*calls)

    async def _reclaim(self, key: tuple[str, str], spawner: Any, decision: Decision) -> str | None:
        """Stop an idle GPU server with ``DELETE``, as an admin's stop button does; its name
        when the hub took the request."""
        ids = list(getattr(spawner, "gpu_ids", None) or [])
        self.log.info(
            "GPU reclaimer: stopping %s (GPU %s), %s",
            spawner._log_name,
            ",".join(ids),
            decision.reason,
        )
        if not await self.stop_server(key, spawner):
            return None
        if decision.rule == IDLE:
            metrics.count_idle_reclaim()
        else:
            metrics.count_session_limit_stop()
        return str(spawner._log_name)

    async def stop_server(self, key: tuple[str, str], spawner: Any) -> bool:
        """``DELETE`` one server through the REST API, as an admin's stop button does (also
        for the GPU-hours accountant); whether the hub took the request."""
        user, name = key
        quoted = quote(user, safe="")
        path = (
            f"/users/{quoted}/servers/{quote(name, safe='')}" if name else f"/users/{quoted}/server"
        )
        return await self._call("DELETE", spawner, path, None, f"stop {spawner._log_name}")

    # -- what the session endpoint and the queue read -------------------------------------------

    def release_at(self, key: tuple[str, str], spawner: Any) -> float | None:
        """When this server's GPUs free up at the latest by idle reclaim or its session limit
        (Unix time), None when neither applies; a server last seen active (busy kernel, GPU in
        use) has no idle deadline one can count on, so only its session limit counts."""
        limits = getattr(spawner, "stop_deadlines", None)
        if limits is None:
            return None
        due = limits(self.gpu_idle_timeout)
        decision = self.last_decisions.get(key)
        idle = None if decision is not None and decision.action == "active" else due.idle
        known = [t for t in (idle, due.session) if t is not None]
        return min(known) if known else None

    async def _call(self, method: str, spawner: Any, path: str, body: Any, what: str) -> bool:
        """One request to the hub's REST API as ``gpu-reclaimer``; a failure is logged with a
        sentence (never the token) and the loop goes on."""
        if not self.api_token:
            if not self._warned_no_token:
                self._warned_no_token = True
                self.log.warning(
                    "GPU reclaimer: GPUReclaimer.api_token is not set, so it cannot %s (nor "
                    "record activity or stop any server); set it to the token of a hub service "
                    "whose role has the scopes %s",
                    what,
                    ", ".join(RECLAIMER_SCOPES),
                )
            return False
        base = self.api_url or str(spawner.hub.api_url).rstrip("/")
        request = HTTPRequest(
            base + path,
            method=method,
            headers={"Authorization": f"token {self.api_token}"},
            body=None if body is None else json.dumps(body),
            allow_nonstandard_methods=True,
            request_timeout=API_TIMEOUT,
            follow_redirects=False,
        )
        try:
            await AsyncHTTPClient().fetch(request)
            return True
        except HTTPClientError as e:
            if e.code != 599:  # 599: tornado's code for no answer (timeout, closed)
                self.log.warning("GPU reclaimer: the hub refused to %s: %s", what, _api_message(e))
                return False
            problem: Exception = e
        except OSError as e:  # connection refused, no route
            problem = e
        self.log.warning(
            "GPU reclaimer: could not reach the hub's API at %s to %s (%s); trying again in %gs",
            base,
            what,
            problem,
            self.check_interval,
        )
        return False


def _api_message(error: HTTPClientError) -> str:
    """HTTP status and JupyterHub's own message of a refused REST call."""
    message = error.message or ""
    body = getattr(error.response, "body", None)
    if body:
        with contextlib.suppress(ValueError, AttributeError):
            message = str(json.loads(body).get("message") or message)
    return f"HTTP {error.code} {message}".rstrip()


def _nvml_inventory(spawner: Any) -> bool:
    """GPUs come from NVML (no static inventory): utilisation can be sampled."""
    return getattr(spawner, "gpu_inventory", None) in ([], "")


def reclaimer_for(config: Config | None = None) -> GPUReclaimer:
    """The hub's one reclaimer, attached to the hub runtime (made from ``config`` on first use,
    its loop started when the first server is tracked); without a runtime, a detached one
    that checks settings and sees no servers."""
    config = config or Config()
    runtime = get_runtime()
    if runtime is None:
        return GPUReclaimer(config=config)

    def make() -> GPUReclaimer:
        made = GPUReclaimer(runtime, config=config)
        runtime.release_estimator = made.release_at
        runtime.servers.on_first(made.start)
        if len(runtime.servers):  # servers tracked before the reclaimer was attached
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return made
            made.start()
        return made

    return runtime.attach(GPUReclaimer, make)


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
    role = _service_role(
        IDLE_CULLER_NAME, "Stop servers idle for longer than the idle timeout", IDLE_CULLER_SCOPES
    )
    return service, role


def reclaimer_service(api_token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The GPU reclaimer as a hub service (no process of its own: it lives in the hub) with
    its token, and its least-privilege role."""
    service = {"name": RECLAIMER_NAME, "api_token": api_token}
    role = _service_role(
        RECLAIMER_NAME, "Record busy servers' activity and stop idle GPU servers", RECLAIMER_SCOPES
    )
    return service, role


def _service_role(name: str, description: str, scopes: Sequence[str]) -> dict[str, Any]:
    """A role that holds only ``scopes``, for the service of the same name."""
    return {"name": name, "description": description, "scopes": list(scopes), "services": [name]}


__all__ = [
    "IDLE_CULLER_SCOPES",
    "RECLAIMER_NAME",
    "RECLAIMER_SCOPES",
    "GPUReclaimer",
    "idle_culler_service",
    "reclaimer_for",
    "reclaimer_service",
]
