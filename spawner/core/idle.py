"""The idle-reclaim decision, pure: what the reclaimer saw of a server in, what to do out.

A busy kernel is activity; with ``require_no_gpu_utilization`` a GPU in use is too; a GPU
server idle for ``gpu_idle_timeout`` is reclaimed (:func:`decide`). The loop that gathers the
observations and acts on them is :mod:`spawner.hub.reclaim`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


def utcnow() -> datetime:
    """Now, as JupyterHub stores times in its database: UTC without tzinfo."""
    return datetime.now(UTC).replace(tzinfo=None)


def to_unix(value: datetime | None) -> float | None:
    """Unix time of a time as JupyterHub stores it (UTC without tzinfo); None stays None."""
    return value.replace(tzinfo=UTC).timestamp() if value is not None else None


# -- the decision ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Observed:
    """What the reclaimer saw of one running server.

    ``busy``: a kernel is executing (None: the server did not say). ``utilization``: percent
    per GPU id, None where unknown (no NVML, MIG device, or a static inventory).
    ``session_deadline``: when its profile's session limit falls due (Unix time; None: none).
    """

    last_activity: datetime | None
    busy: bool | None
    holds_gpus: bool
    utilization: Mapping[str, int | None]
    session_deadline: float | None = None


@dataclass(frozen=True)
class Decision:
    """``keep``: leave it; ``active``: record activity now; ``reclaim``: stop it (``rule``:
    ``"idle"`` or ``"session"``, which rule stops it)."""

    action: str
    reason: str
    idle_seconds: float
    rule: str = "idle"


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

    A session limit that has fallen due stops the server, busy or not (its user was warned).
    Otherwise a busy kernel wins: a running training job is never taken for idle. A server
    that did not say whether a kernel is busy is left alone (the idle culler is the backstop).
    """
    last = observed.last_activity
    idle = max((now - last).total_seconds(), 0.0) if last is not None else 0.0
    due = observed.session_deadline
    if due is not None and now.replace(tzinfo=UTC).timestamp() >= due:
        return Decision("reclaim", "its session limit is reached", idle, rule="session")
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
