import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from traitlets.config import Config

from spawner.core.profiles import (
    ALLOWED_KEYS,
    DEFAULT_PROFILES,
    ECHO_LIMIT,
    HostResources,
    Profile,
    ProfileError,
    UserOptionsError,
    default_profile,
    default_profiles_for,
    derived_limits,
    load_profiles_file,
    parse_profiles,
    resolve_user_options,
    unlimited_profile_warnings,
    visible_profiles,
)
from spawner.core.sizes import derive_shm_size
from spawner.hub import config as hubconfig
from spawner.hub.config import check_spawner_config, docker_host_resources, profiles_from_env

GiB = 1024**3
MiB = 1024**2
MIN_MEMORY = 512 * MiB  # spawner.core.profiles.MIN_MEMORY_LIMIT, written out


def test_default_profiles_parse_on_a_two_gpu_host() -> None:
    profiles = parse_profiles(DEFAULT_PROFILES, total_gpus=2)
    assert [(p.slug, p.gpus, p.image, p.default) for p in profiles] == [
        ("cpu", 0, None, True),
        ("gpu-1", 1, None, False),
        ("gpu-2", 2, None, False),
    ]
    assert all(p.description for p in profiles)


@pytest.mark.parametrize(
    ("total_gpus", "slugs"),
    [
        (None, ["cpu", "gpu-1", "gpu-2"]),
        (0, ["cpu"]),
        (1, ["cpu", "gpu-1"]),
        (8, ["cpu", "gpu-1", "gpu-2"]),
    ],
)
def test_default_profiles_for(total_gpus: int | None, slugs: list[str]) -> None:
    chosen = default_profiles_for(total_gpus)
    assert [p["slug"] for p in chosen] == slugs
    parse_profiles(chosen, total_gpus=total_gpus)
    chosen[0]["slug"] = "changed"
    assert DEFAULT_PROFILES[0]["slug"] == "cpu"  # copies


