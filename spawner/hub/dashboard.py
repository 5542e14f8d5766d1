"""The admin GPU dashboard: ``/hub/gpus`` (a page) and ``/hub/api/gpus`` (the same as JSON).

Served by the hub itself (``c.JupyterHub.extra_handlers = dashboard.handlers()``), because
the GPU sources live in the hub process's runtime: a single-host pool, or a swarm's nodes.
Only holders of the ``admin:servers`` scope (admin
users, or a service token with that scope) see it; everyone else gets 403.

The page draws one card per GPU (free, held, or held by a container outside the hub) with
model, memory, utilisation when NVML can tell, who holds it, since when and which server,
then the wait queue; a small script refreshes it from the JSON every few seconds.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from jinja2 import BaseLoader, ChoiceLoader, Environment, FileSystemLoader
from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.handlers.base import BaseHandler
from tornado import web

from spawner.backends.errors import docker_trouble
from spawner.core.idle import Decision, to_unix
from spawner.core.pool import GPUView, PoolView, Waiting
from spawner.hub.reclaim import reclaimer_for
from spawner.runtime.nvml import GPUSample, GPUSampler
from spawner.runtime.runtime import GPUSource, get_runtime

TEMPLATES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "templates")
TEMPLATE = "gpu_dashboard.html.j2"
#: The scope that lets one see the dashboard: admins hold it, plain users do not.
REQUIRED_SCOPE = "admin:servers"
REFRESH_SECONDS = 3


def iso(unix_time: float | None) -> str | None:
    if not unix_time:
        return None
    return datetime.fromtimestamp(unix_time, UTC).isoformat().replace("+00:00", "Z")


def gpu_entry(
    gpu: GPUView, sample: GPUSample | None, now: float, activity: dict[str, Any] | None
) -> dict[str, Any]:
    """One GPU of the JSON answer."""
    sample = sample or GPUSample()
    entry: dict[str, Any] = {
        "id": gpu.gpu.id,
        "index": gpu.gpu.index,
        "name": gpu.gpu.name,
        "memory_mib": gpu.gpu.memory_mib,
        "state": gpu.state,
        "utilization": sample.utilization,
        "memory_used_mib": sample.memory_used_mib,
        "holder": None,
    }
    holding = gpu.holding
    if holding is not None:
        entry["holder"] = {
            "user": holding.user,
            "server": holding.server,
            "profile": holding.profile,
            "container": holding.holder,
            "gpus": list(holding.ids),
            "since": iso(holding.since),
            "held_seconds": round(now - holding.since) if holding.since else None,
            **(activity or {}),
        }
    return entry


def queue_entry(waiting: Waiting, now: float) -> dict[str, Any]:
    return {
        "position": waiting.position,
        "user": waiting.user,
        "server": waiting.server,
        "profile": waiting.profile,
        "gpus": waiting.count,
        "since": iso(waiting.since),
        "waiting_seconds": round(now - waiting.since),
    }


def dashboard_data(
    views: Iterable[PoolView],
    samples: dict[str, GPUSample],
    activity: dict[tuple[str, str], dict[str, Any]],
    *,
    now: float,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """The JSON document of ``/hub/api/gpus``, from the pool views (pure, for tests)."""
    gpus: list[dict[str, Any]] = []
    queue: list[dict[str, Any]] = []
    for view in views:
        for gpu in view.gpus:
            who = None
            if gpu.holding is not None:
                who = activity.get((gpu.holding.user, gpu.holding.server))
            gpus.append(gpu_entry(gpu, samples.get(gpu.gpu.id), now, who))
        queue.extend(queue_entry(w, now) for w in view.queue)
    summary = {
        "total": len(gpus),
        "allocated": sum(g["state"] == "held" for g in gpus),
        "free": sum(g["state"] == "free" for g in gpus),
        "external": sum(g["state"] == "external" for g in gpus),
        "queue_length": len(queue),
    }
    return {
        "generated": iso(now),
        "refresh_seconds": REFRESH_SECONDS,
        "summary": summary,
        "gpus": gpus,
        "queue": queue,
        "reclaim": settings,
    }


def docker_unavailable(error: BaseException) -> web.HTTPError | None:
    """The 503 the page and the JSON answer when Docker cannot say who holds which GPU; None
    for any other error (the one table: :func:`spawner.backends.errors.docker_trouble`)."""
    return docker_trouble(
        error, cannot="the GPU dashboard cannot tell who holds which GPU", asked="the GPU dashboard"
    )


class _DashboardMixin:
    """What the page and the JSON handler share: the admin check and the data."""

    def require_admin(self: Any) -> None:
        if REQUIRED_SCOPE not in self.expanded_scopes:
            raise web.HTTPError(403, "The GPU dashboard is for hub admins only.")

    async def _sources(self: Any) -> list[GPUSource]:
        """The hub's GPU sources (a single-host pool, a swarm's nodes), from its runtime."""
        runtime = get_runtime()
        if (runtime is None or not runtime.sources) and self.current_user is not None:
            # prepared at hub start; a hub without that makes it on first look
            spawner = self.current_user.spawners[""]
            if hasattr(spawner, "prepare_gpu_source"):
                try:
                    await spawner.prepare_gpu_source()
                except Exception as e:
                    if answer := docker_unavailable(e):
                        raise answer from None
                    self.log.warning("GPU dashboard: no GPU source (%s)", e)
            runtime = get_runtime()
        return list(runtime.sources.values()) if runtime is not None else []

    def _activity(
        self: Any, view: PoolView, decisions: Mapping[tuple[str, str], Decision]
    ) -> dict[tuple[str, str], dict[str, Any]]:
        """Last activity of each holder's server, and what the reclaimer last decided."""
        now = time.time()
        result: dict[tuple[str, str], dict[str, Any]] = {}
        for gpu in view.gpus:
            holding = gpu.holding
            if holding is None or (holding.user, holding.server) in result:
                continue
            entry: dict[str, Any] = {"last_activity": None, "idle_seconds": None, "state": None}
            orm_user = self.find_user(holding.user) if holding.user else None
            orm_spawner = orm_user.orm_user.orm_spawners.get(holding.server) if orm_user else None
            last = to_unix(orm_spawner.last_activity) if orm_spawner else None
            if last is not None:
                entry["last_activity"] = iso(last)
                entry["idle_seconds"] = max(round(now - last), 0)
            decision = decisions.get((holding.user, holding.server))
            if decision is not None:
                entry["state"] = decision.reason
            result[(holding.user, holding.server)] = entry
        return result

    async def gpu_data(self: Any) -> dict[str, Any]:
        views = []
        for source in await self._sources():
            try:
                await source.refresh()
            except Exception as e:
                answer = docker_unavailable(e)
                if answer is None:
                    raise
                raise answer from None
            views.append(source.view())
        ids = [g.gpu.id for view in views for g in view.gpus]
        runtime = get_runtime()
        sampler = runtime.sampler if runtime is not None else GPUSampler()
        samples = await sampler.sample(ids)
        r = reclaimer_for(self.config)
        activity: dict[tuple[str, str], dict[str, Any]] = {}
        for view in views:
            activity.update(self._activity(view, r.last_decisions))
        settings = {
            "idle_timeout": r.idle_timeout,
            "gpu_idle_timeout": r.gpu_idle_timeout,
            "require_no_gpu_utilization": r.require_no_gpu_utilization,
            "check_interval": r.check_interval,
        }
        return dashboard_data(views, samples, activity, now=time.time(), settings=settings)


