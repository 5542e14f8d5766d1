"""Start-up checks and environment parsing of jupyterhub_config.py's helpers (no engine)."""

from __future__ import annotations

import pytest
from traitlets.config import Config

from spawner.hub.config import (
    ConfigError,
    check_spawner_config,
    env_bool,
    env_json_or_text,
    env_number,
    env_size,
    other_hub_instances,
    profiles_from_env,
)


def _config(**spawner: object) -> Config:
    c = Config()
    for key, value in spawner.items():
        setattr(c.GPUDockerSpawner, key, value)
    return c


@pytest.mark.parametrize(
    "settings, named",
    [
        ({"gpu_count": 1, "gpu_device_ids": ["0"]}, "GPUDockerSpawner.gpu_count and"),
        ({"gpu_count": 2, "all_gpus": True}, "GPUDockerSpawner.all_gpus"),
        ({"gpu_device_ids": ["0,1"]}, "GPUDockerSpawner.gpu_device_ids"),
        ({"gpu_capabilities": "compute,warp-drive"}, "GPUDockerSpawner.gpu_capabilities"),
        ({"shm_size": "2x"}, "GPUDockerSpawner.shm_size"),
        ({"shm_size": -1}, "GPUDockerSpawner.shm_size"),
        ({"default_shm_size": "lots"}, "GPUDockerSpawner.default_shm_size"),
        ({"gpu_inventory": "[1, 1]"}, "gpu_inventory"),
        ({"container_user": "0:0"}, "GPUDockerSpawner.container_user"),
        ({"host_ip": "0.0.0.0"}, "GPUDockerSpawner.host_ip"),
        (
            {"gpu_inventory": "2", "profiles": [{"slug": "big", "display_name": "B", "gpus": 4}]},
            "profiles[0] ('big'): field 'gpus'",
        ),
        (
            {"profiles": [{"slug": "a", "display_name": "A"}, {"slug": "a", "display_name": "B"}]},
            "duplicate",
        ),
        ({"profiles": [{"slug": "a", "display_name": "A", "colour": "red"}]}, "colour"),
        (
            {"profiles": [{"slug": "a", "display_name": "A", "mem_limit": "much"}]},
            "mem_limit",
        ),
        ({"on_budget_exhausted": "pause"}, "on_budget_exhausted"),
        ({"gpu_hours_period": "year"}, "gpu_hours_period"),
        ({"gpu_hours_per_user": -1}, "gpu_hours_per_user"),
        ({"gpu_hours_per_group": {"lab": "lots"}}, "gpu_hours_per_group"),
    ],
)
def test_bad_spawner_config_stops_the_hub_naming_the_option(settings, named):
    with pytest.raises(ConfigError) as e:
        check_spawner_config(_config(**settings))
    assert named in str(e.value.code)
    assert "Traceback" not in str(e.value.code)


def test_a_retention_shorter_than_the_budget_period_stops_the_hub() -> None:
    from spawner.hub.startup import start_with_hub

    c = _config(gpu_hours_per_user=10.0, gpu_inventory="2")
    c.GPUAccounting.retention_days = 7.0
    with pytest.raises(ConfigError) as e:
        start_with_hub(c)
    assert "GPUAccounting.retention_days is 7 days, shorter than the budgets' period" in str(
        e.value.code
    )
    c.GPUAccounting.retention_days = 31.0
    start_with_hub(c)


def test_good_config_passes_and_warns_when_gpus_cannot_be_seen(capsys):
    check_spawner_config(_config(profiles=profiles_from_env(inventory="2"), gpu_inventory="2"))
    check_spawner_config(_config(profiles=[{"slug": "g", "display_name": "G", "gpus": 1}]))
    assert "preflight: GPU profiles cannot be served" in capsys.readouterr().err


@pytest.mark.parametrize(
    "inventory, slugs", [("1", ["cpu", "gpu-1"]), ("4", ["cpu", "gpu-1", "gpu-2"])]
)
def test_default_profiles_fit_the_host(monkeypatch, inventory, slugs):
    monkeypatch.delenv("GPUWS_PROFILES_FILE", raising=False)
    assert [p["slug"] for p in profiles_from_env(inventory=inventory)] == slugs


def test_profiles_file_is_read_and_errors_name_the_variable(monkeypatch, tmp_path):
    good = tmp_path / "profiles.yaml"
    good.write_text("- {slug: only, display_name: Only}\n")
    monkeypatch.setenv("GPUWS_PROFILES_FILE", str(good))
    assert profiles_from_env() == [{"slug": "only", "display_name": "Only"}]
    monkeypatch.setenv("GPUWS_PROFILES_FILE", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="GPUWS_PROFILES_FILE"):
        profiles_from_env()


@pytest.mark.parametrize(
    "name, raw, parse, expected",
    [
        ("B", "yes", env_bool, True),
        ("B", "0", env_bool, False),
        ("N", "2.5", lambda n: env_number(n, None), 2.5),
        ("S", "512m", env_size, 512 * 1024**2),
        ("J", '[{"id": "0"}]', env_json_or_text, [{"id": "0"}]),
        ("J", "0,1", env_json_or_text, "0,1"),
    ],
)
def test_env_values_parse(monkeypatch, name, raw, parse, expected):
    monkeypatch.setenv(name, raw)
    assert parse(name) == expected


@pytest.mark.parametrize(
    "name, raw, parse",
    [
        ("GPUWS_X", "maybe", env_bool),
        ("GPUWS_X", "-3", lambda n: env_number(n, None)),
        ("GPUWS_X", "nan", lambda n: env_number(n, None)),
        ("GPUWS_X", "2 apples", env_size),
        ("GPUWS_X", "[1,", env_json_or_text),
    ],
)
def test_bad_env_values_name_the_variable(monkeypatch, name, raw, parse):
    monkeypatch.setenv(name, raw)
    with pytest.raises(ConfigError, match="GPUWS_X"):
        parse(name)


@pytest.mark.parametrize(
    ("labels", "others"),
    [
        ([], []),
        ([{"io.gpu-workspaces.hub-instance": "me"}], []),
        ([{}, {"io.gpu-workspaces.user": "old"}], []),  # from before instances were kept
        ([{"io.gpu-workspaces.hub-instance": "me"}, {"io.gpu-workspaces.hub-instance": "b"}],
         ["b"]),
    ],
)  # fmt: skip
def test_other_hub_instances(labels: list[dict[str, str]], others: list[str]) -> None:
    assert other_hub_instances(labels, "me") == others