# Host → limits of one shipped profile. The host keeps 10 % of its memory (1-8 GiB, at most
# half) and a core (a quarter on hosts under 4 cores); a GPU profile gets its GPUs' share of
# the rest, the CPU profile a quarter or one GPU's share, whichever is less.
@pytest.mark.parametrize(
    "case",
    [
        # 16 cores, 64 GiB, 4 GPUs: 15 cores and 57.6 GiB to share
        {"cpus": 16, "gib": 64, "total": 4, "gpus": 1, "mem_mib": 14745, "cpu": 3.7},
        {"cpus": 16, "gib": 64, "total": 4, "gpus": 2, "mem_mib": 29491, "cpu": 7.5},
        {"cpus": 16, "gib": 64, "total": 4, "gpus": 4, "mem_mib": 58982, "cpu": 15.0},
        {"cpus": 16, "gib": 64, "total": 4, "gpus": 0, "mem_mib": 14745, "cpu": 3.7},
        # 8 GPUs: the reserve stops at 8 GiB; the CPU profile gets one GPU's share (1/8)
        {"cpus": 64, "gib": 512, "total": 8, "gpus": 1, "mem_mib": 64512, "cpu": 7.8},
        {"cpus": 64, "gib": 512, "total": 8, "gpus": 0, "mem_mib": 64512, "cpu": 7.8},
        # 2 GPUs: the CPU profile gets a quarter, less than a GPU's half
        {"cpus": 8, "gib": 32, "total": 2, "gpus": 1, "mem_mib": 14745, "cpu": 3.5},
        {"cpus": 8, "gib": 32, "total": 2, "gpus": 0, "mem_mib": 7372, "cpu": 1.7},
        # no GPU: a quarter; never under 1 CPU (0.75 here) …
        {"cpus": 4, "gib": 8, "total": 0, "gpus": 0, "mem_mib": 1792, "cpu": 1.0},
        # … nor under 512 MiB, nor above what a tiny host gives (1 GiB, 1 core)
        {"cpus": 1, "gib": 1, "total": 0, "gpus": 0, "mem_mib": 512, "cpu": 0.75},
        # GPUs unknown (NVML failed): a GPU profile is refused at spawn; its limit is all
        {"cpus": 16, "gib": 64, "total": None, "gpus": 2, "mem_mib": 58982, "cpu": 15.0},
        {"cpus": 16, "gib": 64, "total": None, "gpus": 0, "mem_mib": 14745, "cpu": 3.7},
    ],
)
def test_derived_limits(case: dict[str, Any]) -> None:
    host = HostResources(cpus=case["cpus"], memory=case["gib"] * GiB)
    mem_limit, cpu_limit = derived_limits(case["gpus"], total_gpus=case["total"], host=host)
    assert (mem_limit, cpu_limit) == (case["mem_mib"] * MiB, case["cpu"])
    assert mem_limit <= host.memory - min(host.memory // 10, 8 * GiB)
    assert cpu_limit < host.cpus


def test_shipped_profiles_carry_the_derived_limits_and_shm_follows() -> None:
    host = HostResources(cpus=16, memory=64 * GiB)
    chosen = default_profiles_for(4, host)
    profiles = parse_profiles(chosen, total_gpus=4)
    assert [(p.slug, p.mem_limit, p.cpu_limit, p.shm_size) for p in profiles] == [
        ("cpu", 14745 * MiB, 3.7, None),
        ("gpu-1", 14745 * MiB, 3.7, None),
        ("gpu-2", 29491 * MiB, 7.5, None),
    ]
    # /dev/shm: half the memory limit, as for any profile without its own shm_size
    assert derive_shm_size(explicit=None, mem_limit=profiles[2].mem_limit, default=GiB) == (
        29491 * MiB // 2 // MiB * MiB
    )
    assert not unlimited_profile_warnings(profiles)
    # GPUWS_MEM_LIMIT set: that one memory limit applies, the profiles keep only their CPUs
    cpus_only = default_profiles_for(4, host, memory=False)
    assert [("mem_limit" in p, p["cpu_limit"]) for p in cpus_only] == [
        (False, 3.7),
        (False, 3.7),
        (False, 7.5),
    ]
    assert "mem_limit" not in DEFAULT_PROFILES[1]  # copies


@pytest.mark.parametrize(
    "case",
    [
        {"profile": {}, "spawner": {}, "missing": "no memory and no CPU limit"},
        {"profile": {"mem_limit": GiB}, "spawner": {}, "missing": "no CPU limit"},
        {"profile": {"cpu_limit": 2.0}, "spawner": {}, "missing": "no memory limit"},
        {"profile": {"cpu_limit": 2.0}, "spawner": {"mem_limit": "4G"}, "missing": None},
        {"profile": {}, "spawner": {"mem_limit": GiB, "cpu_limit": 1.0}, "missing": None},
        {"profile": {"mem_limit": GiB, "cpu_limit": 1.0}, "spawner": {}, "missing": None},
        {"profile": {}, "spawner": {"mem_limit": 0, "cpu_limit": 0.0}, "missing": "no memory"},
    ],
)
def test_a_profile_without_limits_is_named_in_one_warning(case: dict[str, Any]) -> None:
    lines = unlimited_profile_warnings(
        [Profile("big", "Big", **case["profile"])],
        mem_limit=case["spawner"].get("mem_limit"),
        cpu_limit=case["spawner"].get("cpu_limit"),
    )
    if case["missing"] is None:
        assert lines == []
    else:
        assert len(lines) == 1
        assert lines[0].startswith(f"profile 'big' has {case['missing']}")
        assert "mem_limit and cpu_limit" in lines[0]


def test_start_up_warns_once_per_profile_without_limits(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(hubconfig, "_WARNED", set())
    config = Config()
    config.GPUDockerSpawner.gpu_inventory = "2"
    config.GPUDockerSpawner.profiles = [
        {"slug": "free-for-all", "display_name": "No limits"},
        {"slug": "capped", "display_name": "Capped", "mem_limit": "2g", "cpu_limit": 1},
        {"slug": "no-cpu-cap", "display_name": "RAM only", "gpus": 1, "mem_limit": "2g"},
    ]
    check_spawner_config(config)
    check_spawner_config(config)  # checked twice (as the tests' hubs do): still one each
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert [w.split("profile ")[1].split(" has")[0] for w in warnings] == [
        "'free-for-all'",
        "'no-cpu-cap'",
    ]
    assert "has no memory and no CPU limit" in warnings[0]
    assert "has no CPU limit" in warnings[1]


def test_shipped_profiles_fall_back_to_this_machine_when_docker_does_not_answer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GPUWS_PROFILES_FILE", raising=False)
    monkeypatch.delenv("GPUWS_MEM_LIMIT", raising=False)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine-here.sock")
    host = docker_host_resources(timeout=2)
    assert host is not None and host.source.startswith("this machine")
    assert host.cpus == os.cpu_count()
    with open("/proc/meminfo") as f:
        mem_total_kib = int(f.readline().split()[1])
    assert host.memory == pytest.approx(mem_total_kib * 1024, rel=0.01)
    profiles = parse_profiles(profiles_from_env(inventory="2"), total_gpus=2)
    assert [p.slug for p in profiles] == ["cpu", "gpu-1", "gpu-2"]
    for p in profiles:
        assert (p.mem_limit, p.cpu_limit) == derived_limits(p.gpus, total_gpus=2, host=host)
    assert "the shipped profiles' limits, from this machine" in capsys.readouterr().err
    # GPUWS_MEM_LIMIT: one memory limit for every server, so none of the profiles' own
    monkeypatch.setenv("GPUWS_MEM_LIMIT", "3g")
    assert all("mem_limit" not in p for p in profiles_from_env(inventory="2"))


def test_allowed_keys() -> None:
    assert ALLOWED_KEYS == (
        "slug",
        "display_name",
        "description",
        "gpus",
        "image",
        "mem_limit",
        "cpu_limit",
        "shm_size",
        "default",
        "groups",
        "constraints",
        "options",
        "max_age",
        "max_extensions",
        "extend_by",
        "allowed_images",
    )


def test_parse_profiles_reads_every_field() -> None:
    (profile,) = parse_profiles(
        [
            {
                "slug": "a100-big",
                "display_name": " 2 x A100, 64 GiB ",
                "description": "For large models.",
                "gpus": 2,
                "image": "quay.io/jupyter/pytorch-notebook:cuda12-latest",
                "mem_limit": "64g",
                "cpu_limit": 8,
                "shm_size": "16G",
                "default": True,
                "groups": ["staff", "phd", "staff"],
                "constraints": ["node.labels.gpu==a100", "node.role != manager"],
            }
        ],
        total_gpus=8,
        allowed_images=["quay.io/jupyter/pytorch-notebook:cuda12-latest"],
    )
    assert profile == Profile(
        slug="a100-big",
        display_name="2 x A100, 64 GiB",
        description="For large models.",
        gpus=2,
        image="quay.io/jupyter/pytorch-notebook:cuda12-latest",
        mem_limit=64 * GiB,
        cpu_limit=8.0,
        shm_size=16 * GiB,
        default=True,
        groups=("staff", "phd"),
        constraints=("node.labels.gpu==a100", "node.role != manager"),
    )
    assert profile.limits_summary() == "64 GiB RAM · 8 CPUs"


@pytest.mark.parametrize(
    ("profile", "summary"),
    [
        (Profile("a", "A"), ""),
        (Profile("a", "A", cpu_limit=1), "1 CPU"),
        (Profile("a", "A", cpu_limit=0.5, mem_limit=512 * MiB), "512 MiB RAM · 0.5 CPUs"),
    ],
)
def test_limits_summary(profile: Profile, summary: str) -> None:
    assert profile.limits_summary() == summary


def test_parse_profiles_makes_the_first_the_default_when_none_is() -> None:
    profiles = parse_profiles(
        ({"slug": "x", "display_name": "X"}, {"slug": "y", "display_name": "Y"}), total_gpus=None
    )
    assert [p.default for p in profiles] == [True, False]
    assert default_profile(profiles).slug == "x"


def test_parse_profiles_keeps_the_chosen_default() -> None:
    profiles = parse_profiles(
        [{"slug": "x", "display_name": "X"}, {"slug": "y", "display_name": "Y", "default": True}],
        total_gpus=None,
    )
    assert [p.default for p in profiles] == [False, True]
    assert default_profile(profiles).slug == "y"


def _one(**fields: Any) -> list[dict[str, Any]]:
    return [
        {"slug": "cpu", "display_name": "CPU"},
        {"slug": "gpu-2", "display_name": "2 GPUs", **fields},
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"slug": "x"}, "profiles: must be a list of profiles, got a mapping"),
        ("cpu", "profiles: must be a list of profiles, got a string"),
        (None, "profiles: must be a list of profiles, got nothing (null)"),
        ([], "profiles: is empty; give at least one profile"),
        (["cpu"], "profiles[0]: must be a mapping with slug, display_name, …, got a string"),
        (
            _one(gpus=4),
            "profiles[1] ('gpu-2'): field 'gpus': asks for 4 GPUs but this host has 2",
        ),
        (_one(gpus=-1), "profiles[1] ('gpu-2'): field 'gpus': must be a whole number ≥ 0, got -1"),
        (_one(gpus=True), "field 'gpus': must be a whole number ≥ 0, got True"),
        (_one(gpus="2"), "field 'gpus': must be a whole number ≥ 0, got '2'"),
        (_one(gpus=1.0), "field 'gpus': must be a whole number ≥ 0, got 1.0"),
        (
            _one(gpu=1, memory="2g"),
            "profiles[1] ('gpu-2'): unknown key(s) 'gpu', 'memory'; allowed keys: slug, "
            "display_name, description, gpus, image, mem_limit, cpu_limit, shm_size, default, "
            "groups, constraints",
        ),
        ([{"display_name": "X"}], "profiles[0]: field 'slug': is required"),
        (
            [{"slug": 3, "display_name": "X"}],
            "profiles[0]: field 'slug': must be a non-empty string, got int",
        ),
        (
            [{"slug": "GPU-Big", "display_name": "X"}],
            "profiles[0]: field 'slug': 'GPU-Big' must be 1-63 lowercase letters, digits and '-'",
        ),
        ([{"slug": "-x", "display_name": "X"}], "field 'slug': '-x' must be 1-63 lowercase"),
        ([{"slug": " x", "display_name": "X"}], "field 'slug': must not contain spaces, got ' x'"),
        (_one(image="a/cpu "), "field 'image': must not contain spaces, got 'a/cpu '"),
        ([{"slug": "x" * 64, "display_name": "X"}], "must be 1-63 lowercase"),
        (
            [{"slug": "x", "display_name": "X"}, {"slug": "x", "display_name": "Y"}],
            "profiles[1] ('x'): field 'slug': duplicate of profiles[0]",
        ),
        ([{"slug": "x"}], "profiles[0] ('x'): field 'display_name': is required"),
        (
            [{"slug": "x", "display_name": " "}],
            "field 'display_name': must be a non-empty string, got a string",
        ),
        (
            [{"slug": "x", "display_name": "X", "description": 5}],
            "field 'description': must be a non-empty",
        ),
        (_one(image=""), "field 'image': must be a non-empty string"),
        (
            _one(image="evil/miner"),
            "profiles[1] ('gpu-2'): field 'image': 'evil/miner' is not one of the allowed images: "
            "a/cpu, b/gpu",
        ),
        (
            _one(mem_limit="lots"),
            "profiles[1] ('gpu-2'): field 'mem_limit': is not a size, got 'lots'",
        ),
        (_one(mem_limit=0), "profiles[1] ('gpu-2'): field 'mem_limit': must be at least 1 byte"),
        (_one(shm_size="-1g"), "field 'shm_size': must be positive"),
        (
            _one(mem_limit="4g", shm_size="8g"),
            "field 'shm_size': 8 GiB is more than mem_limit 4 GiB; "
            "/dev/shm counts against the memory limit",
        ),
        (
            _one(cpu_limit=0),
            "field 'cpu_limit': must be a number of CPUs > 0 (e.g. 2 or 0.5), got 0",
        ),
        (_one(cpu_limit=float("inf")), "field 'cpu_limit': must be a number of CPUs > 0"),
        (_one(cpu_limit=float("nan")), "field 'cpu_limit': must be a number of CPUs > 0"),
        (
            _one(cpu_limit="2"),
            "field 'cpu_limit': must be a number of CPUs > 0 (e.g. 2 or 0.5), got '2'",
        ),
        (_one(cpu_limit=True), "field 'cpu_limit': must be a number of CPUs > 0"),
        (_one(default="yes"), "field 'default': must be true or false, got 'yes'"),
        (
            _one(groups="students"),
            "field 'groups': must be a list, e.g. ['students'], got a string",
        ),
        (_one(groups=["staff", ""]), "field 'groups[1]': must be a non-empty string, got ''"),
        (_one(groups=[1]), "field 'groups[0]': must be a non-empty string, got 1"),
        (_one(constraints="node.labels.gpu==a100"), "field 'constraints': must be a list"),
        (
            _one(constraints=["node.labels.gpu=a100"]),
            "field 'constraints[0]': 'node.labels.gpu=a100' is not a Swarm constraint like",
        ),
        (
            [
                {"slug": "a", "display_name": "A", "default": True},
                {"slug": "b", "display_name": "B", "default": True},
            ],
            "profiles: more than one default profile: profiles[0] ('a'), profiles[1] ('b')",
        ),
    ],
)
def test_parse_profiles_rejects(raw: object, message: str) -> None:
    with pytest.raises(ProfileError) as info:
        parse_profiles(raw, total_gpus=2, allowed_images=["a/cpu", "b/gpu"])
    assert message in str(info.value)


