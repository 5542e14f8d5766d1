"""GPU-hours: usage records, periods, budgets and the numbers of the reports; pure.

A **usage record** is one GPU allocation: one run of one container (Docker's ``StartedAt`` to
its ``FinishedAt``; an open record counts up to now) with the GPUs it held, the user, their
groups at the time, the server, profile and GPU model. GPU-seconds are seconds times GPUs.

Every aggregation goes through :func:`pieces`: the GPU-seconds of each record inside a window,
cut at UTC midnights. Summaries of records older than the retention (:func:`summarise`) are
pieces too, without a user name, so the reports and budgets read both alike. Every function
takes ``now`` (Unix seconds): the clock is the caller's, so tests choose it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from spawner.core.labels import LABEL_GPUS, LABEL_GROUPS, LABEL_PROFILE, LABEL_SERVER, LABEL_USER

DAY = 86400.0
PERIODS = ("day", "week", "month")
#: A rolling period's length in days.
ROLLING_DAYS = {"day": 1, "week": 7, "month": 30}
GROUP_BY = ("user", "group", "profile", "model")
STOP, KEEP = "stop", "keep"
#: The key under which summarised usage (older than the retention) shows in user reports.
SUMMARISED = "(summarised)"
NO_GROUP = "(no group)"


@dataclass(frozen=True)
class UsageRecord:
    """One GPU allocation (see the module)."""

    key: str  # "<container id>:<StartedAt in ns>": one run of one container
    container_id: str
    user: str
    server: str
    groups: tuple[str, ...]
    profile: str
    gpu_ids: tuple[str, ...]
    model: str
    started: float
    ended: float | None = None

    def seconds_in(self, start: float, end: float, now: float) -> float:
        """Wall seconds of this run inside ``[start, end)``."""
        stop = self.ended if self.ended is not None else now
        return max(0.0, min(stop, end) - max(self.started, start))

    def gpu_seconds(self, now: float) -> float:
        """GPU-seconds of the whole run (so far, while it is open)."""
        return self.seconds_in(self.started, math.inf, now) * len(self.gpu_ids)


@dataclass(frozen=True)
class Piece:
    """GPU-seconds of one record (or of one summary row) on one UTC day."""

    day: str  # YYYY-MM-DD
    user: str  # "" for a summary
    groups: tuple[str, ...]
    profile: str
    model: str
    gpu_seconds: float
    record: str = ""  # the record's key; "" for a summary
    records: int = 0  # a summary: the records it stands for


@dataclass(frozen=True)
class Window:
    """A span of time ``[start, end)``, and how a sentence names it."""

    start: float
    end: float
    words: str  # "this month", "in the last 7 days"
    resets: float | None = None  # a calendar period: when the next one begins


def day_of(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d")


def day_start(t: float) -> float:
    moment = datetime.fromtimestamp(t, UTC)
    return datetime(moment.year, moment.month, moment.day, tzinfo=UTC).timestamp()


def pieces(records: Iterable[UsageRecord], start: float, end: float, now: float) -> list[Piece]:
    """Each record's GPU-seconds inside ``[start, end)``, cut at UTC midnights."""
    out: list[Piece] = []
    for record in records:
        stop = min(record.ended if record.ended is not None else now, end)
        cursor = max(record.started, start)
        while cursor < stop:
            cut = min(day_start(cursor) + DAY, stop)
            out.append(
                Piece(
                    day=day_of(cursor),
                    user=record.user,
                    groups=record.groups,
                    profile=record.profile,
                    model=record.model,
                    gpu_seconds=(cut - cursor) * len(record.gpu_ids),
                    record=record.key,
                )
            )
            cursor = cut
    return out


def summaries_in(summaries: Iterable[Piece], start: float, end: float) -> list[Piece]:
    """The summary rows of the days that begin inside ``[start, end)``."""
    return [s for s in summaries if start <= _day_epoch(s.day) < end]


