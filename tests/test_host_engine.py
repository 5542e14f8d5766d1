"""The machine's own Docker engine is exactly as the run found it (this runs last)."""

from __future__ import annotations

import host_engine
import pytest


@pytest.mark.last
def test_the_machines_engine_is_untouched(host_engine_before: host_engine.Snapshot) -> None:
    after = host_engine.snapshot()
    changes = host_engine.differences(host_engine_before, after)
    running = sum(c["state"] == "running" for c in (after.get("containers") or {}).values())
    print(
        f"machine engine: answers={after['answers']}, "
        f"{len(after.get('containers') or {})} containers ({running} running), "
        f"{len(after.get('networks') or [])} networks, {len(after.get('volumes') or [])} volumes"
    )
    assert not changes, "the run changed the machine's Docker engine:\n" + "\n".join(changes)


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ({"answers": False}, {"answers": False}, []),
        ({"answers": False}, {"answers": True}, ["did not answer before the run and answered"]),
        (
            {"answers": True, "daemon": {"pid": 1}, "containers": {}, "networks": [],
             "volumes": ["a"]},
            {"answers": True, "daemon": {"pid": 2}, "containers": {}, "networks": ["n"],
             "volumes": []},
            ["its dockerd changed", "network n appeared", "volume a disappeared"],
        ),
        (
            {"answers": True, "daemon": None, "volumes": [], "networks": [],
             "containers": {"1": {"name": "/db", "state": "running", "started": "t1"}}},
            {"answers": True, "daemon": None, "volumes": [], "networks": [],
             "containers": {"1": {"name": "/db", "state": "running", "started": "t2"},
                            "2": {"name": "/x", "state": "created", "started": ""}}},
            ["container /x appeared", "container /db changed"],
        ),
    ],
)  # fmt: skip
def test_differences_name_each_change(
    before: host_engine.Snapshot, after: host_engine.Snapshot, expected: list[str]
) -> None:
    found = host_engine.differences(before, after)
    assert len(found) == len(expected), found
    for sentence in expected:
        assert any(sentence in line for line in found), (sentence, found)