def test_parse_profiles_reports_every_problem_one_per_line() -> None:
    raw = [
        {"slug": "cpu", "display_name": "CPU", "cpu_limit": -1},
        {"slug": "gpu-2", "display_name": "2 GPUs", "gpus": 4, "mem_limit": "lots"},
        "oops",
        {"slug": "cpu", "display_name": "again"},
    ]
    with pytest.raises(ProfileError) as info:
        parse_profiles(raw, total_gpus=2, option="GPUDockerSpawner.profiles")
    lines = str(info.value).splitlines()
    assert lines == list(info.value.errors)
    assert lines == [
        "GPUDockerSpawner.profiles[0] ('cpu'): field 'cpu_limit': must be a number of CPUs > 0 "
        "(e.g. 2 or 0.5), got -1",
        "GPUDockerSpawner.profiles[1] ('gpu-2'): field 'gpus': asks for 4 GPUs but this host has 2",
        "GPUDockerSpawner.profiles[1] ('gpu-2'): field 'mem_limit': is not a size, got 'lots'; "
        "use a number of bytes or a size like '2g' or '512m'",
        "GPUDockerSpawner.profiles[2]: must be a mapping with slug, display_name, …, got a string",
        "GPUDockerSpawner.profiles[3] ('cpu'): field 'slug': "
        "duplicate of GPUDockerSpawner.profiles[0]",
    ]


