"""Idle reclaim: the pure decision, NVML sampling and settings as tables; the loop's wiring to
the hub runtime; and the loop acting on a real hub through its REST API as the service
gpu-reclaimer (more end-to-end reclaim tests are in test_operations.py)."""

from __future__ import annotations

import asyncio
import sys
import types
from datetime import UTC, datetime, timedelta
from typing import Any

import docker
import pytest
from harness import Hub, wait_for
from jupyterhub.scopes import expand_scopes
from test_operations import gpus, last_activity, start_busy_kernel
from traitlets import TraitError
from traitlets.config import Config

from spawner.core.idle import Observed, decide, kernels_busy
from spawner.hub import reclaim, startup
from spawner.hub.reclaim import GPUReclaimer, reclaimer_for
from spawner.runtime.nvml import sample_gpus
from spawner.runtime.runtime import RuntimeSettings, create_runtime, reset_runtime

NOW = datetime(2025, 1, 1, 12, 0, 0)


def observed(
    idle_s: float | None,
    *,
    busy: bool | None = False,
    gpus: dict[str, int | None] | None = None,
) -> Observed:
    last = None if idle_s is None else NOW - timedelta(seconds=idle_s)
    gpus = {} if gpus is None else gpus
    return Observed(last_activity=last, busy=busy, holds_gpus=bool(gpus), utilization=gpus)


@pytest.mark.parametrize(
    ("case", "seen", "require", "action"),
    [
        ("idle GPU server past the timeout", observed(700, gpus={"0": None}), True, "reclaim"),
        ("idle GPU server before the timeout", observed(500, gpus={"0": None}), True, "keep"),
        ("busy kernel, long idle", observed(9999, busy=True, gpus={"0": None}), True, "active"),
        ("busy CPU server", observed(9999, busy=True), True, "active"),
        ("idle CPU server: the idle culler's job", observed(9999), True, "keep"),
        ("GPU in use (NVML)", observed(9999, gpus={"0": 0, "1": 37}), True, "active"),
        ("GPU in use, rule off", observed(9999, gpus={"0": 37}), False, "reclaim"),
        ("GPU utilisation 0", observed(9999, gpus={"0": 0}), True, "reclaim"),
        ("kernel state unknown", observed(9999, busy=None, gpus={"0": None}), True, "keep"),
        ("never active", observed(None, gpus={"0": None}), True, "keep"),
    ],
)
def test_decide(case: str, seen: Observed, require: bool, action: str) -> None:
    decision = decide(
        seen,
        now=NOW,
        gpu_idle_timeout=600,
        require_no_gpu_utilization=require,
        utilization_threshold=1,
    )
    assert decision.action == action, (case, decision)


def test_decide_with_gpu_timeout_off_keeps_gpu_servers() -> None:
    decision = decide(
        observed(99999, gpus={"0": None}),
        now=NOW,
        gpu_idle_timeout=0,
        require_no_gpu_utilization=True,
        utilization_threshold=1,
    )
    assert decision.action == "keep"


@pytest.mark.parametrize(
    ("answer", "busy"),
    [
        ([], False),
        ([{"execution_state": "idle"}, {"execution_state": "starting"}], False),
        ([{"execution_state": "idle"}, {"execution_state": "busy"}], True),
        ({"message": "forbidden"}, None),
        ("nonsense", None),
    ],
)
def test_kernels_busy(answer: Any, busy: bool | None) -> None:
    assert kernels_busy(answer) is busy


# -- NVML ------------------------------------------------------------------------------------


def fake_nvml(util: dict[str, int], *, init_fails: bool = False) -> Any:
    nvml: Any = types.ModuleType("pynvml")
    nvml.calls = []

    def nvmlInit() -> None:
        nvml.calls.append("init")
        if init_fails:
            raise RuntimeError("NVML Shared Library Not Found")

    def handle_by_uuid(uuid: str) -> str:
        if uuid not in util:
            raise RuntimeError("not found")
        return uuid

    nvml.nvmlInit = nvmlInit
    nvml.nvmlShutdown = lambda: nvml.calls.append("shutdown")
    nvml.nvmlDeviceGetHandleByUUID = handle_by_uuid
    nvml.nvmlDeviceGetHandleByIndex = lambda i: handle_by_uuid(str(i))
    nvml.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=util[h], memory=0)
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=3 * 1024**3, total=0)
    return nvml


def test_sample_gpus_reads_utilisation_by_uuid_and_index() -> None:
    nvml = fake_nvml({"GPU-aaa": 55, "1": 0})
    samples = sample_gpus(["GPU-aaa", "1", "GPU-gone", "MIG-x"], nvml=nvml)
    assert samples["GPU-aaa"].utilization == 55
    assert samples["GPU-aaa"].memory_used_mib == 3072
    assert samples["1"].utilization == 0
    assert samples["GPU-gone"].utilization is None
    assert samples["MIG-x"].utilization is None
    assert nvml.calls == ["init", "shutdown"]


