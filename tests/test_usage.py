"""GPU-hours, the pure part (spawner.core.usage): records cut into days and windows, budget
periods, budgets and their sentences, the reports' numbers, retention. Every function takes
``now``: these tests choose the clock."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from spawner.core.labels import LABEL_GPUS, LABEL_GROUPS, LABEL_PROFILE, LABEL_SERVER, LABEL_USER
from spawner.core.usage import (
    Budget,
    BudgetRules,
    Piece,
    UsageRecord,
    budget_states,
    budgets_for,
    check_retention,
    daily_series,
    left_line,
    period_window,
    pieces,
    record_from_container,
    refusal,
    report_span,
    summarise,
    tightest,
    totals,
    usage_report,
    usage_table,
    warning,
)

H = 3600.0


def t(stamp: str) -> float:
    return datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp()


#: Wednesday 2 December 2026, 15:00 UTC
NOW = t("2026-12-02T15:00:00")


def rec(user: str, start: str, end: str | None, *, gpus: int = 1, **fields: Any) -> UsageRecord:
    values: dict[str, Any] = {
        "key": f"{user}-{start}",
        "container_id": f"c-{user}-{start}",
        "user": user,
        "server": "",
        "groups": (),
        "profile": "gpu-1",
        "gpu_ids": tuple(f"GPU-{i}" for i in range(gpus)),
        "model": "A100",
        "started": t(start),
        "ended": t(end) if end else None,
    }
    values.update(fields)
    return UsageRecord(**values)


@pytest.mark.parametrize(
    ("period", "rolling", "start", "end", "words"),
    [
        ("day", False, "2026-12-02T00:00:00", "2026-12-03T00:00:00", "today"),
        ("week", False, "2026-11-30T00:00:00", "2026-12-07T00:00:00", "this week"),
        ("month", False, "2026-12-01T00:00:00", "2027-01-01T00:00:00", "this month"),
        ("day", True, "2026-12-01T15:00:00", "2026-12-02T15:00:00", "in the last 24 hours"),
        ("week", True, "2026-11-25T15:00:00", "2026-12-02T15:00:00", "in the last 7 days"),
        ("month", True, "2026-11-02T15:00:00", "2026-12-02T15:00:00", "in the last 30 days"),
    ],
)  # fmt: skip
def test_period_windows(period: str, rolling: bool, start: str, end: str, words: str) -> None:
    window = period_window(period, rolling, NOW)
    assert (window.start, window.end, window.words) == (t(start), t(end), words)
    assert window.resets == (None if rolling else t(end))


def test_an_unknown_period_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="day, week, month"):
        period_window("year", False, NOW)


@pytest.mark.parametrize(
    ("record", "start", "end", "expected"),
    [
        # across midnight: one piece per UTC day, GPU-seconds = seconds x GPUs
        (rec("a", "2026-12-01T23:00:00", "2026-12-02T01:30:00", gpus=2),
         "2026-12-01T00:00:00", "2026-12-03T00:00:00",
         [("2026-12-01", 2 * H), ("2026-12-02", 3 * H)]),
        # an open record counts up to now
        (rec("a", "2026-12-02T14:00:00", None),
         "2026-12-02T00:00:00", "2026-12-03T00:00:00", [("2026-12-02", H)]),
        # clipped to the window
        (rec("a", "2026-11-30T12:00:00", "2026-12-02T12:00:00"),
         "2026-12-01T06:00:00", "2026-12-01T18:00:00", [("2026-12-01", 12 * H)]),
        # outside it: nothing
        (rec("a", "2026-11-01T00:00:00", "2026-11-01T01:00:00"),
         "2026-12-01T00:00:00", "2026-12-02T00:00:00", []),
    ],
)  # fmt: skip
def test_pieces_cut_records_at_midnight_and_at_the_window(
    record: UsageRecord, start: str, end: str, expected: list[tuple[str, float]]
) -> None:
    cut = pieces([record], t(start), t(end), NOW)
    assert [(p.day, p.gpu_seconds) for p in cut] == expected
    assert all(p.record == record.key and p.user == record.user for p in cut)


RULES = BudgetRules(
    per_user=40,
    per_user_by_group={"students": 10, "staff": 200},
    per_group={"lab-a": 100, "lab-b": 50},
)


@pytest.mark.parametrize(
    ("user", "groups", "expected"),
    [
        ("ada", [], [("user", "ada", 40, "each user")]),
        ("bo", ["students"], [("user", "bo", 10, "members of group 'students'")]),
        # several groups: the highest per-user budget
        ("cy", ["students", "staff"], [("user", "cy", 200, "members of group 'staff'")]),
        ("di", ["lab-b", "lab-a"], [("user", "di", 40, "each user"),
                                    ("group", "lab-a", 100, "group 'lab-a' together"),
                                    ("group", "lab-b", 50, "group 'lab-b' together")]),
    ],
)  # fmt: skip
def test_which_budgets_apply(user: str, groups: list[str], expected: list[tuple[Any, ...]]) -> None:
    found = budgets_for(user, groups, RULES)
    assert [(b.scope, b.name, b.hours, b.source) for b in found] == expected


def test_no_budget_configured_means_none_applies() -> None:
    assert budgets_for("ada", ["lab-a"], BudgetRules()) == []
    assert not BudgetRules().any


def test_budget_use_left_and_when_it_runs_out() -> None:
    rules = BudgetRules(per_user=40, per_group={"lab": 10}, period="month")
    records = [
        rec("ada", "2026-12-01T00:00:00", "2026-12-01T10:00:00", gpus=2, groups=("lab",)),
        rec("ada", "2026-11-30T20:00:00", "2026-12-01T01:00:00", groups=("lab",)),  # 1 h in
        rec("bo", "2026-12-02T13:00:00", None, groups=("lab",)),  # 2 h so far, running
        rec("ada", "2026-12-02T14:30:00", None),  # running, groups were none at spawn
    ]
    summaries = [Piece("2026-12-01", "", ("lab",), "gpu-1", "A100", 0.5 * H, records=1)]
    budgets = budgets_for("ada", ["lab"], rules)
    user, group = budget_states(budgets, records, summaries, rules, NOW)
    assert (user.used, user.left, user.running_gpus) == (21.5 * H, 18.5 * H, 1)
    assert user.exhausts_at(NOW) == NOW + 18.5 * H
    # the group: ada's 21 h made in it, bo's 2 h and the summary's 0.5 h
    assert (group.used, group.exhausted, group.running_gpus) == (23.5 * H, True, 1)
    assert group.exhausts_at(NOW) == NOW
    assert tightest([user, group], NOW) is group
    assert left_line(user) == "18.5 of 40 GPU-hours left this month"
    assert left_line(group) == "0 of 10 GPU-hours left this month for group 'lab' together"
    assert refusal(group) == (
        "Group 'lab' has used 23.5 of the 10 GPU-hours that group 'lab' together may use per "
        "month, so no GPU server can start now; it resets on 2027-01-01 00:00 UTC. Pick a CPU "
        "profile, or ask an admin for more."
    )


@pytest.mark.parametrize(
    ("used_hours", "running", "policy", "expected"),
    [
        (39.9, 2, "stop", "The GPU-hours budget of each user (40 GPU-hours) runs out in 3 min; "
                          "then this server is stopped and its GPUs freed; save your work."),
        (39.9, 1, "keep", "The GPU-hours budget of each user (40 GPU-hours) runs out in 6 min; "
                          "the server keeps running, over budget."),
        (41, 1, "keep", "The GPU-hours budget of each user (40 GPU-hours) is used up this "
                        "month; the server keeps running, over budget."),
        (12, 0, "stop", "28 of 40 GPU-hours left this month."),
    ],
)  # fmt: skip
def test_in_session_warnings(used_hours: float, running: int, policy: str, expected: str) -> None:
    state = budget_states(
        [Budget("user", "ada", 40, "each user")], [], [], BudgetRules(per_user=40), NOW
    )[0]
    state = type(state)(state.budget, state.window, used_hours * H, running)
    assert warning(state, NOW, policy) == expected


def test_a_rolling_refusal_says_when_it_frees_up() -> None:
    rules = BudgetRules(per_user=1, period="week", rolling=True)
    records = [rec("ada", "2026-12-01T00:00:00", "2026-12-01T02:00:00")]
    (state,) = budget_states(budgets_for("ada", [], rules), records, [], rules, NOW)
    assert state.exhausted
    assert refusal(state).startswith(
        "You have used 2 of the 1 GPU-hours that each user may use in the last 7 days"
    )
    assert "as your oldest use of the period falls out of it" in refusal(state)


CUT = [
    Piece("2026-12-01", "ada", ("lab", "staff"), "gpu-1", "A100", 2 * H, record="r1"),
    Piece("2026-12-02", "ada", ("lab", "staff"), "gpu-1", "A100", 1 * H, record="r1"),
    Piece("2026-12-02", "bo", (), "gpu-2", "H100", 4 * H, record="r2"),
    Piece("2026-12-01", "", ("lab",), "gpu-1", "A100", 0.5 * H, records=3),
]


@pytest.mark.parametrize(
    ("by", "expected"),
    [
        ("user", [("bo", 4.0, 1), ("ada", 3.0, 1), ("(summarised)", 0.5, 3)]),
        ("group", [("lab", 3.5, 4), ("(no group)", 4.0, 1), ("staff", 3.0, 1)]),
        ("profile", [("gpu-2", 4.0, 1), ("gpu-1", 3.5, 4)]),
        ("model", [("H100", 4.0, 1), ("A100", 3.5, 4)]),
    ],
)  # fmt: skip
def test_tables(by: str, expected: list[tuple[str, float, int]]) -> None:
    rows = usage_table(CUT, by)
    assert sorted((r[by], r["gpu_hours"], r["records"]) for r in rows) == sorted(expected)
    assert [r["gpu_hours"] for r in rows] == sorted((r["gpu_hours"] for r in rows), reverse=True)


def test_the_daily_series_stacks_by_user_or_group() -> None:
    chart = daily_series(CUT, "user", t("2026-11-30T00:00:00"), t("2026-12-03T00:00:00"))
    assert chart == {
        "days": ["2026-11-30", "2026-12-01", "2026-12-02"],
        "series": [
            {"key": "bo", "gpu_hours": [0.0, 0.0, 4.0]},
            {"key": "ada", "gpu_hours": [0.0, 2.0, 1.0]},
            {"key": "(summarised)", "gpu_hours": [0.0, 0.5, 0.0]},
        ],
    }
    by_group = daily_series(CUT, "group", t("2026-12-01T00:00:00"), t("2026-12-03T00:00:00"))
    assert by_group["series"][0] == {"key": "(no group)", "gpu_hours": [0.0, 4.0]}


def test_retention_summarises_without_names_and_keeps_the_totals() -> None:
    records = [
        rec("ada", "2026-10-01T23:00:00", "2026-10-02T01:00:00", groups=("lab",)),
        rec("bo", "2026-10-01T10:00:00", "2026-10-01T11:00:00", groups=("lab",), gpus=2),
        rec("cy", "2026-11-30T10:00:00", "2026-11-30T11:00:00"),  # younger than the cutoff
        rec("di", "2026-09-01T10:00:00", None),  # still open: never summarised
    ]
    before = totals(records, [], NOW)
    summary, done = summarise(records, t("2026-11-01T00:00:00"), NOW)
    assert sorted(done) == sorted(r.key for r in records[:2])
    assert sorted((p.day, p.user, p.groups, p.gpu_seconds, p.records) for p in summary) == [
        ("2026-10-01", "", ("lab",), 3 * H, 2),
        ("2026-10-02", "", ("lab",), 1 * H, 0),
    ]
    kept = [r for r in records if r.key not in done]
    assert totals(kept, summary, NOW) == before


@pytest.mark.parametrize(
    ("labels", "started_ns", "ended_ns", "expected"),
    [
        ({LABEL_USER: "ada", LABEL_SERVER: "w", LABEL_PROFILE: "gpu-2", LABEL_GPUS: "G0,G1",
          LABEL_GROUPS: '["lab", "staff"]'}, 1_800_000_000_000_000_000, None,
         {"key": "c1:1800000000000000000", "user": "ada", "server": "w", "profile": "gpu-2",
          "gpu_ids": ("G0", "G1"), "groups": ("lab", "staff"), "model": "A100 + GPU",
          "started": 1.8e9, "ended": None}),
        # a bad groups label: no groups, the record is still kept
        ({LABEL_USER: "ada", LABEL_GPUS: "G0", LABEL_GROUPS: "{oops"}, 1_800_000_000_000_000_000,
         1_800_000_060_000_000_000,
         {"groups": (), "gpu_ids": ("G0",), "model": "A100", "ended": 1.8e9 + 60}),
        # no GPU: not a GPU allocation
        ({LABEL_USER: "ada", LABEL_GPUS: ""}, 1_800_000_000_000_000_000, None, None),
        # never started (Docker's 0001-01-01)
        ({LABEL_USER: "ada", LABEL_GPUS: "G0"}, -62135596800 * 10**9, None, None),
    ],
)  # fmt: skip
def test_records_from_containers(
    labels: dict[str, str], started_ns: int, ended_ns: int | None, expected: dict[str, Any] | None
) -> None:
    found = record_from_container(
        "c1", labels, started_ns=started_ns, ended_ns=ended_ns, models={"G0": "A100"}
    )
    if expected is None:
        assert found is None
        return
    assert found is not None
    assert {k: getattr(found, k) for k in expected} == expected


@pytest.mark.parametrize(
    ("first", "last", "problem"),
    [
        ("2026-12-05", "2026-12-01", "on or before"),
        ("yesterday", None, "days such as"),
        ("2020-01-01", "2026-12-01", "at most 1000 days"),
    ],
)
def test_report_spans_refuse_bad_days(first: str, last: str | None, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        report_span(first, last, NOW)


def test_the_default_report_is_the_last_30_days_to_today() -> None:
    assert report_span(None, None, NOW) == (t("2026-11-03T00:00:00"), t("2026-12-03T00:00:00"))


def test_a_users_report_holds_only_their_records_and_no_summaries() -> None:
    records = [
        rec("ada", "2026-12-01T00:00:00", "2026-12-01T01:00:00"),
        rec("bo", "2026-12-01T00:00:00", None),
    ]
    summaries = [Piece("2026-12-01", "", (), "gpu-1", "A100", H, records=1)]
    start, end = report_span("2026-12-01", "2026-12-02", NOW)
    mine = usage_report(
        records, summaries, start=start, end=end, by="user", stack="user", now=NOW, user="ada"
    )
    assert [r["user"] for r in mine["records"]] == ["ada"] and mine["total_gpu_hours"] == 1.0
    everyone = usage_report(
        records, summaries, start=start, end=end, by="user", stack="user", now=NOW
    )
    assert everyone["total_gpu_hours"] == 1.0 + 39.0 + 1.0


@pytest.mark.parametrize(
    ("days", "rules", "problem"),
    [
        (400, BudgetRules(per_user=1), None),
        (7, BudgetRules(), None),
        (7, BudgetRules(per_user=1), "shorter than the budgets' period (month"),
        (3, BudgetRules(per_group={"a": 1}, period="week"), "is 3 days"),
    ],
)
def test_retention_must_cover_the_budget_period(
    days: float, rules: BudgetRules, problem: str | None
) -> None:
    found = check_retention(days, rules)
    assert (found is None) if problem is None else (problem in str(found))