@pytest.mark.parametrize(("gpus", "total"), [(1, 0), (5, 4)])
def test_parse_profiles_says_one_gpu_right(gpus: int, total: int) -> None:
    with pytest.raises(ProfileError, match=f"asks for {gpus} GPUs? but this host has {total}"):
        parse_profiles([{"slug": "g", "display_name": "G", "gpus": gpus}], total_gpus=total)


def test_parse_profiles_without_a_gpu_count_or_image_list() -> None:
    (profile,) = parse_profiles(
        [{"slug": "g", "display_name": "G", "gpus": 64, "image": "any/image"}], total_gpus=None
    )
    assert (profile.gpus, profile.image) == (64, "any/image")


# -- files ----------------------------------------------------------------------------------

PROFILES_YAML = """\
# profiles for the lab
- slug: cpu
  display_name: CPU only
- slug: gpu-1
  display_name: 1 GPU
  gpus: 1
  mem_limit: 32g
"""


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("profiles.yaml", PROFILES_YAML),
        (
            "profiles.yml",
            "profiles:\n" + "".join(f"  {line}\n" for line in PROFILES_YAML.splitlines()),
        ),
        (
            "profiles.json",
            json.dumps(
                [
                    {"slug": "cpu", "display_name": "CPU only"},
                    {"slug": "gpu-1", "display_name": "1 GPU", "gpus": 1, "mem_limit": "32g"},
                ]
            ),
        ),
    ],
)
def test_load_profiles_file(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    profiles = parse_profiles(load_profiles_file(str(path)), total_gpus=1)
    assert [(p.slug, p.gpus, p.mem_limit) for p in profiles] == [
        ("cpu", 0, None),
        ("gpu-1", 1, 32 * GiB),
    ]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (None, None, "not found"),
        ("p.yaml", b"", "is empty"),
        ("p.yaml", b"- slug: [unclosed\n", "is not valid YAML at line"),
        ("p.yaml", b"\xff\xfe\x00", "is not UTF-8 text"),
        ("p.json", b"[{]", "is not valid JSON"),
        (
            "p.yaml",
            b"cpu: {}\n",
            "must hold a list of profiles, or a mapping with the one key 'profiles'",
        ),
        ("dir", None, "cannot be read"),
    ],
)
def test_load_profiles_file_errors_name_the_path(
    tmp_path: Path, name: str | None, content: bytes | None, message: str
) -> None:
    path = tmp_path / (name or "missing.yaml")
    if content is not None:
        path.write_bytes(content)
    elif name == "dir":
        path.mkdir()
    with pytest.raises(ProfileError) as info:
        load_profiles_file(str(path))
    assert str(info.value).startswith(f"profiles file {path}: ")
    assert message in str(info.value)