def test_sample_gpus_without_nvml_knows_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert sample_gpus(["0"], nvml=fake_nvml({}, init_fails=True))["0"].utilization is None
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    assert sample_gpus(["0"])["0"].utilization is None


# -- settings ---------------------------------------------------------------------------------


def test_defaults_are_documented_values() -> None:
    r = GPUReclaimer()
    assert (r.idle_timeout, r.gpu_idle_timeout, r.check_interval) == (7200, 1800, 60)
    assert r.require_no_gpu_utilization is True


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"idle_timeout": 600, "gpu_idle_timeout": 900}, "GPUReclaimer.gpu_idle_timeout"),
        ({"gpu_idle_timeout": 60, "check_interval": 45}, "GPUReclaimer.check_interval"),
        ({"gpu_idle_timeout": -1}, "gpu_idle_timeout"),
        ({"utilization_threshold": 0}, "utilization_threshold"),
    ],
)
def test_contradicting_settings_are_refused_naming_the_option(
    settings: dict[str, Any], named: str
) -> None:
    config = Config({"GPUReclaimer": settings})
    with pytest.raises(TraitError, match=named):
        GPUReclaimer(config=config)


def test_gpu_timeout_off_is_accepted_with_any_cpu_timeout() -> None:
    r = GPUReclaimer(config=Config({"GPUReclaimer": {"gpu_idle_timeout": 0, "idle_timeout": 600}}))
    assert r.enabled


def test_idle_culler_service_has_only_the_scopes_it_needs() -> None:
    service, role = reclaim.idle_culler_service(3600, 60, python="/venv/bin/python")
    assert service["command"] == [
        "/venv/bin/python",
        "-m",
        "jupyterhub_idle_culler",
        "--timeout=3600",
        "--cull-every=60",
    ]
    assert role["services"] == [service["name"]]
    assert sorted(role["scopes"]) == [
        "delete:servers",
        "list:users",
        "read:servers",
        "read:users:activity",
    ]


def test_start_with_hub_outside_the_hub_only_checks() -> None:
    from spawner.core.errors import ConfigError

    startup.start_with_hub(Config())  # no running loop: nothing scheduled
    bad = Config({"GPUReclaimer": {"idle_timeout": 60, "gpu_idle_timeout": 120}})
    with pytest.raises(ConfigError, match="gpu_idle_timeout"):
        startup.start_with_hub(bad)


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"api_url": "127.0.0.1:8081/hub/api"}, "GPUReclaimer.api_url must be an http"),
        ({"api_url": "ftp://hub/api"}, "GPUReclaimer.api_url must be an http"),
        ({"api_token": "two words"}, "GPUReclaimer.api_token must not contain spaces"),
    ],
)
def test_bad_api_settings_are_refused_naming_the_option(
    settings: dict[str, Any], problem: str
) -> None:
    with pytest.raises(TraitError, match=problem):
        GPUReclaimer(config=Config({"GPUReclaimer": settings}))


def test_api_url_is_kept_without_its_trailing_slash() -> None:
    r = GPUReclaimer(config=Config({"GPUReclaimer": {"api_url": " http://hub:8081/hub/api/ "}}))
    assert r.api_url == "http://hub:8081/hub/api"


def test_reclaimer_service_role_holds_only_what_its_requests_need() -> None:
    service, role = reclaim.reclaimer_service("s3cret")
    assert service == {"name": "gpu-reclaimer", "api_token": "s3cret"}
    assert role["services"] == ["gpu-reclaimer"]
    # the scopes JupyterHub's handlers of the two requests demand, and nothing more
    from jupyterhub.apihandlers.users import ActivityAPIHandler, UserServerAPIHandler

    needed = {
        _required_scope(ActivityAPIHandler.post),
        _required_scope(UserServerAPIHandler.delete),
    }
    assert set(role["scopes"]) == needed == set(reclaim.RECLAIMER_SCOPES)


def _required_scope(handler: Any) -> str:
    """The one scope a JupyterHub API handler method is decorated with (``needs_scope``)."""
    (scopes,) = [c.cell_contents for c in handler.__closure__ if type(c.cell_contents) is tuple]
    (scope,) = scopes
    return str(scope)


# -- the loop, wired to the hub runtime -------------------------------------------------------


class ReadyServer:
    """A running CPU server as the registry holds it, without a URL to ask about kernels."""

    ready = True
    server = None
    api_token = ""
    _log_name = "ann"

    def __init__(self) -> None:
        self.gpu_ids: list[str] = []
        self.orm_spawner = types.SimpleNamespace(last_activity=NOW)


async def test_the_reclaimer_belongs_to_the_runtime_and_starts_with_its_first_server() -> None:
    reset_runtime()
    try:
        assert reclaimer_for(Config()) is not reclaimer_for(Config())  # no runtime: detached
        runtime = create_runtime(RuntimeSettings())
        config = Config({"GPUReclaimer": {"gpu_idle_timeout": 60, "check_interval": 0.1}})
        r = reclaimer_for(config)
        assert reclaimer_for() is r and r.check_interval == 0.1
        await asyncio.sleep(0.3)
        assert r.last_decisions == {}, "checked before any server ran"

        runtime.servers.track(("ann", ""), ReadyServer())
        await asyncio.sleep(0.35)
        assert r.last_decisions[("ann", "")].reason == "not a GPU server"
        task = r._task
        assert task is not None and not task.done()

        reset_runtime()  # the hub's tasks end with its runtime
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        reset_runtime()


