"""Session limits, stop deadlines and the queue estimate: the pure parts, as tables."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from spawner.core.idle import Observed, decide
from spawner.core.pool import GPUView, Holding, PoolView
from spawner.core.session import (
    Deadlines,
    SessionLimit,
    can_extend,
    deadlines,
    estimate_sentence,
    estimate_wait,
    format_duration,
    format_minutes,
    limit_from_state,
    parse_duration,
)
from spawner.hub.dashboard import iso
from spawner.hub.sessionapi import allocation, extend_refusal, idle_rule, session_document

T0 = 1_800_000_000.0  # a Unix time


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(3600, 3600.0), (1.5, 1.5), ("8h", 28800.0), ("90m", 5400.0), ("1h30m", 5400.0),
     (" 2d ", 172800.0), ("45s", 45.0), ("1.5h", 5400.0), ("1H", 3600.0)],
)  # fmt: skip
def test_durations_read(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "8", "h", "8 hours", "-1h", 0, -5, True, None, [1], "nan"])
def test_bad_durations_are_one_sentence(value: object) -> None:
    with pytest.raises(ValueError, match=r"^must be a duration") as refused:
        parse_duration(value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("seconds", "words"),
    [(45, "45 s"), (60, "1 min"), (90, "1 min 30 s"), (3600, "1 h"), (5400, "1 h 30 min"),
     (28800, "8 h")],
)  # fmt: skip
def test_durations_in_words(seconds: float, words: str) -> None:
    assert format_duration(seconds) == words


@pytest.mark.parametrize(
    ("kwargs", "idle", "session", "stop"),
    [
        # a GPU server: idle from its last activity; no session limit
        ({"last_activity": T0 + 100, "holds_gpus": True}, T0 + 1900, None, (T0 + 1900, "idle")),
        # never active yet: counted from the start
        ({"last_activity": None, "holds_gpus": True}, T0 + 1800, None, (T0 + 1800, "idle")),
        # a CPU server: the GPU rule does not apply (jupyterhub-idle-culler's timeout does)
        ({"last_activity": T0, "holds_gpus": False}, None, None, (None, None)),
        # GPU reclaim off
        ({"holds_gpus": True, "gpu_idle_timeout": 0}, None, None, (None, None)),
        # a session limit first
        (
            {"holds_gpus": True, "last_activity": T0 + 3000, "limit": SessionLimit(3600, 2, 600)},
            T0 + 4800, T0 + 3600, (T0 + 3600, "session"),
        ),
        # two extensions used: 3600 + 2 x 600
        (
            {"holds_gpus": False, "limit": SessionLimit(3600, 2, 600), "extensions_used": 2},
            None, T0 + 4800, (T0 + 4800, "session"),
        ),
    ],
)  # fmt: skip
def test_deadlines(
    kwargs: dict[str, Any], idle: float | None, session: float | None, stop: tuple[Any, Any]
) -> None:
    args: dict[str, Any] = {
        "started": T0,
        "last_activity": None,
        "holds_gpus": True,
        "gpu_idle_timeout": 1800,
        "limit": None,
        "extensions_used": 0,
        **kwargs,
    }
    due = deadlines(**args)
    assert (due.idle, due.session) == (idle, session)
    assert due.stop == stop


@pytest.mark.parametrize(
    ("limit", "used", "can", "refusal"),
    [
        (None, 0, False, "no session limit"),
        (SessionLimit(3600), 0, False, "does not allow extending"),
        (SessionLimit(3600, 2, 600), 0, True, None),
        (SessionLimit(3600, 2, 600), 1, True, None),
        (SessionLimit(3600, 2, 600), 2, False, "already extended 2 times"),
        (SessionLimit(3600, 1, 600), 1, False, "already extended once"),
    ],
)
def test_extensions(limit: SessionLimit | None, used: int, can: bool, refusal: str | None) -> None:
    assert can_extend(limit, used) is can
    said = extend_refusal(limit, used)
    assert (said is None) == (refusal is None)
    if refusal is not None:
        assert said is not None and refusal in said and said.endswith(".")


@pytest.mark.parametrize(
    ("state", "limit", "used"),
    [
        ({"max_age": 60, "max_extensions": 1, "extend_by": 30, "extensions": 1},
         SessionLimit(60, 1, 30), 1),
        ({"max_age": 60}, SessionLimit(60, 0, 0), 0),
        ({"max_age": 0}, None, 0),
        ({"max_age": "x"}, None, 0),
        ({}, None, 0),
        (None, None, 0),
        ({"max_age": 60, "extensions": -3}, SessionLimit(60), 0),
    ],
)  # fmt: skip
def test_limits_come_back_from_the_state(state: object, limit: Any, used: int) -> None:
    assert limit_from_state(state) == (limit, used)
    if limit is not None:
        assert limit_from_state(limit.to_state(used)) == (limit, used)


def _now(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC).replace(tzinfo=None)


@pytest.mark.parametrize(
    ("busy", "session_deadline", "now", "action", "rule"),
    [
        # a session limit stops a busy server
        (True, T0 + 60, T0 + 60, "reclaim", "session"),
        (True, T0 + 60, T0 + 59, "active", "idle"),
        (False, None, T0 + 60, "keep", "idle"),
        # idle past the GPU timeout: the idle rule
        (False, T0 + 99999, T0 + 4000, "reclaim", "idle"),
    ],
)
def test_the_reclaim_decision_enforces_session_limits(
    busy: bool, session_deadline: float | None, now: float, action: str, rule: str
) -> None:
    observed = Observed(
        last_activity=_now(T0),
        busy=busy,
        holds_gpus=True,
        utilization={"0": None},
        session_deadline=session_deadline,
    )
    decision = decide(
        observed,
        now=_now(now),
        gpu_idle_timeout=1800,
        require_no_gpu_utilization=True,
        utilization_threshold=1,
    )
    assert (decision.action, decision.rule) == (action, rule)


# -- the queue --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("releases", "free", "ahead", "count", "at", "freed"),
    [
        # one holder's GPU frees at T0+600: the one waiting request gets it then
        ([(1, T0 + 600)], 0, [], 1, T0 + 600, 1),
        # two needed: the two earliest releases
        ([(1, T0 + 900), (1, T0 + 300), (1, T0 + 600)], 0, [], 2, T0 + 600, 2),
        # one request ahead takes the first GPU to free
        ([(1, T0 + 300), (1, T0 + 600)], 0, [1], 1, T0 + 600, 2),
        # a free GPU counts, held for the 2-GPU request ahead
        ([(1, T0 + 300), (2, T0 + 900)], 1, [2], 1, T0 + 900, 3),
        # a holder with no rule (active, no session limit) never frees
        ([(1, None)], 0, [], 1, None, 0),
        ([(1, None), (1, T0 + 60)], 0, [], 2, None, 1),
        # enough free now: no wait
        ([], 2, [], 1, T0, 0),
        # a release in the past (the reclaimer is about to act) counts as now
        ([(1, T0 - 30)], 0, [], 1, T0, 1),
    ],
)
def test_the_queue_estimate(
    releases: list[tuple[int, float | None]],
    free: int,
    ahead: list[int],
    count: int,
    at: float | None,
    freed: int,
) -> None:
    estimate = estimate_wait(releases, free=free, ahead=ahead, count=count, now=T0)
    assert (estimate.at, estimate.freed) == (at, freed)


@pytest.mark.parametrize(
    ("at", "freed", "sentence"),
    [
        (T0 + 1500, 2, "~25 min: 2 GPUs free up by then through idle reclaim or session limits."),
        (T0 + 600, 1, "~10 min: 1 GPU frees up by then through idle reclaim or session limits."),
        (T0 + 7500, 1, "~2 h 5 min: 1 GPU frees up by then"),
        (T0 + 20, 1, "under a minute: 1 GPU frees up"),
        (None, 0, "No estimate of the wait"),
        (T0, 0, "GPUs are free for you now"),
    ],
)
def test_the_queue_sentence(at: float | None, freed: int, sentence: str) -> None:
    from spawner.core.session import Estimate

    assert estimate_sentence(Estimate(at, freed), T0).startswith(sentence)


@pytest.mark.parametrize(("seconds", "words"), [(0, "under a minute"), (29, "under a minute"),
                                                (90, "~2 min"), (3600, "~1 h")])  # fmt: skip
def test_minutes_in_words(seconds: float, words: str) -> None:
    assert format_minutes(seconds) == words


# -- the session document ---------------------------------------------------------------------

SETTINGS = {"gpu_idle_timeout": 1800.0, "warn_before": 600.0, "status_poll_interval": 15.0}


def test_the_document_of_a_gpu_server_with_a_session_limit() -> None:
    limit = SessionLimit(7200, 2, 1800)
    doc = session_document(
        user="ada",
        server="",
        profile={"slug": "gpu-1", "display_name": "1 GPU"},
        gpus=[{"id": "0", "index": 0, "name": "NVIDIA A100 80GB", "memory_mib": 81920}],
        started=T0,
        last_activity=T0 + 600,
        due=Deadlines(idle=T0 + 2400, session=T0 + 7200),
        limit=limit,
        extensions_used=1,
        settings=SETTINGS,
        waiting=3,
        now=T0 + 1900,
    )
    assert doc["stop_at"] == iso(T0 + 2400) and doc["stop_reason"] == "idle"
    assert doc["stop_in_seconds"] == 500
    assert doc["idle"] == {
        "applies": True,
        "timeout_seconds": 1800.0,
        "last_activity": iso(T0 + 600),
        "deadline": iso(T0 + 2400),
        "rule": idle_rule(1800, True),
    }
    assert doc["session"] == {
        "max_age_seconds": 7200,
        "deadline": iso(T0 + 7200),
        "extensions_used": 1,
        "max_extensions": 2,
        "extend_seconds": 1800,
        "can_extend": True,
    }
    assert doc["queue"] == {"waiting": 3}
    assert (doc["warn_before_seconds"], doc["poll_seconds"]) == (600.0, 15.0)
    assert iso(T0).endswith("Z") and "+" not in iso(T0)  # type: ignore[operator]


def test_the_document_of_a_cpu_server_has_no_deadline() -> None:
    doc = session_document(
        user="ada",
        server="lab",
        profile=None,
        gpus=[],
        started=T0,
        last_activity=None,
        due=Deadlines(None, None),
        limit=None,
        extensions_used=0,
        settings=SETTINGS,
        waiting=0,
        now=T0,
    )
    assert (doc["stop_at"], doc["stop_reason"], doc["stop_in_seconds"]) == (None, None, None)
    assert doc["idle"]["applies"] is False and "holds no GPU" in doc["idle"]["rule"]
    assert doc["session"]["can_extend"] is False and doc["session"]["max_age_seconds"] is None


def test_the_allocation_names_the_models_the_pool_knows() -> None:
    from spawner.core.inventory import GPU

    a100 = GPU(id="1", index=1, name="NVIDIA A100 80GB", memory_mib=81920)
    other = GPU(id="0", index=0, name="NVIDIA A100 80GB", memory_mib=81920)
    held = Holding("jupyter-ada", "ada", "", "gpu-1", T0, ("1",))
    theirs = Holding("jupyter-bo", "bo", "", "gpu-1", T0, ("0",))
    view = PoolView((GPUView(other, "held", theirs), GPUView(a100, "held", held)), ())
    assert allocation([view], "ada", "", ["1"]) == [
        {"id": "1", "index": 1, "name": "NVIDIA A100 80GB", "memory_mib": 81920}
    ]
    # a GPU the pools do not show (no source yet): its id alone
    assert allocation([], "ada", "", ["3"]) == [
        {"id": "3", "index": None, "name": None, "memory_mib": None}
    ]