# -- per-user views -------------------------------------------------------------------------

PROFILES = parse_profiles(
    [
        {"slug": "cpu", "display_name": "CPU"},
        {
            "slug": "gpu-1",
            "display_name": "1 GPU",
            "gpus": 1,
            "default": True,
            "groups": ["students", "staff"],
        },
        {"slug": "gpu-4", "display_name": "4 GPUs", "gpus": 4, "groups": ["staff"]},
    ],
    total_gpus=4,
)


@pytest.mark.parametrize(
    ("groups", "slugs", "default"),
    [
        ([], ["cpu"], "cpu"),
        (["students"], ["cpu", "gpu-1"], "gpu-1"),
        (["staff", "other"], ["cpu", "gpu-1", "gpu-4"], "gpu-1"),
        ({"visitors"}, ["cpu"], "cpu"),
    ],
)
def test_visible_profiles(groups: list[str], slugs: list[str], default: str) -> None:
    visible = visible_profiles(PROFILES, groups)
    assert [p.slug for p in visible] == slugs
    assert default_profile(visible).slug == default


def test_default_profile_of_nothing() -> None:
    with pytest.raises(ProfileError):
        default_profile(())


STAFF = visible_profiles(PROFILES, ["staff"])
STUDENT = visible_profiles(PROFILES, ["students"])