def _day_epoch(day: str) -> float:
    return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()


def record_from_container(
    container_id: str,
    labels: Mapping[str, str],
    *,
    started_ns: int,
    ended_ns: int | None,
    models: Mapping[str, str],
) -> UsageRecord | None:
    """The usage record of one run of a workspace container, from its labels (user, server,
    profile, GPUs, groups at spawn) and Docker's times; None for a container that holds no
    GPU or never started. ``models`` names each GPU id's model."""
    gpu_ids = tuple(g for g in str(labels.get(LABEL_GPUS) or "").split(",") if g)
    if not gpu_ids or started_ns < 10**18:  # Docker's "0001-01-01": never started
        return None
    try:
        groups = tuple(sorted(str(g) for g in json.loads(labels.get(LABEL_GROUPS) or "[]")))
    except (ValueError, TypeError):
        groups = ()
    names = sorted({models.get(g, "GPU") for g in gpu_ids})
    started = started_ns / 1e9
    ended = ended_ns / 1e9 if ended_ns is not None else None
    return UsageRecord(
        key=f"{container_id}:{started_ns}",
        container_id=container_id,
        user=str(labels.get(LABEL_USER) or ""),
        server=str(labels.get(LABEL_SERVER) or ""),
        groups=groups,
        profile=str(labels.get(LABEL_PROFILE) or ""),
        gpu_ids=gpu_ids,
        model=" + ".join(names),
        started=started,
        ended=None if ended is None else max(ended, started),
    )


# -- periods ----------------------------------------------------------------------------------


def period_window(period: str, rolling: bool, now: float) -> Window:
    """The budget period that holds ``now``: a calendar one (UTC day, ISO week from Monday,
    month) or the last 1, 7 or 30 days."""
    if period not in PERIODS:
        raise ValueError(f"must be one of {', '.join(PERIODS)}, got {period!r:.40}")
    if rolling:
        days = ROLLING_DAYS[period]
        words = "in the last 24 hours" if days == 1 else f"in the last {days} days"
        return Window(now - days * DAY, now, words)
    moment = datetime.fromtimestamp(now, UTC)
    first = datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
    if period == "day":
        start, end = first, first + timedelta(days=1)
    elif period == "week":
        start = first - timedelta(days=first.weekday())
        end = start + timedelta(days=7)
    else:
        start = first.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
    words = {"day": "today", "week": "this week", "month": "this month"}[period]
    return Window(start.timestamp(), end.timestamp(), words, resets=end.timestamp())


# -- budgets ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetRules:
    """The configured budgets (GPU-hours), as the spawner's options give them."""

    per_user: float | None = None
    per_user_by_group: Mapping[str, float] = field(default_factory=dict)
    per_group: Mapping[str, float] = field(default_factory=dict)
    period: str = "month"
    rolling: bool = False

    @property
    def any(self) -> bool:
        return self.per_user is not None or bool(self.per_user_by_group or self.per_group)


@dataclass(frozen=True)
class Budget:
    """One budget that applies to a user: their own, or one of their groups' together."""

    scope: str  # "user" | "group"
    name: str  # the user's or the group's name
    hours: float
    source: str  # "each user", "members of group 'x'", "group 'x' together"


def budgets_for(user: str, groups: Sequence[str], rules: BudgetRules) -> list[Budget]:
    """The budgets a user's GPU-hours count against. Per user: the highest of their groups'
    per-user budgets, else ``per_user``; per group: each of their groups that has one."""
    out: list[Budget] = []
    by_group = {g: h for g, h in rules.per_user_by_group.items() if g in groups}
    if by_group:
        group = max(by_group, key=lambda g: by_group[g])
        out.append(Budget("user", user, by_group[group], f"members of group '{group}'"))
    elif rules.per_user is not None:
        out.append(Budget("user", user, rules.per_user, "each user"))
    for group in sorted(set(groups) & set(rules.per_group)):
        out.append(Budget("group", group, rules.per_group[group], f"group '{group}' together"))
    return out


