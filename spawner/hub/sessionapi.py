"""The session endpoint: what the JupyterLab extension in one server shows its user.

``GET /hub/api/gpus/servers/{user}[/{server}]`` answers the server's allocation (GPU ids and
models, since when, profile), when idle reclaim and the session limit would stop it, the
warning period, and the queue's length. ``POST`` the same URL with ``{"action": "extend"}``
uses one of the profile's session extensions. The scope is JupyterHub's ``access:servers``
filtered to that one server, which the server's own token holds (the ``server`` role): a
server reads its own document and no other. Keys and meanings: docs/in-session.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.scopes import needs_scope
from tornado import web

from spawner.core.idle import to_unix
from spawner.core.pool import PoolView
from spawner.core.session import Deadlines, SessionLimit, can_extend, format_duration
from spawner.hub.accounting import accounting_for
from spawner.hub.dashboard import iso  # the same time format as /hub/api/gpus
from spawner.hub.reclaim import GPUReclaimer, reclaimer_for
from spawner.runtime.runtime import get_runtime

#: The URL pattern under the hub's base URL (an empty second group: the default server).
PATTERN = r"/api/gpus/servers/([^/]+)/?([^/]*)"


def idle_rule(timeout: float, holds_gpus: bool) -> str:
    """The idle-reclaim rule that applies, in one sentence."""
    if not holds_gpus:
        return "Idle reclaim stops GPU servers only; this server holds no GPU."
    if timeout <= 0:
        return "Idle reclaim is off on this hub: the GPUs stay with this server until it stops."
    return (
        f"GPU servers idle for {format_duration(timeout)} are stopped and their GPUs go to the "
        "next user; a running cell or a busy GPU counts as activity."
    )


def session_document(
    *,
    user: str,
    server: str,
    profile: Mapping[str, str] | None,
    gpus: Sequence[Mapping[str, Any]],
    started: float | None,
    last_activity: float | None,
    due: Deadlines,
    limit: SessionLimit | None,
    extensions_used: int,
    settings: Mapping[str, float],
    waiting: int,
    now: float,
    budget: tuple[float | None, str] | None = None,
    on_budget_exhausted: str = "stop",
) -> dict[str, Any]:
    """The endpoint's answer for one server (every key always there; see the module).
    ``budget``: when its GPU-hours budget runs out and the sentence, from the accountant."""
    timeout = float(settings["gpu_idle_timeout"])
    stop_at, reason = due.stop
    return {
        "user": user,
        "server": server,
        "profile": dict(profile) if profile is not None else None,
        "gpus": [dict(g) for g in gpus],
        "since": iso(started),
        "now": iso(now),
        "idle": {
            "applies": due.idle is not None,
            "timeout_seconds": timeout if due.idle is not None else None,
            "last_activity": iso(last_activity),
            "deadline": iso(due.idle),
            "rule": idle_rule(timeout, bool(gpus)),
        },
        "session": {
            "max_age_seconds": limit.max_age if limit is not None else None,
            "deadline": iso(due.session),
            "extensions_used": extensions_used,
            "max_extensions": limit.max_extensions if limit is not None else 0,
            "extend_seconds": limit.extend_by if limit is not None else None,
            "can_extend": can_extend(limit, extensions_used),
        },
        "stop_at": iso(stop_at),
        "stop_reason": reason,
        "stop_in_seconds": max(round(stop_at - now), 0) if stop_at is not None else None,
        "warn_before_seconds": float(settings["warn_before"]),
        "poll_seconds": float(settings["status_poll_interval"]),
        "queue": {"waiting": waiting},
        "budget": budget_block(budget, on_budget_exhausted, now),
    }


def budget_block(
    budget: tuple[float | None, str] | None, on_exhausted: str, now: float
) -> dict[str, Any]:
    """The document's ``budget``: when the tightest GPU-hours budget runs out at the
    present pace, what then, and the sentence the extension shows."""
    at, message = budget if budget is not None else (None, None)
    return {
        "applies": budget is not None,
        "exhausts_at": iso(at),
        "exhausts_in_seconds": max(round(at - now), 0) if at is not None else None,
        "on_exhausted": on_exhausted,
        "message": message,
    }


def extend_refusal(limit: SessionLimit | None, used: int) -> str | None:
    """Why this server's session limit cannot be extended, or None when it can."""
    if limit is None:
        return "This server has no session limit, so there is nothing to extend."
    if limit.max_extensions == 0 or limit.extend_by <= 0:
        return "This server's profile does not allow extending its session limit."
    if used >= limit.max_extensions:
        times = "once" if limit.max_extensions == 1 else f"{limit.max_extensions} times"
        return (
            f"This server's session limit was already extended {times}, the most its profile "
            "allows; save your work before it stops."
        )
    return None