# -- the loop on a real hub: it acts only through the REST API ------------------------------

NAMED = "c.JupyterHub.allow_named_servers = True\n"


def _hub_env(first_gpu: int, gpu_idle_timeout: int) -> dict[str, str]:
    return {
        "GPUWS_GPU_INVENTORY": gpus(2, first_gpu),
        "GPUWS_GPU_IDLE_TIMEOUT": str(gpu_idle_timeout),
        "GPUWS_IDLE_TIMEOUT": "3600",
        "GPUWS_IDLE_CHECK_INTERVAL": "1",
    }


def _as_reclaimer(hub: Hub, method: str, path: str) -> list[str]:
    """The hub's request log lines of ``method path`` made with gpu-reclaimer's token."""
    needle = f" {method} /hub/api{path} (gpu-reclaimer@"
    return [line for line in hub.log_path.read_text().splitlines() if needle in line]


def _age(stamp: str) -> float:
    """Seconds since a time the REST API shows (ISO 8601, UTC)."""
    shown = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return (datetime.now(UTC) - shown).total_seconds()


@pytest.mark.docker
def test_the_reclaimer_records_activity_and_stops_servers_as_the_gpu_reclaimer_service(
    start_hub: Any, docker_client: docker.DockerClient
) -> None:
    hub = start_hub(env=_hub_env(80, 8), extra_config=NAMED)
    hub.spawn("rc-busy", {"profile": "gpu-1"})
    start_busy_kernel(hub, "rc-busy")
    hub.spawn("rc-idle", {"profile": "gpu-1"}, server="train")
    idle = hub.server_container(docker_client, "rc-idle", "train")

    hub.wait_gone("rc-idle", "train", timeout=120)
    # gone for the hub's REST API and for Docker
    r = hub.api("GET", "/users/rc-idle")
    assert r.status_code == 200 and r.json()["servers"] == {}, r.text
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(idle.id)
    (stop,) = _as_reclaimer(hub, "DELETE", "/users/rc-idle/servers/train")
    assert "] 202 DELETE" in stop or "] 204 DELETE" in stop, stop

    # the busy server stays, its activity recorded by the service every round
    assert hub.server_model("rc-busy")["ready"]
    wait_for(lambda: len(_as_reclaimer(hub, "POST", "/users/rc-busy/activity")) >= 3, timeout=30)
    user = hub.api("GET", "/users/rc-busy").json()
    assert _age(user["servers"][""]["last_activity"]) < 5
    assert _age(user["last_activity"]) < 5  # the user's too, as the idle culler reads it
    posts = _as_reclaimer(hub, "POST", "/users/rc-busy/activity")
    assert all("] 200 POST" in line for line in posts), posts

    # the service's token holds only the scopes those two requests need
    token = (hub.workdir / "state" / "reclaimer_api_token").read_text().strip()
    me = hub.api("GET", "/user", token=token).json()
    assert (me["kind"], me["name"]) == ("service", "gpu-reclaimer")
    assert set(me["scopes"]) == expand_scopes(set(reclaim.RECLAIMER_SCOPES))
    assert hub.api("GET", "/users", token=token).status_code == 403
    assert hub.api("POST", "/users/rc-idle/server", token=token, json={}).status_code == 403
    assert token not in hub.log_path.read_text(), "the token was logged"


@pytest.mark.docker
def test_refused_requests_are_logged_and_change_nothing(
    start_hub: Any, docker_client: docker.DockerClient
) -> None:
    """With a token the hub does not know, nothing the reclaimer decides happens: it has no
    other way to act than the REST API. The loop logs each refusal and goes on."""
    hub = start_hub(env=_hub_env(82, 4), extra_config=f'c.GPUReclaimer.api_token = "{"0" * 64}"\n')
    hub.spawn("rf-busy", {"profile": "gpu-1"})
    start_busy_kernel(hub, "rf-busy")
    hub.spawn("rf-idle", {"profile": "gpu-1"})

    def refusals(what: str) -> list[str]:
        return [
            line
            for line in hub.log_path.read_text().splitlines()
            if f"GPU reclaimer: the hub refused to {what}: HTTP 403" in line
        ]

    wait_for(lambda: len(refusals("stop rf-idle")) >= 3, timeout=90)  # three rounds at least
    assert len(refusals("record activity of rf-busy")) >= 3
    for user in ("rf-busy", "rf-idle"):
        assert hub.server_model(user)["ready"], f"{user} was stopped"
        assert hub.server_container(docker_client, user).status == "running"
    # last_activity never moved: it is as old as the rounds that tried to move it
    assert _age(last_activity(hub, "rf-busy")) > 3
    assert "GPU reclaimer: check failed" not in hub.log_path.read_text()