@dataclass(frozen=True)
class BudgetState:
    """How much of one budget is used in its current window, and how fast it goes now."""

    budget: Budget
    window: Window
    used: float  # GPU-seconds
    running_gpus: int  # GPUs of open records that count against it

    @property
    def limit(self) -> float:
        return self.budget.hours * 3600.0

    @property
    def left(self) -> float:
        return self.limit - self.used

    @property
    def exhausted(self) -> bool:
        return self.left <= 0

    def exhausts_at(self, now: float) -> float | None:
        """When the running GPUs use it up at this pace (None: nothing runs against it)."""
        if self.exhausted:
            return now
        if not self.running_gpus:
            return None
        return now + self.left / self.running_gpus


def _counts(budget: Budget, user: str, groups: Sequence[str]) -> bool:
    return user == budget.name if budget.scope == "user" else budget.name in groups


def budget_states(
    budgets: Sequence[Budget],
    records: Sequence[UsageRecord],
    summaries: Sequence[Piece],
    rules: BudgetRules,
    now: float,
) -> list[BudgetState]:
    """Each budget's use in the period holding ``now``. A user's own budget counts their
    records; a group's counts every record made while its user was a member (summaries,
    without names, count for groups only)."""
    window = period_window(rules.period, rules.rolling, now)
    cut = pieces(records, window.start, window.end, now)
    old = summaries_in(summaries, window.start, window.end)
    states = []
    for budget in budgets:
        used = sum(p.gpu_seconds for p in cut if _counts(budget, p.user, p.groups))
        if budget.scope == "group":
            used += sum(p.gpu_seconds for p in old if budget.name in p.groups)
        running = sum(
            len(r.gpu_ids) for r in records if r.ended is None and _counts(budget, r.user, r.groups)
        )
        states.append(BudgetState(budget, window, used, running))
    return states


def tightest(states: Sequence[BudgetState], now: float) -> BudgetState | None:
    """The budget that runs out first: least left, then soonest used up."""
    if not states:
        return None
    return min(states, key=lambda s: (s.left > 0, s.exhausts_at(now) or math.inf, s.left))


def hours(seconds: float) -> str:
    """``"12.5"``, ``"40"``, ``"0.25"``: GPU-hours in a sentence (one decimal from one hour
    on, two below; no trailing zeros)."""
    value = max(seconds, 0.0) / 3600.0
    text = f"{value:.1f}" if value >= 1 else f"{value:.2f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def left_line(state: BudgetState) -> str:
    """The spawn form's line: ``"12.5 of 40 GPU-hours left this month"``."""
    whose = "" if state.budget.scope == "user" else f" for {state.budget.source}"
    return f"{hours(state.left)} of {hours(state.limit)} GPU-hours left {state.window.words}{whose}"


def _resets(state: BudgetState) -> str:
    if state.window.resets is None:
        return "it frees up as your oldest use of the period falls out of it"
    moment = datetime.fromtimestamp(state.window.resets, UTC)
    return f"it resets on {moment:%Y-%m-%d %H:%M} UTC"


def refusal(state: BudgetState) -> str:
    """Why a GPU spawn is refused (403): the budget, what was used, when it comes back."""
    budget = state.budget
    who = "You have" if budget.scope == "user" else f"Group '{budget.name}' has"
    return (
        f"{who} used {hours(state.used)} of the {hours(state.limit)} GPU-hours that "
        f"{budget.source} may use {state.window.words.replace('this ', 'per ')}, so no GPU "
        f"server can start now; {_resets(state)}. Pick a CPU profile, or ask an admin for more."
    )