_OVERLAYS: dict[int, Environment] = {}


class GPUDashboardHandler(_DashboardMixin, BaseHandler):  # type: ignore[misc]
    """``/hub/gpus``: the page."""

    def get_template(self, name: str, sync: bool = False) -> Any:
        hub_env: Environment = self.settings["jinja2_env_sync" if sync else "jinja2_env"]
        env = _OVERLAYS.get(id(hub_env))
        if env is None:
            loaders: list[BaseLoader] = [FileSystemLoader(TEMPLATES)]
            if hub_env.loader is not None:
                loaders.append(hub_env.loader)
            loader = ChoiceLoader(loaders)
            env = _OVERLAYS[id(hub_env)] = hub_env.overlay(loader=loader)
        return env.get_template(name)

    @web.authenticated
    async def get(self) -> None:
        self.require_admin()
        data = await self.gpu_data()
        # "<" escaped: the JSON sits in a <script> element and names come from users
        data_json = json.dumps(data).replace("<", "\\u003c")
        html = await self.render_template(
            TEMPLATE,
            data_json=data_json,
            api_url=f"{self.hub.base_url}api/gpus",
            refresh_ms=REFRESH_SECONDS * 1000,
        )
        self.finish(html)


class GPUDashboardAPIHandler(_DashboardMixin, APIHandler):  # type: ignore[misc]
    """``/hub/api/gpus``: the same data as JSON."""

    async def get(self) -> None:
        self.require_admin()
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(await self.gpu_data()))


def handlers() -> list[tuple[str, type]]:
    """For ``c.JupyterHub.extra_handlers``: the page and the JSON, under /hub/."""
    return [(r"/gpus", GPUDashboardHandler), (r"/api/gpus", GPUDashboardAPIHandler)]


__all__ = ["GPUDashboardAPIHandler", "GPUDashboardHandler", "dashboard_data", "handlers"]
