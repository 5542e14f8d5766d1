"""When a running server will be stopped, and how long a queued spawn may wait; pure.

Two rules stop a server the hub started: **idle reclaim** (a GPU server without activity for
``gpu_idle_timeout``) and a profile's **session limit** (``max_age``, extendable
``max_extensions`` times by ``extend_by``). :func:`deadlines` says when each falls due,
:func:`estimate_wait` turns the holders' deadlines into an honest queue estimate. Times are
Unix seconds. The loop that acts on them is :mod:`spawner.hub.reclaim`; the session endpoint
the JupyterLab extension reads is :mod:`spawner.hub.sessionapi`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

IDLE = "idle"
SESSION = "session"
BUDGET = "budget"

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"(?:(\d+(?:\.\d+)?)\s*([smhd]))+?", re.IGNORECASE)
_DURATION_FULL_RE = re.compile(r"\s*(?:\d+(?:\.\d+)?\s*[smhd]\s*)+", re.IGNORECASE)


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a string such as ``"8h"``, ``"90m"``,
    ``"1h30m"`` or ``"2d"``; :class:`ValueError` with a sentence otherwise."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and _DURATION_FULL_RE.fullmatch(value):
        seconds = sum(float(n) * _UNITS[u.lower()] for n, u in _DURATION_RE.findall(value))
    else:
        raise ValueError(
            f"must be a duration such as 3600, '8h', '90m' or '1h30m', got {value!r:.40}"
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"must be a duration > 0, got {value!r:.40}")
    return seconds


def format_duration(seconds: float) -> str:
    """``"8 h"``, ``"1 h 30 min"``, ``"45 s"``: a configured duration, in words."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    parts = [f"{hours} h"] if hours else []
    parts += [f"{minutes} min"] if minutes else []
    parts += [f"{secs} s"] if secs and not hours else []
    return " ".join(parts)


@dataclass(frozen=True)
class SessionLimit:
    """A profile's session limit: ``max_age`` seconds from the start, plus ``extend_by``
    seconds for each of at most ``max_extensions`` extensions."""

    max_age: float
    max_extensions: int = 0
    extend_by: float = 0.0

    def to_state(self, used: int) -> dict[str, Any]:
        """The limit and the extensions used, as the spawner's state keeps them."""
        return {
            "max_age": self.max_age,
            "max_extensions": self.max_extensions,
            "extend_by": self.extend_by,
            "extensions": used,
        }


def limit_from_state(state: object) -> tuple[SessionLimit | None, int]:
    """The limit a server was started with and its extensions used, from its saved state."""
    if not isinstance(state, Mapping):
        return None, 0
    try:
        limit = SessionLimit(
            max_age=float(state["max_age"]),
            max_extensions=int(state.get("max_extensions", 0)),
            extend_by=float(state.get("extend_by", 0.0)),
        )
        used = int(state.get("extensions", 0))
    except (KeyError, TypeError, ValueError):
        return None, 0
    return (limit, max(used, 0)) if limit.max_age > 0 else (None, 0)


@dataclass(frozen=True)
class Deadlines:
    """When idle reclaim, the session limit and a used-up GPU-hours budget (with
    ``on_budget_exhausted`` "stop") would stop a server (None: never)."""

    idle: float | None
    session: float | None
    budget: float | None = None

    @property
    def stop(self) -> tuple[float | None, str | None]:
        """The first of them, and which rule it is (``"idle"``, ``"session"``, ``"budget"``)."""
        rules = ((self.budget, BUDGET), (self.session, SESSION), (self.idle, IDLE))
        due = [(t, why) for t, why in rules if t is not None]
        if not due:
            return None, None
        when, why = min(due, key=lambda pair: pair[0])
        return when, why


def session_deadline(started: float | None, limit: SessionLimit | None, used: int) -> float | None:
    """Start + ``max_age`` + one ``extend_by`` per extension used; None without a limit."""
    if limit is None or started is None:
        return None
    return started + limit.max_age + max(used, 0) * limit.extend_by


def can_extend(limit: SessionLimit | None, used: int) -> bool:
    """Whether the profile allows one more extension."""
    return limit is not None and limit.extend_by > 0 and used < limit.max_extensions


def deadlines(
    *,
    started: float | None,
    last_activity: float | None,
    holds_gpus: bool,
    gpu_idle_timeout: float,
    limit: SessionLimit | None,
    extensions_used: int,
) -> Deadlines:
    """Both deadlines of one server. Idle reclaim applies to GPU servers only (the CPU
    timeout is jupyterhub-idle-culler's), counted from the last activity, else the start."""
    idle = None
    if holds_gpus and gpu_idle_timeout > 0:
        since = last_activity if last_activity is not None else started
        idle = since + gpu_idle_timeout if since is not None else None
    return Deadlines(idle=idle, session=session_deadline(started, limit, extensions_used))


# -- the queue --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """When a queued request should get its GPUs: ``at`` (Unix time; None: no estimate) and
    ``freed``, how many held GPUs must free up by then."""

    at: float | None
    freed: int


def estimate_wait(
    releases: Sequence[tuple[int, float | None]],
    *,
    free: int,
    ahead: Sequence[int],
    count: int,
    now: float,
) -> Estimate:
    """First come, first served: the requests ``ahead`` (their GPU counts, in order) are
    served first, each from the GPUs free then; ``releases`` are the held GPUs as
    (count, the time they free up at the latest by idle reclaim or a session limit, None if
    neither applies). None when the known releases never free enough."""
    known = sorted((when, n) for n, when in releases if when is not None)
    available, freed, at = free, 0, now
    for need in (*ahead, count):
        while available < need:
            if not known:
                return Estimate(None, freed)
            when, n = known.pop(0)
            available += n
            freed += n
            at = max(at, when)
        available -= need
    return Estimate(at, freed)


def format_minutes(seconds: float) -> str:
    """``"~25 min"``, ``"~2 h 5 min"``, ``"under a minute"``: an estimate, in words."""
    minutes = round(max(seconds, 0.0) / 60)
    if minutes < 1:
        return "under a minute"
    if minutes < 60:
        return f"~{minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"~{hours} h" + (f" {rest} min" if rest else "")


def estimate_sentence(estimate: Estimate, now: float) -> str:
    """The progress page's line about the wait."""
    if estimate.at is None:
        return (
            "No estimate of the wait: the GPUs in use are held by active servers without a "
            "session limit."
        )
    if estimate.freed == 0:
        return "GPUs are free for you now; waiting for the hub to hand them out."
    gpus = "1 GPU frees" if estimate.freed == 1 else f"{estimate.freed} GPUs free"
    return (
        f"{format_minutes(estimate.at - now)}: {gpus} up by then through idle reclaim or "
        "session limits."
    )


__all__ = [
    "BUDGET",
    "IDLE",
    "SESSION",
    "Deadlines",
    "Estimate",
    "SessionLimit",
    "can_extend",
    "deadlines",
    "estimate_sentence",
    "estimate_wait",
    "format_duration",
    "format_minutes",
    "limit_from_state",
    "parse_duration",
    "session_deadline",
]