def warning(state: BudgetState, now: float, on_exhausted: str) -> str:
    """The in-session sentence about a budget that runs out (or has run out)."""
    what = f"The GPU-hours budget of {state.budget.source}"
    then = (
        "then this server is stopped and its GPUs freed; save your work"
        if on_exhausted == STOP
        else "the server keeps running, over budget"
    )
    at = state.exhausts_at(now)
    if at is None:
        return f"{left_line(state)}."
    if at <= now:
        return f"{what} ({hours(state.limit)} GPU-hours) is used up {state.window.words}; {then}."
    minutes = max(1, math.ceil((at - now) / 60))
    return f"{what} ({hours(state.limit)} GPU-hours) runs out in {minutes} min; {then}."


# -- reports ----------------------------------------------------------------------------------


def _keys(piece: Piece, by: str) -> tuple[str, ...]:
    if by == "user":
        return (piece.user or SUMMARISED,)
    if by == "group":
        return piece.groups or (NO_GROUP,)
    return (piece.profile or "none",) if by == "profile" else (piece.model or "GPU",)


def usage_table(cut: Sequence[Piece], by: str) -> list[dict[str, object]]:
    """One row per user, group, profile or GPU model: GPU-hours and records, most used
    first. A record counts in each group its user was in."""
    if by not in GROUP_BY:
        raise ValueError(f"must be one of {', '.join(GROUP_BY)}, got {by!r:.40}")
    seconds: dict[str, float] = {}
    records: dict[str, set[str]] = {}
    summarised: dict[str, int] = {}
    for piece in cut:
        for key in _keys(piece, by):
            seconds[key] = seconds.get(key, 0.0) + piece.gpu_seconds
            if piece.record:
                records.setdefault(key, set()).add(piece.record)
            else:
                summarised[key] = summarised.get(key, 0) + piece.records
    rows = [
        {
            by: key,
            "gpu_hours": round(total / 3600.0, 4),
            "records": len(records.get(key, ())) + summarised.get(key, 0),
        }
        for key, total in seconds.items()
    ]
    return sorted(rows, key=lambda row: (-float(str(row["gpu_hours"])), str(row[by])))


def daily_series(cut: Sequence[Piece], by: str, start: float, end: float) -> dict[str, object]:
    """GPU-hours per UTC day in ``[start, end)``, one series per user or group (the chart)."""
    days = []
    cursor = day_start(start)
    while cursor < end:
        days.append(day_of(cursor))
        cursor += DAY
    index = {day: i for i, day in enumerate(days)}
    series: dict[str, list[float]] = {}
    for piece in cut:
        if piece.day not in index:
            continue
        for key in _keys(piece, by):
            values = series.setdefault(key, [0.0] * len(days))
            values[index[piece.day]] += piece.gpu_seconds / 3600.0
    ordered = sorted(series.items(), key=lambda item: (-sum(item[1]), item[0]))
    return {
        "days": days,
        "series": [{"key": k, "gpu_hours": [round(v, 4) for v in vs]} for k, vs in ordered],
    }


def usage_report(
    records: Sequence[UsageRecord],
    summaries: Sequence[Piece],
    *,
    start: float,
    end: float,
    by: str,
    stack: str,
    now: float,
    user: str | None = None,
) -> dict[str, object]:
    """What /hub/usage shows and /hub/api/usage exports (JSON and CSV): the table by ``by``,
    the daily chart stacked by ``stack``, and the records, all for ``[start, end)``.
    ``user``: only that user's records (and no summaries, which have no names)."""
    if user is not None:
        records = [r for r in records if r.user == user]
        summaries = []
    cut = pieces(records, start, end, now) + summaries_in(summaries, start, end)
    listed = [r for r in records if r.seconds_in(start, end, now) > 0 or r.ended is None]
    return {
        "from": day_of(start),
        "to": day_of(end - 1),
        "by": by,
        "stack": stack,
        "total_gpu_hours": round(sum(p.gpu_seconds for p in cut) / 3600.0, 4),
        "rows": usage_table(cut, by),
        "chart": daily_series(cut, stack, start, end),
        "records": [_listed(r, start, end, now) for r in listed],
    }


