"""The dashboard's JSON document, built from pool views; the page itself is checked in
chromium against a real hub (test_operations.py)."""

from __future__ import annotations

import pytest
from faults import DOCKER_TROUBLE

from spawner.core.inventory import parse_static_inventory
from spawner.core.pool import GPUView, Holding, PoolView, Waiting
from spawner.hub.dashboard import dashboard_data, docker_unavailable, handlers, iso
from spawner.runtime.nvml import GPUSample

NOW = 1_700_000_000.0


def test_dashboard_data_lists_every_gpu_holder_and_queue() -> None:
    inventory = list(
        parse_static_inventory(
            '[{"id": "0", "name": "A100", "memory": "80g"}, '
            '{"id": "1", "name": "A100", "memory": "80g"}, '
            '{"id": "2", "name": "A100", "memory": "80g"}]',
            option="test",
        )
    )
    ann = Holding("gpuws-ann", "ann", "", "gpu-1", NOW - 600, ("0",))
    view = PoolView(
        gpus=(
            GPUView(inventory[0], "held", ann),
            GPUView(inventory[1], "external"),
            GPUView(inventory[2], "free"),
        ),
        queue=(Waiting(0, "gpuws-ben", "ben", "big", "gpu-2", 2, NOW - 30),),
    )
    data = dashboard_data(
        [view],
        {"0": GPUSample(87, 40_000)},
        {("ann", ""): {"last_activity": iso(NOW - 5), "idle_seconds": 5, "state": None}},
        now=NOW,
        settings={"gpu_idle_timeout": 1800},
    )
    assert data["summary"] == {
        "total": 3,
        "allocated": 1,
        "free": 1,
        "external": 1,
        "queue_length": 1,
    }
    first = data["gpus"][0]
    assert (first["name"], first["memory_mib"], first["utilization"]) == ("A100", 81920, 87)
    assert first["holder"] == {
        "user": "ann",
        "server": "",
        "profile": "gpu-1",
        "container": "gpuws-ann",
        "gpus": ["0"],
        "since": iso(NOW - 600),
        "held_seconds": 600,
        "last_activity": iso(NOW - 5),
        "idle_seconds": 5,
        "state": None,
    }
    assert [g["state"] for g in data["gpus"]] == ["held", "external", "free"]
    assert data["gpus"][1]["utilization"] is None
    assert data["queue"] == [
        {
            "position": 0,
            "user": "ben",
            "server": "big",
            "profile": "gpu-2",
            "gpus": 2,
            "since": iso(NOW - 30),
            "waiting_seconds": 30,
        }
    ]
    assert data["reclaim"] == {"gpu_idle_timeout": 1800}


def test_iso_times_are_utc() -> None:
    assert iso(0) is None
    assert iso(NOW) == "2023-11-14T22:13:20Z"


def test_handlers_serve_the_page_and_the_json_under_the_hub() -> None:
    assert [pattern for pattern, _ in handlers()] == [r"/gpus", r"/api/gpus"]


SAYS = {"down": "not answering", "error": "answered the GPU dashboard with an error (engine is"}


@pytest.mark.parametrize(("error", "trouble"), DOCKER_TROUBLE)
def test_docker_trouble_is_a_503_with_a_sentence_and_a_bug_stays_one(
    error: Exception, trouble: str | None
) -> None:
    answer = docker_unavailable(error)
    if trouble is None:
        assert answer is None
        return
    assert answer is not None and answer.status_code == 503
    message = answer.get_message()
    assert SAYS[trouble] in message and message.endswith(".")
    assert "Traceback" not in message