@pytest.mark.parametrize(
    ("visible", "options", "slug"),
    [
        (STAFF, {}, "gpu-1"),
        (STAFF, {"profile": "cpu"}, "cpu"),
        (STAFF, {"profile": "gpu-4"}, "gpu-4"),
        (STUDENT, {"profile": "gpu-1"}, "gpu-1"),
    ],
)
def test_resolve_user_options(visible: tuple[Profile, ...], options: object, slug: str) -> None:
    assert resolve_user_options(visible, options).slug == slug


@pytest.mark.parametrize(
    ("visible", "options", "message"),
    [
        (STAFF, None, "user options must be a JSON object"),
        (STAFF, ["cpu"], "user options must be a JSON object"),
        (STAFF, "cpu", "user options must be a JSON object"),
        (
            STAFF,
            {"profile": "cpu", "image": "x"},
            "unknown user option(s): image; only 'profile' is accepted",
        ),
        (
            STAFF,
            {"gpus": 8, "mem": 1},
            "unknown user option(s): gpus, mem; only 'profile' is accepted",
        ),
        (STAFF, {"profile": 3}, "user option 'profile' must be a string (a profile name), got int"),
        (STAFF, {"profile": None}, "got nothing (null); choose one of: cpu, gpu-1, gpu-4"),
        (STAFF, {"profile": ""}, "'' is not a profile name; choose one of: cpu, gpu-1, gpu-4"),
        (
            STAFF,
            {"profile": "GPU-1"},
            "'GPU-1' is not a profile name; choose one of: cpu, gpu-1, gpu-4",
        ),
        (STAFF, {"profile": "gpu-8"}, "unknown profile 'gpu-8'; choose one of: cpu, gpu-1, gpu-4"),
        # a profile the user cannot see is as unknown as one that does not exist
        (STUDENT, {"profile": "gpu-4"}, "unknown profile 'gpu-4'; choose one of: cpu, gpu-1"),
        ((), {}, "no profiles are available to you"),
        ((), {"profile": "cpu"}, "no profiles are available to you"),
    ],
)
def test_resolve_user_options_rejects(
    visible: tuple[Profile, ...], options: object, message: str
) -> None:
    with pytest.raises(UserOptionsError) as info:
        resolve_user_options(visible, options)
    assert str(info.value) == message or message in str(info.value)