def _listed(record: UsageRecord, start: float, end: float, now: float) -> dict[str, object]:
    return {
        "key": record.key,
        "container_id": record.container_id,
        "user": record.user,
        "server": record.server,
        "groups": list(record.groups),
        "profile": record.profile,
        "gpu_ids": list(record.gpu_ids),
        "model": record.model,
        "started": record.started,
        "ended": record.ended,
        "gpu_seconds": round(record.seconds_in(start, end, now) * len(record.gpu_ids), 3),
    }


def report_span(first: str | None, last: str | None, now: float) -> tuple[float, float]:
    """``[start, end)`` from two inclusive UTC days (YYYY-MM-DD); by default the last 30
    days to today. :class:`ValueError` with a sentence for a bad day or order."""
    try:
        end = _day_epoch(last) + DAY if last else day_start(now) + DAY
        start = _day_epoch(first) if first else end - 30 * DAY
    except ValueError:
        raise ValueError("from and to must be days such as 2026-12-01") from None
    if start >= end:
        raise ValueError("from must be on or before to")
    if end - start > 1000 * DAY:
        raise ValueError("a report covers at most 1000 days")
    return start, end


# -- retention and the lifetime totals ---------------------------------------------------------


def summarise(
    records: Iterable[UsageRecord], cutoff: float, now: float
) -> tuple[list[Piece], list[str]]:
    """Records that ended before ``cutoff`` as summary rows (day, groups, profile, model;
    no user, server, GPU ids or times), and the keys of those records, to delete."""
    merged: dict[tuple[str, tuple[str, ...], str, str], Piece] = {}
    done: list[str] = []
    for record in records:
        if record.ended is None or record.ended >= cutoff:
            continue
        done.append(record.key)
        for i, piece in enumerate(pieces([record], record.started, record.ended, now)):
            key = (piece.day, piece.groups, piece.profile, piece.model)
            before = merged.get(key)
            merged[key] = Piece(
                day=piece.day,
                user="",
                groups=piece.groups,
                profile=piece.profile,
                model=piece.model,
                gpu_seconds=piece.gpu_seconds + (before.gpu_seconds if before else 0.0),
                records=(1 if i == 0 else 0) + (before.records if before else 0),
            )
    return list(merged.values()), done


def totals(
    records: Iterable[UsageRecord], summaries: Iterable[Piece], now: float
) -> dict[tuple[str, str], float]:
    """GPU-seconds ever, by (profile, group): a record counts in each of its groups, one
    without groups under ``""``. Summaries keep these, so the totals only ever grow."""
    out: dict[tuple[str, str], float] = {}
    rows = [(r.profile, r.groups, r.gpu_seconds(now)) for r in records]
    rows += [(s.profile, s.groups, s.gpu_seconds) for s in summaries]
    for profile, groups, seconds in rows:
        for group in groups or ("",):
            out[(profile, group)] = out.get((profile, group), 0.0) + seconds
    return out


def check_retention(days: float, rules: BudgetRules) -> str | None:
    """Why a retention is too short for the budgets (per-user budgets need their users'
    records for a whole period), or None."""
    if not rules.any:
        return None
    longest = {"day": 1, "week": 7, "month": 31}[rules.period]
    if days < longest:
        return (
            f"is {days:g} days, shorter than the budgets' period ({rules.period}, up to "
            f"{longest} days): records would be summarised before their period ends"
        )
    return None


__all__ = [
    "GROUP_BY",
    "KEEP",
    "PERIODS",
    "STOP",
    "Budget",
    "BudgetRules",
    "BudgetState",
    "Piece",
    "UsageRecord",
    "Window",
    "budget_states",
    "budgets_for",
    "check_retention",
    "daily_series",
    "left_line",
    "period_window",
    "pieces",
    "record_from_container",
    "refusal",
    "report_span",
    "summaries_in",
    "summarise",
    "tightest",
    "totals",
    "usage_report",
    "usage_table",
    "warning",
]
