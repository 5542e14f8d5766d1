"""GPU-hours budgets as a spawner sees them: its user's budgets, the form's line, the 403.

The numbers are pure (:mod:`spawner.core.usage`); the records come from the hub's database
(:class:`~spawner.runtime.usagestore.UsageStore`), brought up to date from Docker by the
hub's accountant (:mod:`spawner.hub.accounting`) before they are read.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from spawner.backends.errors import WorkspaceError
from spawner.core.usage import (
    BudgetRules,
    BudgetState,
    budget_states,
    budgets_for,
    left_line,
    period_window,
    refusal,
    tightest,
)
from spawner.runtime.usagestore import UsageStore

log = logging.getLogger("gpu-workspaces")
#: JupyterHub's own default database, when its config names none.
JUPYTERHUB_DEFAULT_DB = "sqlite:///jupyterhub.sqlite"


def budget_rules(spawner: Any) -> BudgetRules:
    """The spawner's budget options, as the pure rules read them."""
    return BudgetRules(
        per_user=spawner.gpu_hours_per_user,
        per_user_by_group=dict(spawner.gpu_hours_per_user_by_group),
        per_group=dict(spawner.gpu_hours_per_group),
        period=str(spawner.gpu_hours_period).lower(),
        rolling=bool(spawner.gpu_hours_rolling),
    )


def usage_db_url(spawner: Any) -> str:
    """``usage_db_url``, else the hub's ``db_url`` from the same config."""
    if spawner.usage_db_url:
        return str(spawner.usage_db_url)
    config = spawner.config
    hub = config.get("JupyterHub", {})
    return str(hub.get("db_url") or JUPYTERHUB_DEFAULT_DB)


def usage_store(spawner: Any) -> UsageStore:
    store: UsageStore = spawner.runtime.usage_store(usage_db_url(spawner))
    return store


async def user_budget_states(
    spawner: Any, user: str, groups: list[str], now: float | None = None, *, sync: bool = True
) -> list[BudgetState]:
    """Every budget of ``user`` (in ``groups``), with its use so far this period (the
    records first brought up to date from Docker, unless ``sync`` is False)."""
    rules = budget_rules(spawner)
    budgets = budgets_for(user, groups, rules)
    if not budgets:
        return []
    now = time.time() if now is None else now
    bring_up_to_date = spawner.runtime.usage_sync
    if sync and bring_up_to_date is not None:
        await bring_up_to_date()
    store = usage_store(spawner)
    window = period_window(rules.period, rules.rolling, now)
    records = await store.run(lambda: store.records(window.start, window.end))
    summaries = await store.run(store.summaries) if any(b.scope == "group" for b in budgets) else []
    return budget_states(budgets, records, summaries, rules, now)


async def check_gpu_budget(spawner: Any) -> None:
    """Refuse (403, with a sentence) a GPU spawn whose user or group has no GPU-hours left."""
    states = await user_budget_states(spawner, spawner.user.name, spawner._user_groups())
    exhausted = [s for s in states if s.exhausted]
    if exhausted:
        message = refusal(exhausted[0])
        spawner.log.info("spawn of %s refused: %s", spawner._log_name, message)
        raise WorkspaceError(message, reason="budget", status_code=403)


async def form_budget_line(spawner: Any) -> str:
    """The spawn form's line about the tightest budget ("" without budgets); a database
    that cannot be read leaves the form without it, never without the form."""
    try:
        states = await user_budget_states(spawner, spawner.user.name, spawner._user_groups())
    except Exception as e:
        spawner.log.warning("GPU-hours left not shown on the spawn form: %s", e)
        return ""
    state = tightest(states, time.time())
    return left_line(state) if state is not None else ""


__all__ = [
    "budget_rules",
    "check_gpu_budget",
    "form_budget_line",
    "usage_db_url",
    "usage_store",
    "user_budget_states",
]