def allocation(
    views: Sequence[PoolView], user: str, server: str, gpu_ids: Sequence[str]
) -> list[dict[str, Any]]:
    """The server's GPUs as the hub's pools see them (model and memory), else their ids."""
    found: dict[str, dict[str, Any]] = {}
    for view in views:
        for gpu in view.gpus:
            holding = gpu.holding
            if holding is not None and (holding.user, holding.server) == (user, server):
                found[gpu.gpu.id] = {
                    "id": gpu.gpu.id,
                    "index": gpu.gpu.index,
                    "name": gpu.gpu.name,
                    "memory_mib": gpu.gpu.memory_mib,
                }
    for gpu_id in gpu_ids:
        found.setdefault(gpu_id, {"id": gpu_id, "index": None, "name": None, "memory_mib": None})
    return [found[i] for i in sorted(found, key=lambda i: (len(i), i))]


class SessionAPIHandler(APIHandler):  # type: ignore[misc]
    """``/hub/api/gpus/servers/{user}[/{server}]``: one server's session, for that server."""

    def _running(self, user_name: str, server_name: str) -> Any:
        user = self.find_user(user_name)
        orm_user = user.orm_user if user is not None else None
        if orm_user is None or server_name not in orm_user.orm_spawners:
            raise web.HTTPError(404, f"{user_name} has no server named '{server_name}'.")
        spawner = user.spawners[server_name]
        if not spawner.active or not hasattr(spawner, "stop_deadlines"):
            raise web.HTTPError(404, f"{spawner._log_name} is not running on this hub.")
        return spawner

    async def _document(self, spawner: Any) -> dict[str, Any]:
        reclaimer: GPUReclaimer = reclaimer_for(self.config)
        runtime = get_runtime()
        views = runtime.views() if runtime is not None else []
        user, server = spawner.user.name, spawner.name or ""
        profile = await spawner.running_profile()
        accounting = accounting_for(self.config)
        if accounting is not None and spawner.gpu_ids and spawner.budget_due is None:
            # not projected yet (just started): now; after that, the accountant's passes
            await accounting.project(spawner)
        orm = spawner.orm_spawner
        return session_document(
            user=user,
            server=server,
            profile=(
                {"slug": profile.slug, "display_name": profile.display_name} if profile else None
            ),
            gpus=allocation(views, user, server, list(spawner.gpu_ids)),
            started=to_unix(orm.started),
            last_activity=to_unix(orm.last_activity),
            due=spawner.stop_deadlines(reclaimer.gpu_idle_timeout),
            limit=spawner.session_limit,
            extensions_used=spawner.session_extensions,
            settings={
                "gpu_idle_timeout": reclaimer.gpu_idle_timeout,
                "warn_before": reclaimer.warn_before,
                "status_poll_interval": reclaimer.status_poll_interval,
            },
            waiting=sum(len(view.queue) for view in views),
            now=time.time(),
            budget=spawner.budget_due,
            on_budget_exhausted=str(spawner.on_budget_exhausted).lower(),
        )

    def _answer(self, document: Mapping[str, Any]) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(document))

    @needs_scope("access:servers")  # type: ignore[untyped-decorator]
    async def get(self, user_name: str, server_name: str) -> None:
        self._answer(await self._document(self._running(user_name, server_name)))

    @needs_scope("access:servers")  # type: ignore[untyped-decorator]
    async def post(self, user_name: str, server_name: str) -> None:
        spawner = self._running(user_name, server_name)
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("action") != "extend":
            raise web.HTTPError(400, 'Send {"action": "extend"} to extend the session limit.')
        refusal = extend_refusal(spawner.session_limit, spawner.session_extensions)
        if refusal is not None:
            raise web.HTTPError(409, refusal)
        spawner.session_extensions += 1
        # the state is the hub's record of the server: a hub restart keeps the extension
        spawner.orm_spawner.state = spawner.get_state()
        self.db.commit()
        self.log.info(
            "%s: session limit extended by %s (%d of %d)",
            spawner._log_name,
            format_duration(spawner.session_limit.extend_by),
            spawner.session_extensions,
            spawner.session_limit.max_extensions,
        )
        self._answer(await self._document(spawner))


def handlers() -> list[tuple[str, type]]:
    """For ``c.JupyterHub.extra_handlers``, next to the dashboard's."""
    return [(PATTERN, SessionAPIHandler)]


__all__ = [
    "SessionAPIHandler",
    "allocation",
    "budget_block",
    "extend_refusal",
    "handlers",
    "idle_rule",
    "session_document",
]
