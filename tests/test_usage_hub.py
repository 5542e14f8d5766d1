"""GPU-hours on a real hub, a real engine with fake GPUs, and a real database: the hub's
sqlite, and a PostgreSQL from Debian's packages started here; every test runs on both.

The truth is what the engine itself says: its ``start`` and ``die`` events of the hub's
containers, read by the test. Usage records must match them within a second through a normal
stop, a kill behind the hub's back, a hub restart with a server running, and a hub that was
down while a server ran (and was killed). Where time matters, the test sets it: history is
written into the database as records of the past, and budgets are small enough (0.01 GPU-hours
is 36 s) to run out while the test watches.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from harness import Hub, wait_for
from postgres import create_database, postgres_bin, postgres_server
from test_operations import gpus, scrape
from test_session_hub import _unix

from spawner.core.usage import UsageRecord
from spawner.runtime.usagestore import UsageStore

pytestmark = pytest.mark.docker
METRICS_TOKEN = secrets.token_hex(16)
PROFILES = [
    {"slug": "cpu", "display_name": "CPU only", "default": True},
    {"slug": "gpu-1", "display_name": "1 GPU", "gpus": 1},
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    if postgres_bin() is None:
        pytest.fail("PostgreSQL is not installed; scripts/run-tests.sh installs it")
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> Callable[[Hub | None], dict[str, str]]:
    """The hub's environment for its database (sqlite: the default, in its state folder)."""
    if request.param == "sqlite":
        return lambda hub: {}
    server = request.getfixturevalue("postgres")
    url = create_database(server, f"hub_{secrets.token_hex(4)}")
    return lambda hub: {"GPUWS_DB_URL": url}


def _start(
    start_hub: Any, database: Any, tmp_path: Path, env: dict[str, str], gpu_count: int = 4
) -> tuple[Hub, UsageStore]:
    profiles = tmp_path / "profiles.json"
    profiles.write_text(json.dumps(PROFILES))
    base = {
        "GPUWS_GPU_INVENTORY": gpus(gpu_count, 80),
        "GPUWS_PROFILES_FILE": str(profiles),
        "GPUWS_USAGE_CHECK_INTERVAL": "1",
        "GPUWS_GPU_IDLE_TIMEOUT": "1800",
        "GPUWS_METRICS_TOKEN": METRICS_TOKEN,
    }
    hub = start_hub(env={**base, **database(None), **env})
    url = hub.env.get("GPUWS_DB_URL") or f"sqlite:///{hub.workdir / 'state' / 'jupyterhub.sqlite'}"
    return hub, UsageStore(url)


def _report(hub: Hub, token: str | None = None, **query: str) -> dict[str, Any]:
    r = hub.api("GET", "/usage", token=token, params=query)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _lifetimes(client: docker.DockerClient, hub: Hub, since: float) -> dict[str, list[float]]:
    """[start, die] of each of the hub's containers, from the engine's own events."""
    seen: dict[str, list[float]] = {}
    for event in client.api.events(
        since=int(since) - 1,
        until=int(time.time()) + 1,
        decode=True,
        filters={"type": "container", "event": ["start", "die"],
                 "label": [f"io.gpu-workspaces.prefix={hub.prefix}"]},
    ):  # fmt: skip
        stamp = event["timeNano"] / 1e9
        span = seen.setdefault(event["id"], [0.0, 0.0])
        span[0 if event["Action"] == "start" else 1] = stamp
    return seen


def _seed(store: UsageStore, *records: UsageRecord) -> None:
    store.upsert(records, time.time())


def _past(user: str, started: float, seconds: float, **fields: Any) -> UsageRecord:
    values: dict[str, Any] = {
        "key": f"seed-{user}-{started}",
        "container_id": f"seed-{user}",
        "user": user,
        "server": "",
        "groups": (),
        "profile": "gpu-1",
        "gpu_ids": ("GPU-seed",),
        "model": "Test A100-SXM4-80GB",
        "started": started,
        "ended": started + seconds,
    }
    values.update(fields)
    return UsageRecord(**values)


