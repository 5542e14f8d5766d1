"""Table tests of choices inside a profile (spawner/core/choices.py, profiles.select)."""

from __future__ import annotations

from typing import Any

import pytest

from spawner.core.choices import ChoiceError, allowed_image
from spawner.core.profiles import (
    ProfileError,
    UserOptionsError,
    parse_profiles,
    select,
    visible_profiles,
)

GiB = 1024**3


def _lab(**extra: Any) -> dict[str, Any]:
    return {"slug": "lab", "display_name": "Lab", **extra}


LAB = _lab(
    options={
        "image": {
            "choices": {
                "pt": {"display_name": "PyTorch", "value": "site/pt:2"},
                "tf": {"value": "site/tf:2", "groups": ["staff"]},
                "jax": "site/jax:1",
            },
            "default": "tf",
        },
        "mem_limit": {"choices": ["16g", "32g"]},
        "cpu_limit": {"choices": [2, 4.5]},
    }
)
PROFILES = parse_profiles([{"slug": "cpu", "display_name": "CPU"}, LAB], total_gpus=0)


def test_every_form_of_choice_is_read() -> None:
    (lab,) = [p for p in PROFILES if p.slug == "lab"]
    image, memory, cpus = lab.options
    assert [(c.key, c.display_name, c.value, c.groups) for c in image.choices] == [
        ("pt", "PyTorch", "site/pt:2", ()),
        ("tf", "site/tf:2", "site/tf:2", ("staff",)),
        ("jax", "site/jax:1", "site/jax:1", ()),
    ]
    assert image.default == "tf" and image.display_name == "Image"
    assert [(c.key, c.display_name, c.value) for c in memory.choices] == [
        ("16g", "16 GiB", 16 * GiB),
        ("32g", "32 GiB", 32 * GiB),
    ]
    assert [(c.key, c.display_name, c.value) for c in cpus.choices] == [
        ("2", "2 CPUs", 2.0),
        ("4.5", "4.5 CPUs", 4.5),
    ]


@pytest.mark.parametrize(
    ("profile", "image_keys", "default"),
    [
        (_lab(allowed_images=["a:1", "b:2"]), ["a:1", "b:2"], ""),
        (_lab(allowed_images={"new": "a:2", "old": "a:1"}, image="a:1"), ["new", "old"], "old"),
        (
            _lab(image="a:1", options={"image": {"choices": {"x": "a:1", "y": "b"}}}),
            ["x", "y"],
            "x",
        ),
    ],
)
def test_allowed_images_and_the_profiles_image(
    profile: dict[str, Any], image_keys: list[str], default: str
) -> None:
    (parsed,) = parse_profiles([profile], total_gpus=0)
    (option,) = parsed.options
    assert [c.key for c in option.choices] == image_keys and option.default == default


