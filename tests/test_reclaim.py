"""Idle reclaim decisions, NVML sampling and settings; the loop against a real hub is in
test_operations.py."""

from __future__ import annotations

import sys
import types
from datetime import datetime, timedelta
from typing import Any

import pytest
from traitlets import TraitError
from traitlets.config import Config

from spawner.hub import reclaim
from spawner.hub.reclaim import GPUReclaimer, Observed, decide, kernels_busy, sample_gpus

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
    from spawner.hub.config import ConfigError

    reclaim.start_with_hub(Config())  # no running loop: nothing scheduled
    bad = Config({"GPUReclaimer": {"idle_timeout": 60, "gpu_idle_timeout": 120}})
    with pytest.raises(ConfigError, match="gpu_idle_timeout"):
        reclaim.start_with_hub(bad)


# -- the round, with stand-in spawners --------------------------------------------------------


class FakeDB:
    def __init__(self) -> None:
        self.commits = 0

    def commit(self) -> None:
        self.commits += 1


class FakeUser:
    def __init__(self, name: str) -> None:
        self.name = name
        self.db = FakeDB()
        self.orm_user = types.SimpleNamespace(last_activity=None)
        self.settings: dict[str, Any] = {}
        self.stopped: list[str] = []

    async def stop(self, name: str) -> None:
        self.stopped.append(name)


class FakeSpawner:
    def __init__(self, user: str, idle_s: float, gpu_ids: list[str]) -> None:
        self.user = FakeUser(user)
        self.name = ""
        self.gpu_ids = gpu_ids
        self.gpu_inventory = "4"
        self.ready = True
        self.server = types.SimpleNamespace(url="http://x/")
        self.api_token = "t"
        self._log_name = user
        last = reclaim.utcnow() - timedelta(seconds=idle_s)
        self.orm_spawner = types.SimpleNamespace(last_activity=last)


async def test_one_round_keeps_busy_servers_and_reclaims_idle_gpu_servers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    r = GPUReclaimer(config=Config({"GPUReclaimer": {"gpu_idle_timeout": 60, "check_interval": 5}}))
    busy = {"trainer": True, "idler": False, "cpu-idler": False, "mute": None}

    async def kernels(spawner: Any) -> bool | None:
        return busy[spawner.user.name]

    monkeypatch.setattr(r, "_kernels_busy", kernels)
    monkeypatch.setattr(r, "start", lambda: None)
    spawners = {
        "trainer": FakeSpawner("trainer", 3600, ["0"]),
        "idler": FakeSpawner("idler", 3600, ["1"]),
        "cpu-idler": FakeSpawner("cpu-idler", 3600, []),
        "mute": FakeSpawner("mute", 3600, ["2"]),
    }
    for spawner in spawners.values():
        r.track(spawner)
    before = reclaim.metrics.GPU_IDLE_RECLAIMED._value.get()  # type: ignore[attr-defined]

    assert await r.check_once() == ["idler"]

    assert spawners["idler"].user.stopped == [""]
    for name in ("trainer", "cpu-idler", "mute"):
        assert spawners[name].user.stopped == []
    trainer = spawners["trainer"]
    assert (reclaim.utcnow() - trainer.orm_spawner.last_activity).total_seconds() < 60
    assert trainer.user.orm_user.last_activity == trainer.orm_spawner.last_activity
    assert reclaim.metrics.GPU_IDLE_RECLAIMED._value.get() == before + 1  # type: ignore[attr-defined]
    assert r.last_decisions[("trainer", "")].reason == "a kernel is busy"