@pytest.mark.parametrize(
    ("options", "echoed"),
    [
        ({"profile": "x" * 10_000}, "x" * 10_000),
        ({"profile": "<script>" * 1000}, "<script>" * 1000),
        ({"y" * 10_000: 1}, "y" * 10_000),
        ({"a" * 40: 1, "b" * 40: 2}, "a" * 40 + ", " + "b" * 40),
    ],
)
def test_resolve_user_options_echoes_at_most_64_characters(
    options: dict[str, Any], echoed: str
) -> None:
    with pytest.raises(UserOptionsError) as info:
        resolve_user_options(STAFF, options)
    message = str(info.value)
    assert echoed[:ECHO_LIMIT] + "…" in message  # as much as allowed, marked as cut…
    assert echoed[: ECHO_LIMIT + 1] not in message  # …and not one character more
    assert len(message) < 200


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=80), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    options=JSON
    | st.dictionaries(
        st.just("profile"), JSON | st.sampled_from(["cpu", "gpu-1", "gpu-4", "GPU-1", ""])
    )
    | st.dictionaries(st.sampled_from(["profile", "image", "gpus"]), JSON, max_size=3),
    visible=st.sampled_from([STAFF, STUDENT, ()]),
)
def test_resolve_user_options_fuzz(options: object, visible: tuple[Profile, ...]) -> None:
    try:
        profile = resolve_user_options(visible, options)
    except UserOptionsError as e:
        message = str(e)
        assert message
        assert len(message) <= 250
        if isinstance(options, dict):
            for key, value in options.items():
                for text in (key, value):
                    if isinstance(text, str) and len(text) > ECHO_LIMIT:
                        assert text[: ECHO_LIMIT + 1] not in message
        return
    assert isinstance(options, dict)
    assert profile in visible
    assert set(options) <= {"profile"}
    assert options.get("profile", profile.slug) == profile.slug


def _cgroup_limits(container: Any) -> tuple[str, str, int]:
    """memory.max, cpu.max (cgroup v2; v1's files otherwise) and the size of /dev/shm, read
    inside the container: what the kernel enforces."""
    script = (
        "cat /sys/fs/cgroup/memory.max 2>/dev/null"
        " || cat /sys/fs/cgroup/memory/memory.limit_in_bytes; echo;"
        " cat /sys/fs/cgroup/cpu.max 2>/dev/null"
        " || echo $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us)"
        " $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us);"
        " df -B1 --output=size /dev/shm | tail -1"
    )
    code, out = container.exec_run(["sh", "-c", script])
    assert code == 0, out
    memory, cpu, shm = [line.strip() for line in out.decode().splitlines() if line.strip()]
    return memory, cpu, int(shm)


@pytest.mark.docker
def test_shipped_profiles_give_each_server_its_share_of_the_docker_host(
    start_hub: Any, docker_client: Any
) -> None:
    hub = start_hub(env={"GPUWS_GPU_INVENTORY": "4", "GPUWS_GPU_WAIT_TIMEOUT": "0"})
    info = docker_client.info()  # the hub asked the same engine
    host = HostResources(cpus=float(info["NCPU"]), memory=int(info["MemTotal"]))
    figures = {}
    for user, slug, gpus in (("lim-cpu", "cpu", 0), ("lim-g1", "gpu-1", 1), ("lim-g2", "gpu-2", 2)):
        hub.spawn(user, {"profile": slug})
        attrs = hub.server_container(docker_client, user).attrs["HostConfig"]
        memory, cpus = derived_limits(gpus, total_gpus=4, host=host)
        shm = memory // 2 // MiB * MiB
        assert attrs["Memory"] == memory, slug
        assert attrs["CpuQuota"] == int(cpus * attrs["CpuPeriod"]), slug
        assert attrs["ShmSize"] == shm, slug
        inside = _cgroup_limits(hub.server_container(docker_client, user))
        assert inside == (str(memory), f"{attrs['CpuQuota']} {attrs['CpuPeriod']}", shm), slug
        # independent of the rule: a GPU's share (or the CPU profile's quarter) of the memory
        # the host has, less the host's reserve of at most a tenth (1 GiB at least)
        share = max(gpus, 1) / 4
        reserve = max(host.memory // 10, GiB)
        assert max(MIN_MEMORY, share * (host.memory - reserve)) - MiB <= memory, slug
        assert memory <= max(MIN_MEMORY, share * host.memory), slug
        assert cpus <= max(1.0, share * host.cpus), slug
        figures[slug] = {"memory_mib": memory // MiB, "cpus": cpus, "shm_mib": shm // MiB}
    print(f"host {host.cpus:g} CPUs, {host.memory // MiB} MiB: {figures}")
    log = hub.log_path.read_text(errors="replace")
    assert "the shipped profiles' limits, from the Docker engine" in log
    assert "has no memory" not in log and "has no CPU" not in log