def test_usage_equals_container_lifetimes_through_stops_kills_and_hub_restarts(
    start_hub: Any, database: Any, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    since = time.time()
    hub, _ = _start(start_hub, database, tmp_path, {})
    # 1. started and stopped through the hub
    hub.spawn("ua-ada", {"profile": "gpu-1"})
    time.sleep(2)
    hub.stop_server("ua-ada")
    # 2. killed behind the hub's back (the container removes itself)
    hub.spawn("ua-bo", {"profile": "gpu-1"})
    time.sleep(1)
    hub.server_container(docker_client, "ua-bo").kill()
    # 3. running through a hub restart; 4. running while the hub is down, killed then
    hub.spawn("ua-cy", {"profile": "gpu-1"})
    hub.spawn("ua-di", {"profile": "gpu-1"})
    time.sleep(1.5)
    hub.restart()
    time.sleep(1.5)
    hub.stop()
    time.sleep(2)
    hub.server_container(docker_client, "ua-di").kill()
    time.sleep(2)
    hub.start()
    time.sleep(1.5)
    hub.stop_server("ua-cy")

    def closed() -> dict[str, Any] | None:
        report = _report(hub)
        ended = [r for r in report["records"] if r["ended"] is not None]
        return report if len(ended) == len(report["records"]) == 4 else None

    report = wait_for(closed, timeout=30, interval=1)
    assert report, _report(hub)
    truth = _lifetimes(docker_client, hub, since)
    errors = []
    for record in report["records"]:
        start, die = truth[record["container_id"]]
        errors.append(
            {
                "user": record["user"],
                "start_error_s": round(record["started"] - start, 3),
                "end_error_s": round(record["ended"] - die, 3),
                "gpu_seconds": record["gpu_seconds"],
                "lifetime_s": round(die - start, 3),
            }
        )
    ARTIFACTS.mkdir(exist_ok=True)
    name = "sqlite" if not hub.env.get("GPUWS_DB_URL") else "postgres"
    (ARTIFACTS / f"usage-accounting-errors-{name}.json").write_text(json.dumps(errors, indent=1))
    # one record per container run: the restart counted nothing twice
    assert sorted(e["user"] for e in errors) == ["ua-ada", "ua-bo", "ua-cy", "ua-di"]
    for error in errors:
        assert abs(error["start_error_s"]) < 1 and abs(error["end_error_s"]) < 1, errors
        assert error["gpu_seconds"] == pytest.approx(error["lifetime_s"], abs=1), errors
    lifetimes = sum(e["lifetime_s"] for e in errors)
    assert report["total_gpu_hours"] * 3600 == pytest.approx(lifetimes, abs=len(errors))
    # the hub-down server ran for more than the time the hub saw it: counted in full
    di = next(e for e in errors if e["user"] == "ua-di")
    assert di["gpu_seconds"] > 4.5

    def counted() -> float | None:
        samples = scrape(hub, METRICS_TOKEN)
        key = ("jupyterhub_gpu_seconds_total", (("group", ""), ("profile", "gpu-1")))
        value = samples.get(key)
        return value if value is not None and abs(value - lifetimes) < len(errors) else None

    assert wait_for(counted, timeout=10, interval=1), scrape(hub, METRICS_TOKEN)


def test_a_user_budget_is_shown_warned_enforced_and_refuses_the_next_spawn(
    start_hub: Any, database: Any, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    hub, store = _start(
        start_hub,
        database,
        tmp_path,
        {
            "GPUWS_GPU_HOURS_PER_USER": "0.05",  # 180 GPU-seconds
            "GPUWS_GPU_HOURS_PERIOD": "day",
            "GPUWS_GPU_HOURS_ROLLING": "1",
            "GPUWS_STOP_WARNING": "60",
        },
    )
    # 144 s used an hour ago: 36 s left
    _seed(store, _past("ub-ada", time.time() - 3600, 144))
    session = hub.login("ub-ada")
    form = session.get(f"{hub.url}/hub/spawn/ub-ada", timeout=30)
    assert form.status_code == 200
    assert "0.01 of 0.05 GPU-hours left in the last 24 hours" in html.unescape(form.text)

    hub.spawn("ub-ada", {"profile": "gpu-1"})
    container = hub.server_container(docker_client, "ub-ada")
    started = _lifetimes(docker_client, hub, time.time() - 120)[container.id][0]
    due = started + 36
    doc = hub.api("GET", "/gpus/servers/ub-ada").json()
    assert doc["stop_reason"] == "budget", doc
    assert doc["budget"]["on_exhausted"] == "stop"
    assert doc["stop_in_seconds"] <= doc["warn_before_seconds"]  # the warning is due now
    assert "runs out in 1 min; then this server is stopped" in doc["budget"]["message"]
    stop_at = doc["budget"]["exhausts_at"]
    assert _unix(stop_at) == pytest.approx(due, abs=1.5)

    hub.wait_gone("ub-ada", timeout=90)
    died = _lifetimes(docker_client, hub, started - 5)[container.id][1]
    overshoot = died - due
    ARTIFACTS.mkdir(exist_ok=True)
    name = "sqlite" if not hub.env.get("GPUWS_DB_URL") else "postgres"
    (ARTIFACTS / f"usage-budget-stop-{name}.json").write_text(
        json.dumps({"overshoot_s": overshoot})
    )
    assert -1 < overshoot < 12, overshoot

    r = hub.request_spawn("ub-ada", {"profile": "gpu-1"})
    assert r.status_code == 403, r.text
    assert r.json()["message"].startswith(
        "You have used 0.05 of the 0.05 GPU-hours that each user may use in the last 24 hours"
    ), r.text
    # a CPU server is not counted against GPU-hours
    hub.spawn("ub-ada", {"profile": "cpu"})
    mine = _report(hub, hub.user_token("ub-ada"))
    assert {r["user"] for r in mine["records"]} == {"ub-ada"}
    assert sum(r["gpu_seconds"] for r in mine["records"]) == pytest.approx(180, abs=12)


def test_a_group_budget_warns_keeps_the_server_and_refuses_other_members(
    start_hub: Any, database: Any, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    hub, _ = _start(
        start_hub,
        database,
        tmp_path,
        {
            "GPUWS_GPU_HOURS_PER_GROUP": '{"ub-lab": 0.01}',  # 36 GPU-seconds together
            "GPUWS_ON_BUDGET_EXHAUSTED": "keep",
            "GPUWS_GPU_HOURS_PERIOD": "week",
        },
    )
    for user in ("ub-eve", "ub-fay", "ub-gil"):
        hub.ensure_user(user)
    r = hub.api("POST", "/groups/ub-lab", json={"users": ["ub-eve", "ub-fay"]})
    assert r.status_code in (200, 201), r.text
    hub.spawn("ub-eve", {"profile": "gpu-1"})
    doc = hub.api("GET", "/gpus/servers/ub-eve").json()
    assert doc["stop_reason"] != "budget" and doc["budget"]["on_exhausted"] == "keep"
    assert doc["budget"]["applies"] and 25 <= (doc["budget"]["exhausts_in_seconds"] or 0) <= 36, doc
    assert "runs out in 1 min; the server keeps running" in doc["budget"]["message"]

    time.sleep(doc["budget"]["exhausts_in_seconds"] + 3)
    doc = hub.api("GET", "/gpus/servers/ub-eve").json()
    assert "is used up this week; the server keeps running, over budget" in doc["budget"]["message"]
    assert hub.server_container(docker_client, "ub-eve").status == "running"
    r = hub.request_spawn("ub-fay", {"profile": "gpu-1"})
    assert r.status_code == 403, r.text
    assert r.json()["message"].startswith("Group 'ub-lab' has used 0.01 of the 0.01 GPU-hours")
    # not in the group: not its budget
    hub.spawn("ub-gil", {"profile": "gpu-1"})


def _page_rows(page: str, by: str) -> list[list[str]]:
    body = re.search(r'<table id="usage-table".*?<tbody>(.*?)</tbody>', page, re.S)
    assert body, page
    rows = re.findall(r"<tr>(.*?)</tr>", body.group(1), re.S)
    return [
        [html.unescape(c.strip()) for c in re.findall(r"<td>(.*?)</td>", row, re.S)] for row in rows
    ]


@pytest.mark.browser
def test_reports_agree_across_page_csv_json_and_metrics_after_retention(
    start_hub: Any, database: Any, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    from browser import chromium, log_in, new_page

    hub, store = _start(
        start_hub,
        database,
        tmp_path,
        {"GPUWS_USAGE_RETENTION_DAYS": "2", "GPUWS_USAGE_METRICS_PER_USER": "1"},
    )
    now = time.time()
    day = 86400.0
    old = _past("ur-ada", now - 5 * day, 7200, groups=("lab",), gpu_ids=("G0", "G1"))
    _seed(
        store,
        old,
        _past("ur-ada", now - day, 3600, groups=("lab",)),
        _past("ur-bo", now - 2 * day + 600, 1800),
        _past("ur-cy", now - 3 * 3600, 1800, groups=("lab", "staff"), profile="gpu-2",
              model="Test H100"),
    )  # fmt: skip
    hub.restart()  # retention runs at the first pass
    hub.spawn("ur-dan", {"profile": "gpu-1"})
    time.sleep(2)
    hub.stop_server("ur-dan")
    first = time.strftime("%Y-%m-%d", time.gmtime(now - 7 * day))

    def retained() -> dict[str, Any] | None:
        report = _report(hub, **{"from": first})
        keys = {r["key"] for r in report["records"]}
        done = old.key not in keys and len(keys) == 4
        return report if done and all(r["ended"] for r in report["records"]) else None

    assert wait_for(retained, timeout=30, interval=1), _report(hub, **{"from": first})
    admin = hub.login("admin")
    for by in ("user", "group", "profile", "model"):
        query = {"from": first, "by": by, "stack": "group"}
        report = _report(hub, **query)
        as_json = [[str(r[by]), str(r["gpu_hours"]), str(r["records"])] for r in report["rows"]]
        r = hub.api("GET", "/usage", params={**query, "format": "csv"})
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/csv")
        as_csv = list(csv.reader(io.StringIO(r.text)))
        assert as_csv[0] == [by, "gpu_hours", "records"]
        page = admin.get(f"{hub.url}/hub/usage", params=query, timeout=30)
        assert page.status_code == 200
        assert as_json == as_csv[1:] == _page_rows(page.text, by), (by, as_json)
    by_user = {r["user"]: r["gpu_hours"] for r in _report(hub, **{"from": first})["rows"]}
    assert by_user["(summarised)"] == 4.0 and by_user["ur-ada"] == 1.0  # no name kept
    groups = {
        r["group"]: r["gpu_hours"] for r in _report(hub, by="group", **{"from": first})["rows"]
    }
    assert groups["lab"] == pytest.approx(4.0 + 1.0 + 0.5) and groups["staff"] == 0.5
    # the counters count the summarised hours too (ur-cy's half hour in both of its groups)
    samples = scrape(hub, METRICS_TOKEN)
    total = sum(v for (name, _), v in samples.items() if name == "jupyterhub_gpu_seconds_total")
    everything = _report(hub, by="profile", **{"from": first})
    assert total == pytest.approx(everything["total_gpu_hours"] * 3600 + 0.5 * 3600, abs=2)
    per_user = samples[("jupyterhub_gpu_user_seconds_total", (("user", "ur-ada"),))]
    assert per_user == pytest.approx(5 * 3600, abs=1)  # 4 h summarised without a name + 1 h

    # a user sees their own usage only, on the page and in the export
    mine = hub.login("ur-bo").get(f"{hub.url}/hub/usage", params={"from": first}, timeout=30)
    assert _page_rows(mine.text, "user") == [["ur-bo", "0.5", "1"]]
    assert (
        hub.api("GET", "/usage", token=hub.user_token("ur-bo"), params={"by": "oops"}).status_code
        == 400
    )

    ARTIFACTS.mkdir(exist_ok=True)
    with chromium() as browser:
        page = new_page(browser)
        log_in(page, hub.url, "admin", "any")
        page.goto(f"{hub.url}/hub/usage?from={first}&stack=user&by=group")
        bars = page.locator("#usage-chart rect.usage-bar")
        expected = sum(1 for s in report_chart(hub, first) for v in s["gpu_hours"] if v > 0)
        assert bars.count() == expected > 0
        assert "GPU-hours from" in page.locator("#usage-summary").inner_text()
        page.screenshot(path=str(ARTIFACTS / "usage-chart.png"), full_page=True)


def report_chart(hub: Hub, first: str) -> list[dict[str, Any]]:
    return _report(hub, **{"from": first, "stack": "user", "by": "group"})["chart"]["series"]  # type: ignore[no-any-return]


@pytest.mark.browser
def test_jupyterlab_warns_before_the_budget_stops_the_server(
    start_hub: Any, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    from browser import chromium, log_in, new_page, screenshot_on_failure, start_profile

    hub, _ = _start(
        start_hub,
        lambda hub: {},
        tmp_path,
        {
            "GPUWS_GPU_HOURS_PER_USER": "0.03",  # 108 GPU-seconds
            "GPUWS_GPU_HOURS_PERIOD": "day",
            "GPUWS_STOP_WARNING": "50",
            "GPUWS_STATUS_POLL_INTERVAL": "2",
        },
    )
    ARTIFACTS.mkdir(exist_ok=True)
    with chromium() as browser:
        page = new_page(browser)
        log_in(page, hub.url, "uw-ada", "any")
        page.wait_for_url("**/hub/spawn**")
        assert "0.03 of 0.03 GPU-hours left today" in page.locator(".gpuws-budget").inner_text()
        start_profile(page, "gpu-1")
        with screenshot_on_failure(page, str(ARTIFACTS / "usage-budget-warning-failed.png")):
            due = _unix(hub.api("GET", "/gpus/servers/uw-ada").json()["budget"]["exhausts_at"])
            warning = page.locator(".Toastify__toast", has_text="GPU-hours budget of each user")
            warning.wait_for(timeout=120_000)
            warned = time.time()
            assert "then this server is stopped" in warning.inner_text()
            page.screenshot(path=str(ARTIFACTS / "usage-budget-warning.png"))
    # within the warning period (50 s ahead, read every 2 s), never after the stop
    assert due - 50 - 4 <= warned < due, (warned, due)
    hub.wait_gone("uw-ada", timeout=90)
    assert time.time() >= due - 1