@pytest.mark.parametrize(
    ("options", "extra", "message"),
    [
        ({"gpus": {"choices": [1]}}, {}, "options.gpus: is not a setting with choices"),
        ({"image": ["a"]}, {}, "options.image: must be a mapping with 'choices'"),
        ({"image": {"choices": {}}}, {}, "options.image.choices: is empty"),
        ({"image": {"choices": "a"}}, {}, "must be a mapping of key: choice, or a list"),
        ({"image": {"choices": {"a b": "x"}}}, {}, "is not a choice key"),
        ({"image": {"choices": {"a": "x y"}}}, {}, "must be an image name without spaces"),
        ({"image": {"choices": {"a": {"display_name": "A"}}}}, {}, "field 'value' is required"),
        ({"image": {"choices": {"a": {"value": "x", "colour": 1}}}}, {}, "unknown key(s)"),
        ({"image": {"choices": ["x"], "default": "y"}}, {}, "'y' is not one of its keys: x"),
        ({"image": {"choices": ["x"], "sort": 1}}, {}, "unknown key(s) ['sort']"),
        ({"image": {"choices": {"a": {"value": "x", "groups": "staff"}}}}, {}, "group names"),
        ({"mem_limit": {"choices": ["lots"]}}, {}, "mem_limit"),
        ({"cpu_limit": {"choices": [0]}}, {}, "must be a number of CPUs > 0"),
        ({"cpu_limit": {"choices": [True]}}, {}, "must be a number of CPUs > 0"),
        ({"image": {"choices": ["x"]}}, {"allowed_images": ["y"]}, "give the image choices once"),
        ({"image": {"choices": {"a": "x"}}}, {"image": "z"}, "'z' is not one of the image choices"),
        (
            {"image": {"choices": {"a": "x", "b": "z"}, "default": "a"}},
            {"image": "z"},
            "and options.image.default disagree",
        ),
        ({"shm_size": {"choices": ["8g"]}}, {"mem_limit": "4g"}, "a /dev/shm of 8 GiB can be"),
        ("image", {}, "options: must be a mapping"),
    ],
)
def test_bad_options_stop_the_hub_with_one_line_naming_the_profile(
    options: Any, extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(ProfileError) as refused:
        parse_profiles([_lab(options=options, **extra)], total_gpus=0)
    lines = refused.value.errors
    assert len(lines) == 1, lines
    assert lines[0].startswith("profiles[0] ('lab'): ") and message in lines[0], lines[0]


@pytest.mark.parametrize(
    ("options", "groups", "applied", "keys"),
    [
        # nothing sent: the default, else (closed to the user) their first open choice
        ({"profile": "lab"}, ["staff"], ("site/tf:2", 16 * GiB, 2.0), {"image": "tf"}),
        ({"profile": "lab"}, [], ("site/pt:2", 16 * GiB, 2.0), {"image": "pt"}),
        (
            {"profile": "lab", "image": "jax", "mem_limit": "32g", "cpu_limit": "4.5"},
            [],
            ("site/jax:1", 32 * GiB, 4.5),
            {"image": "jax", "mem_limit": "32g", "cpu_limit": "4.5"},
        ),
        ({"profile": "lab", "image": "tf"}, ["staff"], ("site/tf:2", 16 * GiB, 2.0), {}),
    ],
)
def test_select_applies_the_choices(
    options: dict[str, Any],
    groups: list[str],
    applied: tuple[Any, ...],
    keys: dict[str, str],
) -> None:
    selection = select(visible_profiles(PROFILES, groups), options, groups)
    got = selection.applied
    assert (got.image, got.mem_limit, got.cpu_limit) == applied
    assert keys.items() <= dict(selection.choices).items()
    assert selection.profile.image is None and selection.notes == ()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"profile": "lab", "image": "tf"}, "image 'tf' of profile 'lab' is for staff only"),
        ({"profile": "lab", "image": "site/pt:2"}, "is not one of its choices; choose one of: pt,"),
        ({"profile": "lab", "image": 3}, "must be a string (a choice's key)"),
        ({"profile": "lab", "gpus": 2}, "profile 'lab' accepts: profile, image, mem_limit"),
        ({"profile": "cpu", "image": "pt"}, "only 'profile' is accepted"),
        ({"profile": "gone"}, "unknown profile 'gone'"),
        ([], "user options must be a JSON object"),
    ],
)
def test_select_refuses_with_a_sentence(options: Any, message: str) -> None:
    with pytest.raises(UserOptionsError) as refused:
        select(PROFILES, options, [])
    assert message in str(refused.value), str(refused.value)


@pytest.mark.parametrize(
    ("options", "slug", "image", "note"),
    [
        (
            {"profile": "lab", "image": "gone"},
            "lab",
            "site/pt:2",
            "Your last choice of image ('gone') is no longer offered to you; 'pt' is used instead.",
        ),
        (
            {"profile": "lab", "image": "tf"},  # the user left group staff
            "lab",
            "site/pt:2",
            "Your last choice of image ('tf') is no longer offered to you; 'pt' is used instead.",
        ),
        (
            {"profile": "old-gpu"},
            "cpu",
            None,
            "Your last profile ('old-gpu') is no longer offered to you; 'cpu' is used instead.",
        ),
    ],
)
def test_saved_choices_that_no_longer_apply_fall_back_with_a_sentence(
    options: dict[str, Any], slug: str, image: str | None, note: str
) -> None:
    selection = select(PROFILES, {**options, "colour": "red"}, [], saved=True)
    assert (selection.applied.slug, selection.applied.image) == (slug, image)
    assert selection.notes == (note,)


def test_a_profile_with_no_choice_open_to_the_user_is_not_shown() -> None:
    staff_only = _lab(options={"image": {"choices": {"tf": {"value": "x", "groups": ["staff"]}}}})
    profiles = parse_profiles([{"slug": "cpu", "display_name": "CPU"}, staff_only], total_gpus=0)
    assert [p.slug for p in visible_profiles(profiles, [])] == ["cpu"]
    assert [p.slug for p in visible_profiles(profiles, ["staff"])] == ["cpu", "lab"]


@pytest.mark.parametrize(
    ("allowed", "wanted", "result"),
    [
        ({"4.0": "q/s:4.0", "4": "q/s:4"}, "4.0", "q/s:4.0"),
        ({"q/s:4": "q/s:4"}, "q/s:4", "q/s:4"),  # a list, as DockerSpawner casts it
        ("*", "anything:1", "anything:1"),
        ({"4": "q/s:4"}, "q/s:4", "is not one you may choose; choose one of: 4"),
        ({}, "q/s:4", "does not let users choose an image"),
        (None, "q/s:4", "does not let users choose an image"),
        ({"4": "q/s:4"}, ["4"], "must be a string"),
    ],
)
def test_dockerspawners_allowed_images_rule(allowed: Any, wanted: Any, result: str) -> None:
    if ":" in result and " " not in result:
        assert allowed_image(allowed, wanted) == result
        return
    with pytest.raises(ChoiceError) as refused:
        allowed_image(allowed, wanted)
    assert result in str(refused.value)
