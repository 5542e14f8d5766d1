"""Table tests of the option schema (issue 19): choices inside a profile, and ``allowed_images``.

Pure: plain dicts in, values and sentences out (spawner/core/choices.py and the ``options`` part
of spawner/core/profiles.py). The admin's table is read by ``parse_profiles``, what a user sends
by ``select``; DockerSpawner's own rule for ``{"image": …}`` is ``allowed_image``.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]
from hypothesis import given, settings
from hypothesis import strategies as st

from spawner.core.choices import (
    ECHO_LIMIT,
    Choice,
    ChoiceError,
    ProfileOption,
    allowed_image,
    groups_words,
    pick,
)
from spawner.core.profiles import (
    Profile,
    ProfileError,
    UserOptionsError,
    parse_profiles,
    resolve_user_options,
    select,
    visible_profiles,
)

GiB = 1024**3
MiB = 1024**2
PREFIX = "profiles[0] ('lab'): "


def _lab(**fields: Any) -> dict[str, Any]:
    return {"slug": "lab", "display_name": "Lab", **fields}


def _parsed(fields: dict[str, Any], **kwargs: Any) -> Profile:
    (profile,) = parse_profiles([_lab(**fields)], total_gpus=0, **kwargs)
    return profile


def _rows(option: ProfileOption) -> list[tuple[str, str, object, tuple[str, ...]]]:
    return [(c.key, c.display_name, c.value, c.groups) for c in option.choices]


# -- parse_profiles: the forms an admin may write -------------------------------------------


@pytest.mark.parametrize(
    ("fields", "name", "rows", "default", "title"),
    [
        # image: a mapping of full choices, with display_name, value and groups
        (
            {
                "options": {
                    "image": {
                        "choices": {
                            "pt": {"display_name": " PyTorch ", "value": "site/pt:2"},
                            "tf": {
                                "value": "site/tf:2",
                                "groups": [" staff ", "staff", "phd"],
                            },
                            "jax": {"value": "site/jax:1", "groups": []},
                        }
                    }
                }
            },
            "image",
            [
                ("pt", "PyTorch", "site/pt:2", ()),
                ("tf", "site/tf:2", "site/tf:2", ("staff", "phd")),
                ("jax", "site/jax:1", "site/jax:1", ()),
            ],
            "",
            "Image",
        ),
        # shorthand `key: value`, a default, the option's own display name
        (
            {
                "options": {
                    "image": {
                        "display_name": " Framework ",
                        "choices": {"pt": "site/pt:2", "tf": "site/tf:2@sha256:ab12"},
                        "default": "tf",
                    }
                }
            },
            "image",
            [
                ("pt", "site/pt:2", "site/pt:2", ()),
                ("tf", "site/tf:2@sha256:ab12", "site/tf:2@sha256:ab12", ()),
            ],
            "tf",
            "Framework",
        ),
        # list shorthand: each image is its own key
        (
            {"options": {"image": {"choices": ["site/pt:2", "site/tf:2"], "default": None}}},
            "image",
            [
                ("site/pt:2", "site/pt:2", "site/pt:2", ()),
                ("site/tf:2", "site/tf:2", "site/tf:2", ()),
            ],
            "",
            "Image",
        ),
        # sizes: the list of the issue, in bytes, shown in binary units
        (
            {"options": {"mem_limit": {"choices": ["16g", "32g", "64g"]}}},
            "mem_limit",
            [
                ("16g", "16 GiB", 16 * GiB, ()),
                ("32g", "32 GiB", 32 * GiB, ()),
                ("64g", "64 GiB", 64 * GiB, ()),
            ],
            "",
            "Memory",
        ),
        (
            {"options": {"mem_limit": {"choices": ["1.5g", 1073741824, "512m", "2GiB"]}}},
            "mem_limit",
            [
                ("1.5g", "1.5 GiB", 1536 * MiB, ()),
                ("1073741824", "1 GiB", GiB, ()),
                ("512m", "512 MiB", 512 * MiB, ()),
                ("2GiB", "2 GiB", 2 * GiB, ()),
            ],
            "",
            "Memory",
        ),
        (
            {
                "options": {
                    "mem_limit": {
                        "choices": {
                            "small": "16g",
                            "big": {"display_name": "Big", "value": "64g", "groups": ["staff"]},
                        },
                        "default": "big",
                    }
                }
            },
            "mem_limit",
            [("small", "16 GiB", 16 * GiB, ()), ("big", "Big", 64 * GiB, ("staff",))],
            "big",
            "Memory",
        ),
        (
            {"options": {"shm_size": {"choices": ["1g", "2g"]}}},
            "shm_size",
            [("1g", "1 GiB", GiB, ()), ("2g", "2 GiB", 2 * GiB, ())],
            "",
            "/dev/shm",
        ),
        # CPUs: numbers, read as floats, "1 CPU" and "2 CPUs"
        (
            {"options": {"cpu_limit": {"choices": [1, 0.5, 2, 4.5]}}},
            "cpu_limit",
            [
                ("1", "1 CPU", 1.0, ()),
                ("0.5", "0.5 CPUs", 0.5, ()),
                ("2", "2 CPUs", 2.0, ()),
                ("4.5", "4.5 CPUs", 4.5, ()),
            ],
            "",
            "CPUs",
        ),
        (
            {"options": {"cpu_limit": {"choices": {"two": 2, "many": {"value": 16.0}}}}},
            "cpu_limit",
            [("two", "2 CPUs", 2.0, ()), ("many", "16 CPUs", 16.0, ())],
            "",
            "CPUs",
        ),
        # allowed_images, as DockerSpawner writes it: a list or a mapping
        (
            {"allowed_images": ["a:1", "b:2"]},
            "image",
            [("a:1", "a:1", "a:1", ()), ("b:2", "b:2", "b:2", ())],
            "",
            "Image",
        ),
        (
            {"allowed_images": {"new": "a:2", "old": "a:1"}},
            "image",
            [("new", "a:2", "a:2", ()), ("old", "a:1", "a:1", ())],
            "",
            "Image",
        ),
        # the profile's own image is one of the choices and becomes their default
        (
            {"allowed_images": {"new": "a:2", "old": "a:1"}, "image": "a:1"},
            "image",
            [("new", "a:2", "a:2", ()), ("old", "a:1", "a:1", ())],
            "old",
            "Image",
        ),
        (
            {"image": "b", "options": {"image": {"choices": {"x": "a", "y": "b"}}}},
            "image",
            [("x", "a", "a", ()), ("y", "b", "b", ())],
            "y",
            "Image",
        ),
        # … and may repeat the default the options give
        (
            {"image": "b", "options": {"image": {"choices": {"x": "a", "y": "b"}, "default": "y"}}},
            "image",
            [("x", "a", "a", ()), ("y", "b", "b", ())],
            "y",
            "Image",
        ),
        pytest.param(
            {"image": "b", "options": {"image": {"choices": {"x": "b", "y": "b"}, "default": "y"}}},
            "image",
            [("x", "b", "b", ()), ("y", "b", "b", ())],
            "y",
            "Image",
            id="alias-keys-for-the-profiles-image",
        ),
        pytest.param(
            {"options": {"cpu_limit": {"choices": {2: 2, 4: 4}}}},
            "cpu_limit",
            [("2", "2 CPUs", 2.0, ()), ("4", "4 CPUs", 4.0, ())],
            "",
            "CPUs",
            id="int-keys-of-a-yaml-mapping",
        ),
    ],
)
def test_every_accepted_form_of_choices(
    fields: dict[str, Any],
    name: str,
    rows: list[tuple[str, str, object, tuple[str, ...]]],
    default: str,
    title: str,
) -> None:
    (option,) = _parsed(fields).options
    assert option.name == name
    assert _rows(option) == rows
    assert option.default == default
    assert option.display_name == title
    if name == "cpu_limit":
        assert all(type(c.value) is float for c in option.choices)
    if name in ("mem_limit", "shm_size"):
        assert all(type(c.value) is int for c in option.choices)


def test_the_issues_yaml_example_parses_with_the_profiles_own_fields_kept() -> None:
    raw = yaml.safe_load(
        """
        - slug: lab
          display_name: Lab
          cpu_limit: 4
          options:
            image:
              choices:
                pytorch: {display_name: PyTorch, value: "site/pytorch:2"}
                tensorflow: {display_name: TensorFlow, value: "site/tf:2", groups: [staff]}
              default: pytorch
            mem_limit:
              choices: [16g, 32g, 64g]
            shm_size:
              choices: [1g, 8g]
        """
    )
    profile = _parsed({k: v for k, v in raw[0].items() if k not in ("slug", "display_name")})
    assert [o.name for o in profile.options] == ["image", "mem_limit", "shm_size"]
    image, memory, shm = profile.options
    assert [c.display_name for c in image.choices] == ["PyTorch", "TensorFlow"]
    assert image.default == "pytorch" and image.choices[1].groups == ("staff",)
    assert [c.key for c in memory.choices] == ["16g", "32g", "64g"]
    assert [c.value for c in shm.choices] == [GiB, 8 * GiB]
    # the choices replace nothing until a user picks: the profile keeps its own fields
    assert (profile.image, profile.mem_limit, profile.cpu_limit, profile.shm_size) == (
        None,
        None,
        4.0,
        None,
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"options": {}},
        {"options": None},
        # /dev/shm may be as large as the smallest memory limit, not larger
        {"options": {"shm_size": {"choices": ["4g"]}, "mem_limit": {"choices": ["4g", "16g"]}}},
        {"mem_limit": "8g", "options": {"shm_size": {"choices": ["1g", "8g"]}}},
        {"shm_size": "2g", "options": {"mem_limit": {"choices": ["2g", "4g"]}}},
    ],
)
def test_options_that_are_accepted_without_choices_to_check(fields: dict[str, Any]) -> None:
    profile = _parsed(fields)
    assert len(profile.options) == len(fields["options"] or {})


def test_the_spawners_allowed_images_hold_for_the_choices_too() -> None:
    profile = _parsed({"options": {"image": {"choices": ["a:1"]}}}, allowed_images=["a:1"])
    assert [c.value for c in profile.options[0].choices] == ["a:1"]


# -- parse_profiles: every mistake is one line naming the profile and the field ---------------


def _images(choices: object, **option: Any) -> dict[str, Any]:
    return {"options": {"image": {"choices": choices, **option}}}


def _one(name: str, choices: object) -> dict[str, Any]:
    return {"options": {name: {"choices": choices}}}


SIZE_HINT = "; use a number of bytes or a size like '2g' or '512m'"
KEY_RULE = "is not a choice key: 1-100 letters, digits and . _ : / @ + -"
SHM_OVER = (
    "field 'options': a /dev/shm of 8 GiB can be chosen with a memory limit of 4 GiB; "
    "/dev/shm counts against the memory limit"
)


@pytest.mark.parametrize(
    ("fields", "line"),
    [
        # the settings and the option's own keys
        (
            {"options": {"gpus": {"choices": [1, 2]}}},
            "options.gpus: is not a setting with choices; use one of image, mem_limit, "
            "cpu_limit, shm_size",
        ),
        ({"options": {3: {"choices": [1]}}}, "options.3: is not a setting with choices"),
        ({"options": "image"}, "options: must be a mapping of setting: {choices: …}"),
        ({"options": ["image"]}, "options: must be a mapping of setting: {choices: …}"),
        (
            {"options": {"image": ["a"]}},
            "options.image: must be a mapping with 'choices' (and optional default, display_name)",
        ),
        ({"options": {"image": {"default": "a"}}}, "options.image: must be a mapping with"),
        (
            _images(["x"], sort=1),
            "options.image: unknown key(s) ['sort']; allowed: display_name, choices, default",
        ),
        # the choices
        (_images({}), "options.image.choices: is empty; give at least one choice"),
        (_images([]), "options.image.choices: is empty; give at least one choice"),
        (_images("x"), "options.image.choices: must be a mapping of key: choice, or a list"),
        (_images(None), "options.image.choices: must be a mapping of key: choice, or a list"),
        (
            _images({"a": {"value": "x", "colour": "red"}}),
            "options.image.choices['a']: unknown key(s) ['colour']; allowed: display_name, "
            "value, groups",
        ),
        (
            _images({"a": {"display_name": "A"}}),
            "options.image.choices['a']: field 'value' is required",
        ),
        (
            _one("mem_limit", ["16g", "32g", "16g"]),
            "options.mem_limit.choices: key '16g' is given twice",
        ),
        ({"allowed_images": ["a:1", "a:1"]}, "options.image.choices: key 'a:1' is given twice"),
        # keys: short and plain
        (_images({"a b": "x"}), f"options.image.choices['a b']: 'a b' {KEY_RULE}"),
        (_images({".a": "x"}), f"options.image.choices['.a']: '.a' {KEY_RULE}"),
        (_images({"": "x"}), f"options.image.choices['']: '' {KEY_RULE}"),
        (_images({"é": "x"}), f"options.image.choices['é']: 'é' {KEY_RULE}"),
        (_images({"a" * 101: "x"}), KEY_RULE),
        (_images({None: "x"}), f"options.image.choices['None']: None {KEY_RULE}"),
        (_images([{"value": "x"}]), KEY_RULE),
        # sizes
        (
            _one("mem_limit", ["lots"]),
            f"options.mem_limit.choices['lots'].value: is not a size, got 'lots'{SIZE_HINT}",
        ),
        (_one("mem_limit", [0]), "options.mem_limit.choices['0'].value: must be at least 1 byte"),
        (
            _one("mem_limit", {"neg": "-1g"}),
            "options.mem_limit.choices['neg'].value: must be positive",
        ),
        (
            _one("mem_limit", [True]),
            "options.mem_limit.choices['True'].value: must be a size, not true/false",
        ),
        (
            _one("mem_limit", ["2048p"]),
            "options.mem_limit.choices['2048p'].value: is larger than 1 PiB",
        ),
        (_one("shm_size", {"x": None}), "options.shm_size.choices['x'].value: must be a number or"),
        # CPUs
        (
            _one("cpu_limit", [0]),
            "options.cpu_limit.choices['0'].value: must be a number of CPUs > 0, got 0",
        ),
        (
            _one("cpu_limit", {"neg": -1}),
            "options.cpu_limit.choices['neg'].value: must be a number",
        ),
        (_one("cpu_limit", [float("nan")]), "options.cpu_limit.choices['nan'].value: must be a"),
        (_one("cpu_limit", [float("inf")]), "options.cpu_limit.choices['inf'].value: must be a"),
        (_one("cpu_limit", [True]), "options.cpu_limit.choices['True'].value: must be a number"),
        (
            _one("cpu_limit", {"two": "2"}),
            "options.cpu_limit.choices['two'].value: must be a number of CPUs > 0, got '2'",
        ),
        # images
        (
            _images({"a": "x y"}),
            "options.image.choices['a'].value: must be an image name without spaces, got 'x y'",
        ),
        (_images({"a": ""}), "options.image.choices['a'].value: must be an image name without"),
        (_images({"a": 5}), "options.image.choices['a'].value: must be an image name without"),
        (
            {"allowed_images": {"a": "x\ty"}},
            "options.image.choices['a'].value: must be an image name without spaces",
        ),
        pytest.param(
            _images(["x y"]),
            "options.image.choices['x y'].value: must be an image name without spaces",
            id="list-image-with-a-space-one-line",
        ),
        pytest.param(
            _one("cpu_limit", [-1]),
            "options.cpu_limit.choices['-1'].value: must be a number of CPUs > 0, got -1",
            id="list-negative-cpu-one-line",
        ),
        # the default, display names, groups
        (_images(["x"], default="y"), "options.image.default: 'y' is not one of its keys: x"),
        (_images({"a": "x", "b": "z"}, default=3), "options.image.default: 3 is not one of its"),
        (
            _images({"a": {"value": "x", "display_name": 5}}),
            "options.image.choices['a'].display_name: must be a non-empty string, got 5",
        ),
        (
            _images({"a": {"value": "x", "display_name": " "}}),
            "options.image.choices['a'].display_name: must be a non-empty string",
        ),
        pytest.param(
            _images({"a": "x"}, display_name=5),
            "options.image.display_name: must be a non-empty string",
            id="option-display-name-not-a-string",
        ),
        (
            _images({"a": {"value": "x", "groups": "staff"}}),
            "options.image.choices['a'].groups: must be a list of group names, e.g. ['staff'], "
            "got staff",
        ),
        (
            _images({"a": {"value": "x", "groups": ["staff", 3]}}),
            "options.image.choices['a'].groups: must be a list of group names",
        ),
        (
            _images({"a": {"value": "x", "groups": [""]}}),
            "options.image.choices['a'].groups: must be a list of group names",
        ),
        # allowed_images and the profile's own image
        (
            {"allowed_images": ["a"], **_images(["b"])},
            "allowed_images: give the image choices once: here or options.image",
        ),
        ({"allowed_images": []}, "options.image.choices: is empty; give at least one choice"),
        ({"allowed_images": "*"}, "options.image.choices: must be a mapping of key: choice"),
        (
            {"image": "z", **_images({"a": "x"})},
            "field 'image': 'z' is not one of the image choices",
        ),
        ({"image": "z", "allowed_images": ["x"]}, "field 'image': 'z' is not one of the image"),
        (
            {"image": "z", **_images({"a": "x", "b": "z"}, default="a")},
            "field 'image': and options.image.default disagree; give the default once",
        ),
        # /dev/shm above a memory limit, whichever of them are choices
        (
            {"options": {"shm_size": {"choices": ["8g"]}, "mem_limit": {"choices": ["4g", "16g"]}}},
            SHM_OVER,
        ),
        ({"mem_limit": "4g", "options": {"shm_size": {"choices": ["1g", "8g"]}}}, SHM_OVER),
        ({"shm_size": "8g", "options": {"mem_limit": {"choices": ["4g", "16g"]}}}, SHM_OVER),
    ],
)
def test_a_bad_option_is_one_line_naming_the_profile_and_the_field(
    fields: dict[str, Any], line: str
) -> None:
    with pytest.raises(ProfileError) as refused:
        parse_profiles([_lab(**fields)], total_gpus=0)
    lines = refused.value.errors
    assert len(lines) == 1, lines
    assert lines[0].startswith(PREFIX), lines[0]
    assert line in lines[0], lines[0]
    assert str(refused.value) == lines[0]


def test_a_choice_outside_the_spawners_allowed_images_is_refused() -> None:
    with pytest.raises(ProfileError) as refused:
        parse_profiles([_lab(**_images({"a": "x", "b": "y"}))], total_gpus=0, allowed_images=["y"])
    assert refused.value.errors == (f"{PREFIX}field 'options': image 'x' is not allowed here",)


def test_mistakes_in_several_profiles_are_all_reported() -> None:
    raw = [
        {"slug": "cpu", "display_name": "CPU", **_one("mem_limit", ["lots"])},
        {"slug": "lab", "display_name": "Lab", **_images(["x"], default="y")},
    ]
    with pytest.raises(ProfileError) as refused:
        parse_profiles(raw, total_gpus=0)
    assert [line.split(": ")[0] for line in refused.value.errors] == [
        "profiles[0] ('cpu')",
        "profiles[1] ('lab')",
    ]


# -- select: what a user sends ---------------------------------------------------------------

LAB = _lab(
    options={
        "image": {
            "choices": {
                "pt": {"display_name": "PyTorch", "value": "site/pt:2"},
                "tf": {"value": "site/tf:2", "groups": ["staff"]},
                "jax": "site/jax:1",
                "beta": {"value": "site/beta:1", "groups": ["staff", "admins"]},
            },
            "default": "tf",
        },
        "mem_limit": {"choices": ["16g", "32g"]},
        "cpu_limit": {"choices": [2, 4.5]},
        "shm_size": {"choices": ["1g", "8g"]},
    },
)
STAFF_ONLY = {
    "slug": "staff-lab",
    "display_name": "Staff lab",
    **_images({"tf": {"value": "site/tf:2", "groups": ["staff"]}}),
}
PROFILES = parse_profiles(
    [{"slug": "cpu", "display_name": "CPU", "default": True}, LAB, STAFF_ONLY], total_gpus=0
)
ALL_KEYS = {"image": "pt", "mem_limit": "16g", "cpu_limit": "2", "shm_size": "1g"}


@pytest.mark.parametrize(
    ("options", "groups", "applied", "choices"),
    [
        # nothing sent: the default profile, which has no options
        ({}, [], ("cpu", None, None, None, None), {}),
        ({"profile": "cpu"}, ["staff"], ("cpu", None, None, None, None), {}),
        # the profile only: each option's default; tf is the default but for staff only,
        # so others get their first open choice
        ({"profile": "lab"}, [], ("lab", "site/pt:2", 16 * GiB, 2.0, GiB), ALL_KEYS),
        (
            {"profile": "lab"},
            ["staff"],
            ("lab", "site/tf:2", 16 * GiB, 2.0, GiB),
            {**ALL_KEYS, "image": "tf"},
        ),
        # REST-style: {"profile": …, "<option>": "<key>"}
        (
            {
                "profile": "lab",
                "image": "jax",
                "mem_limit": "32g",
                "cpu_limit": "4.5",
                "shm_size": "8g",
            },
            [],
            ("lab", "site/jax:1", 32 * GiB, 4.5, 8 * GiB),
            {"image": "jax", "mem_limit": "32g", "cpu_limit": "4.5", "shm_size": "8g"},
        ),
        (
            {"profile": "lab", "mem_limit": "32g"},
            [],
            ("lab", "site/pt:2", 32 * GiB, 2.0, GiB),
            {**ALL_KEYS, "mem_limit": "32g"},
        ),
        (
            {"profile": "lab", "image": "tf"},
            ["staff"],
            ("lab", "site/tf:2", 16 * GiB, 2.0, GiB),
            {**ALL_KEYS, "image": "tf"},
        ),
        (
            {"profile": "lab", "image": "beta"},
            ["admins"],
            ("lab", "site/beta:1", 16 * GiB, 2.0, GiB),
            {**ALL_KEYS, "image": "beta"},
        ),
        (
            {"profile": "staff-lab"},
            ["staff"],
            ("staff-lab", "site/tf:2", None, None, None),
            {"image": "tf"},
        ),
    ],
)
def test_select_applies_the_choices_to_the_profiles_fields(
    options: dict[str, Any],
    groups: list[str],
    applied: tuple[Any, ...],
    choices: dict[str, str],
) -> None:
    selection = select(visible_profiles(PROFILES, groups), options, groups)
    got = selection.applied
    assert (got.slug, got.image, got.mem_limit, got.cpu_limit, got.shm_size) == applied
    assert dict(selection.choices) == choices
    assert selection.notes == ()
    # the chosen profile itself is left as the admin wrote it
    assert selection.profile in PROFILES
    assert (selection.profile.image, selection.profile.mem_limit) == (None, None)
    assert (got.options, got.gpus, got.groups) == (
        selection.profile.options,
        selection.profile.gpus,
        selection.profile.groups,
    )
    if not groups:
        assert resolve_user_options(visible_profiles(PROFILES, groups), options) == got


ACCEPTS = "profile 'lab' accepts: profile, image, mem_limit, cpu_limit, shm_size"


@pytest.mark.parametrize(
    ("options", "groups", "message"),
    [
        # a choice limited to groups: refused for others, with why
        (
            {"profile": "lab", "image": "tf"},
            [],
            "image 'tf' of profile 'lab' is for staff only; choose one of: pt, jax",
        ),
        (
            {"profile": "lab", "image": "beta"},
            ["phd"],
            "image 'beta' of profile 'lab' is for staff or admins only; choose one of: pt, jax",
        ),
        (
            {"profile": "lab", "image": "tf"},
            ["admins"],
            "image 'tf' of profile 'lab' is for staff only; choose one of: pt, jax, beta",
        ),
        # an unknown key: the open keys are named
        (
            {"profile": "lab", "image": "nope"},
            [],
            "image 'nope' of profile 'lab' is not one of its choices; choose one of: pt, jax",
        ),
        (
            {"profile": "lab", "image": "site/pt:2"},  # a value, not a key
            ["staff"],
            "image 'site/pt:2' of profile 'lab' is not one of its choices; "
            "choose one of: pt, tf, jax, beta",
        ),
        (
            {"profile": "lab", "mem_limit": "16G"},
            [],
            "mem_limit '16G' of profile 'lab' is not one of its choices; choose one of: 16g, 32g",
        ),
        (
            {"profile": "lab", "cpu_limit": "2.0"},
            [],
            "cpu_limit '2.0' of profile 'lab' is not one of its choices; choose one of: 2, 4.5",
        ),
        (
            {"profile": "lab", "image": "x" * 200},
            [],
            f"image '{'x' * ECHO_LIMIT}…' of profile 'lab' is not one of its choices; "
            "choose one of: pt, jax",
        ),
        # a key must be a string
        (
            {"profile": "lab", "image": 3},
            [],
            "user option 'image' must be a string (a choice's key), got 3",
        ),
        (
            {"profile": "lab", "cpu_limit": 2.0},
            [],
            "user option 'cpu_limit' must be a string (a choice's key), got 2.0",
        ),
        (
            {"profile": "lab", "image": ["pt"]},
            [],
            "user option 'image' must be a string (a choice's key), got ['pt']",
        ),
        (
            {"profile": "lab", "image": True},
            [],
            "user option 'image' must be a string (a choice's key), got True",
        ),
        pytest.param(
            {"profile": "lab", "image": None},
            [],
            "user option 'image' must be a string (a choice's key), got None",
            id="null-choice-key",
        ),
        # unknown option names: the profile's accepted names, or only 'profile' without options
        ({"profile": "lab", "gpus": 2}, [], f"unknown user option(s): gpus; {ACCEPTS}"),
        ({"profile": "lab", "x": 1, "y": 2}, [], f"unknown user option(s): x, y; {ACCEPTS}"),
        ({"profile": "lab", 3: 1}, [], f"unknown user option(s): 3; {ACCEPTS}"),
        (
            {"profile": "cpu", "image": "pt"},
            [],
            "unknown user option(s): image; only 'profile' is accepted",
        ),
        ({"image": "pt"}, [], "unknown user option(s): image; only 'profile' is accepted"),
        (
            {"profile": "staff-lab", "mem_limit": "16g"},
            ["staff"],
            "unknown user option(s): mem_limit; profile 'staff-lab' accepts: profile, image",
        ),
        # a profile whose every choice is closed to the user (visible_profiles hides it)
        (
            {"profile": "staff-lab"},
            [],
            "profile 'staff-lab' offers you no image to choose; ask an admin of this hub",
        ),
        # the profile itself, as before
        ({"profile": "gone"}, [], "unknown profile 'gone'; choose one of: cpu, lab, staff-lab"),
        (
            {"profile": 3},
            [],
            "user option 'profile' must be a string (a profile name), got int; "
            "choose one of: cpu, lab, staff-lab",
        ),
        ([], [], "user options must be a JSON object"),
    ],
)
def test_select_refuses_with_one_sentence(options: Any, groups: list[str], message: str) -> None:
    with pytest.raises(UserOptionsError) as refused:
        select(PROFILES, options, groups)
    assert str(refused.value) == message


def _note(what: str, old: str, new: str) -> str:
    return (
        f"Your last choice of {what} ('{old}') is no longer offered to you; "
        f"'{new}' is used instead."
    )


@pytest.mark.parametrize(
    ("options", "groups", "slug", "choices", "notes"),
    [
        # a choice removed from the table, or closed since (the user left staff)
        (
            {"profile": "lab", "image": "gone"},
            [],
            "lab",
            ALL_KEYS,
            [_note("image", "gone", "pt")],
        ),
        (
            {"profile": "lab", "image": "tf"},
            [],
            "lab",
            ALL_KEYS,
            [_note("image", "tf", "pt")],
        ),
        (
            {"profile": "lab", "image": "jax", "mem_limit": "64g", "shm_size": "2g"},
            [],
            "lab",
            {**ALL_KEYS, "image": "jax"},
            [_note("memory", "64g", "16g"), _note("/dev/shm", "2g", "1g")],
        ),
        pytest.param(
            {"profile": "lab", "cpu_limit": "8"},
            [],
            "lab",
            ALL_KEYS,
            [_note("CPUs", "8", "2")],
            id="saved-cpu-note-keeps-the-display-name",
        ),
        # a removed profile: the default profile, with one note
        (
            {"profile": "old-gpu"},
            [],
            "cpu",
            {},
            ["Your last profile ('old-gpu') is no longer offered to you; 'cpu' is preselected."],
        ),
        (
            {"profile": "old-gpu", "image": "jax"},
            [],
            "cpu",
            {},
            ["Your last profile ('old-gpu') is no longer offered to you; 'cpu' is preselected."],
        ),
        # unknown saved keys are dropped without a word; what still applies is kept
        (
            {"profile": "lab", "image": "jax", "colour": "red"},
            [],
            "lab",
            {**ALL_KEYS, "image": "jax"},
            [],
        ),
        ({"profile": "cpu", "image": "pt", "gpus": 8}, [], "cpu", {}, []),
        ("not a mapping", [], "cpu", {}, []),
        (None, [], "cpu", {}, []),
        pytest.param(
            {"profile": "lab", "image": 3},
            [],
            "lab",
            ALL_KEYS,
            [_note("image", "3", "pt")],
            id="saved-non-string-choice-falls-back",
        ),
    ],
)
def test_saved_choices_that_no_longer_apply_fall_back_with_a_sentence(
    options: Any,
    groups: list[str],
    slug: str,
    choices: dict[str, str],
    notes: list[str],
) -> None:
    selection = select(visible_profiles(PROFILES, groups), options, groups, saved=True)
    assert selection.applied.slug == slug
    assert dict(selection.choices) == choices
    assert list(selection.notes) == notes
    for note in selection.notes:  # a sentence a person reads on the progress page or form
        assert note[0].isupper() and note.endswith((" is used instead.", " is preselected."))
        assert "\n" not in note
    # a removed profile is named, so that a start can refuse it; a removed choice is not
    removed = isinstance(options, dict) and options.get("profile") == "old-gpu"
    assert selection.profile_gone == ("old-gpu" if removed else None)


def test_a_saved_choice_key_is_echoed_at_most_64_characters() -> None:
    selection = select(PROFILES, {"profile": "lab", "image": "y" * 500}, [], saved=True)
    (note,) = selection.notes
    assert "y" * ECHO_LIMIT + "…" in note and "y" * (ECHO_LIMIT + 1) not in note


# -- visible_profiles ------------------------------------------------------------------------

VISIBILITY = parse_profiles(
    [
        {"slug": "cpu", "display_name": "CPU"},
        {
            "slug": "open",
            "display_name": "Open",
            **_images({"a": "x", "b": {"value": "y", "groups": ["staff"]}}),
        },
        STAFF_ONLY,
        {
            "slug": "half",
            "display_name": "Image for all, memory for staff",
            "options": {
                "image": {"choices": ["x"]},
                "mem_limit": {"choices": {"big": {"value": "64g", "groups": ["staff"]}}},
            },
        },
        {
            "slug": "students",
            "display_name": "Students' profile, staff's image",
            "groups": ["students"],
            **_images({"tf": {"value": "y", "groups": ["staff"]}}),
        },
    ],
    total_gpus=0,
)


@pytest.mark.parametrize(
    ("groups", "slugs"),
    [
        ([], ["cpu", "open"]),
        (["phd"], ["cpu", "open"]),
        (["students"], ["cpu", "open"]),
        (["staff"], ["cpu", "open", "staff-lab", "half"]),
        ({"staff", "students"}, ["cpu", "open", "staff-lab", "half", "students"]),
    ],
)
def test_visible_profiles_hides_a_profile_with_an_option_closed_to_the_user(
    groups: list[str], slugs: list[str]
) -> None:
    assert [p.slug for p in visible_profiles(VISIBILITY, groups)] == slugs


# -- the pieces: defaults per user, group words ----------------------------------------------

OPTION = ProfileOption(
    "image",
    "Image",
    (
        Choice("staff-img", "S", "s:1", ("staff",)),
        Choice("open-img", "O", "o:1"),
        Choice("admin-img", "A", "a:1", ("admins",)),
    ),
    default="admin-img",
)


@pytest.mark.parametrize(
    ("groups", "default", "open_keys"),
    [
        ([], "open-img", ["open-img"]),
        (["staff"], "staff-img", ["staff-img", "open-img"]),
        (["admins"], "admin-img", ["open-img", "admin-img"]),
        (("staff", "admins"), "admin-img", ["staff-img", "open-img", "admin-img"]),
    ],
)
def test_the_default_is_the_admins_when_open_else_the_first_open_choice(
    groups: list[str], default: str, open_keys: list[str]
) -> None:
    chosen = OPTION.default_for(groups)
    assert chosen is not None and chosen.key == default
    assert [c.key for c in OPTION.open_choices(groups)] == open_keys
    assert pick([OPTION], {}, groups, profile="p").keys == {"image": default}


def test_pick_raises_choice_error_when_nothing_is_open() -> None:
    closed = ProfileOption("mem_limit", "Memory", (Choice("big", "Big", GiB, ("staff",)),))
    assert closed.default_for([]) is None
    with pytest.raises(ChoiceError, match=r"^profile 'p' offers you no memory to choose; ask"):
        pick([closed], {}, [], profile="p")


@pytest.mark.parametrize(
    ("groups", "words"),
    [(["staff"], "staff only"), (["staff", "admins"], "staff or admins only")],
)
def test_groups_words(groups: list[str], words: str) -> None:
    assert groups_words(groups) == words


# -- fuzz: only UserOptionsError, and only what was offered ----------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=20), children, max_size=3)
    ),
    max_leaves=8,
)
KEYS = st.sampled_from(
    ["pt", "tf", "jax", "beta", "16g", "32g", "2", "4.5", "1g", "8g", "", "gone"]
)
NAMES = st.sampled_from(["profile", "image", "mem_limit", "cpu_limit", "shm_size", "gpus"])
SLUGS = st.sampled_from(["cpu", "lab", "staff-lab", "gone", "LAB"])


@settings(max_examples=300, deadline=None)
@given(
    options=JSON
    | st.dictionaries(NAMES, KEYS | JSON, max_size=5)
    | st.fixed_dictionaries(
        {"profile": SLUGS},
        optional={n: KEYS for n in ("image", "mem_limit", "cpu_limit", "shm_size")},
    ),
    groups=st.sampled_from([[], ["staff"], ["admins"], ["phd", "staff"]]),
    saved=st.booleans(),
)
def test_select_fuzz(options: object, groups: list[str], saved: bool) -> None:
    visible = visible_profiles(PROFILES, groups)
    try:
        selection = select(visible, options, groups, saved=saved)
    except UserOptionsError as e:
        message = str(e)
        assert message and "\n" not in message and len(message) <= 300
        if isinstance(options, dict):
            for key, value in options.items():
                for text in (key, value):
                    if isinstance(text, str) and len(text) > ECHO_LIMIT:
                        assert text[: ECHO_LIMIT + 1] not in message
        return
    profile, applied = selection.profile, selection.applied
    assert profile in visible and applied.slug == profile.slug
    assert set(selection.choices) == {o.name for o in profile.options}
    for option in profile.options:
        choice = option.find(selection.choices[option.name])
        assert choice is not None and choice.open_to(groups)
        assert getattr(applied, option.name) == choice.value
    if not saved:
        assert isinstance(options, dict) and selection.notes == ()
        assert set(options) <= {"profile", *selection.choices}
        for name, key in selection.choices.items():
            assert options.get(name) in (None, key)  # None: not sent


# -- allowed_image: DockerSpawner's rule for {"image": …} on hubs without profiles -------------


@pytest.mark.parametrize(
    ("allowed", "wanted", "image"),
    [
        (
            {"q/s:4": "q/s:4", "q/s:5": "q/s:5"},
            "q/s:5",
            "q/s:5",
        ),  # a list, cast as DockerSpawner does
        ({"4.0": "q/s:4.0", "4": "q/s:4"}, "4.0", "q/s:4.0"),  # a mapping: key to image
        ({"four": "q/s:4"}, "four", "q/s:4"),
        ("*", "anything/at:all", "anything/at:all"),
    ],
)
def test_allowed_image_gives_the_image(allowed: object, wanted: str, image: str) -> None:
    assert allowed_image(allowed, wanted) == image


NO_CHOICE = "This hub does not let users choose an image; start without the 'image' option."


@pytest.mark.parametrize(
    ("allowed", "wanted", "message"),
    [
        ({}, "q/s:4", NO_CHOICE),
        (None, "q/s:4", NO_CHOICE),
        ([], "q/s:4", NO_CHOICE),
        ("", "q/s:4", NO_CHOICE),
        (
            {"4": "q/s:4", "5": "q/s:5"},
            "q/s:4",  # the image, not its key
            "Image 'q/s:4' is not one you may choose; choose one of: 4, 5",
        ),
        (
            {"a": "a"},
            "b" * 100,
            f"Image '{'b' * ECHO_LIMIT}…' is not one you may choose; choose one of: a",
        ),
        ({"4": "q/s:4"}, ["4"], "user option 'image' must be a string, got ['4']"),
        ({"4": "q/s:4"}, 4, "user option 'image' must be a string, got 4"),
        ({"4": "q/s:4"}, None, "user option 'image' must be a string, got None"),
        ("*", {"x": 1}, "user option 'image' must be a string, got {'x': 1}"),
        ("*", "", "user option 'image' must be a string, got ''"),
    ],
)
def test_allowed_image_refuses_with_a_sentence(
    allowed: object, wanted: object, message: str
) -> None:
    with pytest.raises(ChoiceError) as refused:
        allowed_image(allowed, wanted)
    assert str(refused.value) == message
