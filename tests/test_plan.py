"""spawner/core/plan.py: configured settings and a profile → one spawn plan (tables, no Docker)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from spawner.core.hardening import NPROC_CEILING_MAX
from spawner.core.labels import (
    LABEL_GPUS,
    LABEL_GROUPS,
    LABEL_HUB_INSTANCE,
    LABEL_PREFIX_NAME,
    LABEL_PROFILE,
    LABEL_SERVER,
    LABEL_USER,
)
from spawner.core.plan import PlanError, SpawnPlan, SpawnSettings, image_for, resolve_plan
from spawner.core.profiles import DEFAULT_PROFILES, Profile, parse_profiles
from spawner.core.sizes import GiB, MiB

BASE: dict[str, Any] = {"image": "nb-cpu:1", "gpu_image": "nb-cuda:1"}


def profile(**fields: Any) -> Profile:
    return Profile(**{"slug": "p", "display_name": "P", **fields})


# (settings on top of BASE, profile fields or None, host pid_max) → the plan fields checked
RESOLVE: list[tuple[str, dict[str, Any], dict[str, Any] | None, int | None, dict[str, Any]]] = [
    (
        "no profile, defaults",
        {},
        None,
        4_194_304,
        {
            "image": "nb-cpu:1",
            "profile_slug": "",
            "gpu_count": 0,
            "gpu_device_ids": (),
            "all_gpus": False,
            "gpu_ids": (),
            "shm_size": GiB,
            "pids_limit": 4096,
            "nofile_limit": 16384,
            "nproc_limit": NPROC_CEILING_MAX,
            "mem_limit": None,
            "cpu_limit": None,
            "container_user": "1000:100",
            "mechanism": "device-requests",
            "capabilities": ("compute", "utility"),
        },
    ),
    ("no profile, gpu_count: configured image", {"gpu_count": 2}, None, None, {
        "image": "nb-cpu:1", "gpu_count": 2}),
    ("static device ids kept", {"gpu_device_ids": ["1", "GPU-x"]}, None, None, {
        "gpu_device_ids": ("1", "GPU-x"), "gpu_count": 0}),
    ("shm: half the memory limit", {"mem_limit": 8 * GiB}, None, None, {
        "shm_size": 4 * GiB, "mem_limit": 8 * GiB}),
    ("shm: half, rounded down to a MiB", {"mem_limit": 3 * GiB + 3}, None, None, {
        "shm_size": 1536 * MiB}),
    ("shm: never below 64 MiB", {"mem_limit": 100 * MiB}, None, None, {"shm_size": 64 * MiB}),
    ("shm: mem_limit 0 is no limit", {"mem_limit": 0, "default_shm_size": 3 * GiB}, None,
     None, {"shm_size": 3 * GiB, "mem_limit": 0}),
    ("shm: explicit wins over the memory limit", {"mem_limit": 8 * GiB, "shm_size": 2 * GiB},
     None, None, {"shm_size": 2 * GiB}),
    ("shm: default_shm_size", {"default_shm_size": 512 * MiB}, None, None, {
        "shm_size": 512 * MiB}),
    ("nproc: half pid_max", {}, None, 32768, {"nproc_limit": 16384}),
    ("nproc: unknown pid_max: the cap", {}, None, None, {"nproc_limit": NPROC_CEILING_MAX}),
    ("nproc: never below pids_limit", {"pids_limit": 9000}, None, 10000, {
        "nproc_limit": 9000}),
    ("nproc: configured", {"nproc_limit": 8192}, None, 32768, {"nproc_limit": 8192}),
    ("nproc: 0 keeps the engine's", {"nproc_limit": 0}, None, 32768, {"nproc_limit": 0}),
    ("CPU profile replaces all_gpus", {"all_gpus": True}, {"slug": "cpu"}, None, {
        "all_gpus": False, "gpu_count": 0, "image": "nb-cpu:1", "profile_slug": "cpu"}),
    ("GPU profile: gpu_image, ids dropped", {"gpu_device_ids": ["0"]}, {"gpus": 2}, None, {
        "image": "nb-cuda:1", "gpu_count": 2, "gpu_device_ids": (), "all_gpus": False}),
    ("GPU profile without gpu_image: the image", {"gpu_image": ""}, {"gpus": 1}, None, {
        "image": "nb-cpu:1", "gpu_count": 1}),
    ("profile image wins", {}, {"gpus": 1, "image": "custom:2"}, None, {"image": "custom:2"}),
    ("profile limits win", {"mem_limit": 8 * GiB, "cpu_limit": 2.0},
     {"mem_limit": 2 * GiB, "cpu_limit": 0.5}, None, {
        "mem_limit": 2 * GiB, "cpu_limit": 0.5, "shm_size": GiB}),
    ("profile without limits keeps configured", {"mem_limit": 8 * GiB, "cpu_limit": 2.0},
     {"gpus": 1}, None, {"mem_limit": 8 * GiB, "cpu_limit": 2.0, "shm_size": 4 * GiB}),
    ("profile shm wins", {"shm_size": 2 * GiB}, {"shm_size": 256 * MiB}, None, {
        "shm_size": 256 * MiB}),
    ("constraints: configured then the profile's", {"node_constraints": ["node.role==worker"]},
     {"constraints": ("node.labels.gpu==a100",)}, None, {
        "constraints": ("node.role==worker", "node.labels.gpu==a100")}),
    ("guarantees, hardening and ids pass", {
        "mem_guarantee": GiB, "cpu_guarantee": 0.25, "cap_add": ["CHOWN"],
        "capabilities": ["compute"], "mechanism": "cdi", "container_user": "",
        "prefix": "lab", "hub_instance": "abc"}, None, None, {
        "mem_guarantee": GiB, "cpu_guarantee": 0.25, "cap_add": ("CHOWN",),
        "capabilities": ("compute",), "mechanism": "cdi", "container_user": "",
        "prefix": "lab", "hub_instance": "abc"}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("settings", "profile_fields", "pid_max", "expected"),
    [row[1:] for row in RESOLVE],
    ids=[row[0] for row in RESOLVE],
)
def test_resolve_plan(
    settings: dict[str, Any],
    profile_fields: dict[str, Any] | None,
    pid_max: int | None,
    expected: dict[str, Any],
) -> None:
    chosen = profile(**profile_fields) if profile_fields is not None else None
    plan = resolve_plan(
        SpawnSettings(**{**BASE, **settings}),
        chosen,
        user="ada",
        server="work",
        env={"A": "1"},
        host_pid_max=pid_max,
    )
    got = {name: getattr(plan, name) for name in expected}
    assert got == expected
    assert (plan.user, plan.server, plan.env) == ("ada", "work", {"A": "1"})


def test_the_repo_default_profiles_resolve_to_their_gpus_and_images() -> None:
    profiles = parse_profiles(DEFAULT_PROFILES, total_gpus=None, option="profiles")
    settings = SpawnSettings(**BASE, gpu_count=3)
    for p in profiles:
        plan = resolve_plan(settings, p, user="ada")
        assert (plan.gpu_count, plan.profile_slug) == (p.gpus, p.slug)
        assert plan.image == (p.image or ("nb-cuda:1" if p.gpus else "nb-cpu:1"))
        assert plan.wants_gpus == (p.gpus > 0)


@pytest.mark.parametrize(
    ("settings", "profile_fields", "expected"),
    [
        ({}, None, "nb-cpu:1"),
        ({"gpu_count": 1}, None, "nb-cpu:1"),  # gpu_image is for profiles only
        ({}, {"gpus": 0}, "nb-cpu:1"),
        ({}, {"gpus": 1}, "nb-cuda:1"),
        ({"gpu_image": ""}, {"gpus": 1}, "nb-cpu:1"),
        ({}, {"gpus": 0, "image": "x:1"}, "x:1"),
        ({}, {"gpus": 4, "image": "x:1"}, "x:1"),
    ],
)
def test_image_for(
    settings: dict[str, Any], profile_fields: dict[str, Any] | None, expected: str
) -> None:
    chosen = profile(**profile_fields) if profile_fields is not None else None
    assert image_for(SpawnSettings(**{**BASE, **settings}), chosen) == expected


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"mechanism": "magic"}, ["gpu_mechanism", "'magic'", "device-requests"]),
        ({"gpu_count": 1, "all_gpus": True}, ["gpu_count and all_gpus", "only one"]),
        ({"gpu_count": 1, "gpu_device_ids": ["0"]}, ["gpu_count and gpu_device_ids"]),
    ],
)
def test_bad_settings_get_a_sentence(settings: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(PlanError) as caught:
        resolve_plan(SpawnSettings(**{**BASE, **settings}), None, user="ada")
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"user": "ada", "server": "", "profile_slug": "cpu"},
            {LABEL_USER: "ada", LABEL_SERVER: "", LABEL_PROFILE: "cpu", LABEL_GPUS: "",
             LABEL_PREFIX_NAME: "gpuws"},
        ),
        (
            {"user": "ada", "server": "w", "gpu_ids": ["0", "GPU-1"], "prefix": "lab",
             "hub_instance": "h-1", "profile_slug": "gpu-2"},
            {LABEL_USER: "ada", LABEL_SERVER: "w", LABEL_PROFILE: "gpu-2",
             LABEL_GPUS: "0,GPU-1", LABEL_PREFIX_NAME: "lab", LABEL_HUB_INSTANCE: "h-1",
             LABEL_GROUPS: "[]"},
        ),
        # a GPU server: the groups at spawn, sorted, as JSON (a CPU one has none)
        (
            {"user": "ada", "gpu_ids": ["0"], "groups": ("staff", "lab,a")},
            {LABEL_USER: "ada", LABEL_SERVER: "", LABEL_PROFILE: "", LABEL_GPUS: "0",
             LABEL_PREFIX_NAME: "gpuws", LABEL_GROUPS: '["lab,a", "staff"]'},
        ),
        (
            {"user": "ada", "groups": ("staff",)},
            {LABEL_USER: "ada", LABEL_SERVER: "", LABEL_PROFILE: "", LABEL_GPUS: "",
             LABEL_PREFIX_NAME: "gpuws"},
        ),
        # literal: braces are no template any more
        (
            {"user": "{a}", "server": "{b}}"},
            {LABEL_USER: "{a}", LABEL_SERVER: "{b}}", LABEL_PROFILE: "", LABEL_GPUS: "",
             LABEL_PREFIX_NAME: "gpuws"},
        ),
    ],
)  # fmt: skip
def test_labels(fields: dict[str, Any], expected: dict[str, str]) -> None:
    assert SpawnPlan(image="i", **fields).labels() == expected


@pytest.mark.parametrize(
    ("fields", "wants"),
    [
        ({}, False),
        ({"gpu_count": 1}, True),
        ({"gpu_device_ids": ["0"]}, True),
        ({"all_gpus": True}, True),
        ({"gpu_ids": ["0"]}, False),  # allocated ids alone ask for nothing
    ],
)
def test_wants_gpus(fields: dict[str, Any], wants: bool) -> None:
    assert SpawnPlan(user="u", image="i", **fields).wants_gpus is wants


def test_claimed_gpus_make_a_new_plan_and_inputs_are_copied() -> None:
    env = {"A": "1"}
    ids = ["0"]
    plan = SpawnPlan(user="u", image="i", gpu_count=2, env=env, gpu_device_ids=ids)
    env["A"] = "changed"
    ids.append("1")
    claimed = plan.with_gpu_ids(["3", "1"])
    assert (plan.gpu_ids, claimed.gpu_ids) == ((), ("3", "1"))
    assert claimed.labels()[LABEL_GPUS] == "3,1"
    assert (plan.env, plan.gpu_device_ids) == ({"A": "1"}, ("0",))
    assert dataclasses.replace(claimed, gpu_ids=()) == plan
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.image = "other"  # type: ignore[misc]
