"""Choices inside a profile, and DockerSpawner's ``allowed_images``: what a user may pick.

A profile may offer ``options``: for some of its settings (the image, the memory, CPU and
``/dev/shm`` limits) a set of choices, each optionally limited to groups::

    options:
      image:
        choices:
          pytorch: {display_name: PyTorch, value: "site/pytorch:2"}
          tensorflow: {display_name: TensorFlow, value: "site/tf:2", groups: [staff]}
        default: pytorch
      mem_limit:
        choices: [16g, 32g, 64g]

A user names a choice by its key (``{"profile": "gpu-1", "image": "pytorch"}``), never by a
value: what runs is always something the admin wrote. :func:`parse_options` checks the
admin's table once (every problem one line); :func:`pick` checks what a user sent.
:func:`allowed_image` is DockerSpawner's own rule for ``{"image": …}`` on hubs without profiles.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from spawner.core.sizes import SizeError, format_size, parse_size

#: The profile settings a choice may set, and how the form names them.
OPTION_TITLES: dict[str, str] = {
    "image": "Image",
    "mem_limit": "Memory",
    "cpu_limit": "CPUs",
    "shm_size": "/dev/shm",
}
#: A choice's key: what users send, so short and plain (image names fit: "site/x:1.0").
KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,99}", re.ASCII)
#: At most this many characters of what a user sent are repeated back in a message.
ECHO_LIMIT = 64
_OPTION_KEYS = ("display_name", "choices", "default")
_CHOICE_KEYS = ("display_name", "value", "groups")

Value = str | int | float


class ChoiceError(ValueError):
    """What a user picked is not one of the choices offered to them (a 400 for them)."""


def clip(value: object, limit: int = ECHO_LIMIT) -> str:
    """At most ``limit`` characters of ``value``, unprintable ones replaced, for messages."""
    text = value if isinstance(value, str) else repr(value)
    clipped = text[:limit] + ("…" if len(text) > limit else "")
    return "".join(c if c.isprintable() else "?" for c in clipped)


def groups_words(groups: Sequence[str]) -> str:
    """``"staff only"``, ``"staff or admins only"``: why a choice is closed to someone."""
    return " or ".join(groups) + " only"


@dataclass(frozen=True)
class Choice:
    """One choice: ``value`` is an image name, bytes (sizes) or a number of CPUs."""

    key: str
    display_name: str
    value: Value
    groups: tuple[str, ...] = ()  # empty: everyone may pick it

    def open_to(self, user_groups: Collection[str]) -> bool:
        return not self.groups or bool(set(self.groups).intersection(user_groups))


@dataclass(frozen=True)
class ProfileOption:
    """A profile setting with choices; ``default`` is a key (empty: the first open one)."""

    name: str
    display_name: str
    choices: tuple[Choice, ...]
    default: str = ""

    def find(self, key: str) -> Choice | None:
        return next((c for c in self.choices if c.key == key), None)

    def open_choices(self, user_groups: Collection[str]) -> tuple[Choice, ...]:
        return tuple(c for c in self.choices if c.open_to(user_groups))

    def default_for(self, user_groups: Collection[str]) -> Choice | None:
        """The default if this user may pick it, else their first open choice."""
        chosen = self.find(self.default)
        if chosen is not None and chosen.open_to(user_groups):
            return chosen
        return next(iter(self.open_choices(user_groups)), None)


def _label(name: str, value: Value) -> str:
    if name in ("mem_limit", "shm_size") and isinstance(value, int):
        return format_size(value)
    if name == "cpu_limit" and isinstance(value, float):
        return f"{value:g} CPU" + ("" if value == 1 else "s")
    return str(value)


def _as_key(raw: object) -> object:
    """A number written as a key (YAML's ``2:``) or a list entry, as the string users send."""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return repr(raw)
    return raw


def _lowered(title: str) -> str:
    """``"Framework"`` → ``"framework"`` for the middle of a sentence; ``"CPUs"`` stays."""
    if len(title) > 1 and title[0].isupper() and title[1].islower():
        return title[0].lower() + title[1:]
    return title


class _Reader:
    """Reads one profile's ``options``; problems go to ``errors`` as ``<where>: …`` lines."""

    def __init__(self, where: str, errors: list[str]) -> None:
        self.where = where
        self.errors = errors

    def fail(self, where: str, problem: str) -> None:
        self.errors.append(f"{self.where}: {where}: {problem}")

    def value(self, name: str, raw: object, where: str) -> Value | None:
        if name in ("mem_limit", "shm_size"):
            try:
                return parse_size(raw, option=f"{self.where}: {where}")  # type: ignore[arg-type]
            except SizeError as e:
                self.errors.append(str(e))
                return None
        if name == "cpu_limit":
            number = isinstance(raw, int | float) and not isinstance(raw, bool)
            if number and math.isfinite(raw) and raw > 0:  # type: ignore[arg-type, operator]
                return float(raw)  # type: ignore[arg-type]
            self.fail(where, f"must be a number of CPUs > 0, got {clip(repr(raw))}")
            return None
        if not isinstance(raw, str) or not raw.strip() or any(c.isspace() for c in raw):
            self.fail(where, f"must be an image name without spaces, got {clip(repr(raw))}")
            return None
        return raw

    def groups(self, raw: object, where: str) -> tuple[str, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list | tuple) or not all(
            isinstance(g, str) and g.strip() for g in raw
        ):
            self.fail(where, f"must be a list of group names, e.g. ['staff'], got {clip(raw)}")
            return ()
        return tuple(dict.fromkeys(g.strip() for g in raw))

    def key(self, raw: object, where: str) -> str | None:
        if isinstance(raw, str) and KEY_RE.fullmatch(raw):
            return raw
        self.fail(
            where,
            f"{clip(repr(raw))} is not a choice key: 1-100 letters, digits and . _ : / @ + -",
        )
        return None

    def choice(
        self, name: str, key: object, raw: object, where: str, *, listed: bool = False
    ) -> Choice | None:
        spec: Mapping[Any, Any] = raw if isinstance(raw, Mapping) else {"value": raw}
        if listed and "value" in spec:  # the key is the value: one mistake, named once
            before = len(self.errors)
            self.value(name, spec["value"], f"{where}.value")
            if len(self.errors) > before:
                return None
        checked_key = self.key(key, where)
        unknown = [k for k in spec if k not in _CHOICE_KEYS]
        if unknown:
            self.fail(where, f"unknown key(s) {clip(unknown)}; allowed: {', '.join(_CHOICE_KEYS)}")
        if "value" not in spec:
            self.fail(where, "field 'value' is required")
            return None
        value = self.value(name, spec["value"], f"{where}.value")
        title = spec.get("display_name")
        if title is not None and (not isinstance(title, str) or not title.strip()):
            self.fail(f"{where}.display_name", f"must be a non-empty string, got {clip(title)}")
        groups = self.groups(spec.get("groups"), f"{where}.groups")
        if checked_key is None or value is None:
            return None
        shown = title.strip() if isinstance(title, str) and title.strip() else _label(name, value)
        return Choice(checked_key, shown, value, groups)

    def choices(self, name: str, raw: object, where: str) -> tuple[Choice, ...]:
        items: list[tuple[object, object]]
        if isinstance(raw, Mapping):
            # YAML reads `{2: 2}` with an int key: the same key as the list form's "2"
            items = [(_as_key(k), v) for k, v in raw.items()]
        elif isinstance(raw, list | tuple):
            # a list: each entry is its own key, as in DockerSpawner's allowed_images list
            items = [(_as_key(entry), entry) for entry in raw]
        else:
            self.fail(where, "must be a mapping of key: choice, or a list")
            return ()
        if not items:
            self.fail(where, "is empty; give at least one choice")
        listed = not isinstance(raw, Mapping)
        parsed = [
            self.choice(name, k, v, f"{where}[{clip(k, 40)!r}]", listed=listed) for k, v in items
        ]
        return tuple(c for c in parsed if c is not None)


def _parse_option(reader: _Reader, name: object, raw: object) -> ProfileOption | None:
    where = f"options.{clip(name, 40)}"
    if name not in OPTION_TITLES:
        reader.fail(where, f"is not a setting with choices; use one of {', '.join(OPTION_TITLES)}")
        return None
    assert isinstance(name, str)
    if not isinstance(raw, Mapping) or "choices" not in raw:
        reader.fail(where, "must be a mapping with 'choices' (and optional default, display_name)")
        return None
    unknown = [k for k in raw if k not in _OPTION_KEYS]
    if unknown:
        reader.fail(where, f"unknown key(s) {clip(unknown)}; allowed: {', '.join(_OPTION_KEYS)}")
    choices = reader.choices(name, raw["choices"], f"{where}.choices")
    keys = [c.key for c in choices]
    for key in {k for k in keys if keys.count(k) > 1}:
        reader.fail(f"{where}.choices", f"key {key!r} is given twice")
    default = raw.get("default", "")
    if default and (not isinstance(default, str) or default not in keys):
        reader.fail(
            f"{where}.default", f"{clip(repr(default))} is not one of its keys: {', '.join(keys)}"
        )
        default = ""
    title = raw.get("display_name")
    if title is not None and (not isinstance(title, str) or not title.strip()):
        reader.fail(f"{where}.display_name", f"must be a non-empty string, got {clip(title)}")
    shown = title.strip() if isinstance(title, str) and title.strip() else OPTION_TITLES[name]
    if not choices:
        return None
    return ProfileOption(name, shown, choices, str(default or ""))


def parse_options(
    raw: object, where: str, errors: list[str], *, allowed_images: object = None
) -> tuple[ProfileOption, ...]:
    """A profile's ``options`` (and its ``allowed_images`` shorthand for image choices).

    Problems are appended to ``errors`` as lines starting with ``where``.
    """
    reader = _Reader(where, errors)
    table: dict[object, object] = {}
    if raw is not None:
        if isinstance(raw, Mapping):
            table = dict(raw)
        else:
            reader.fail("options", "must be a mapping of setting: {choices: …}")
    if allowed_images is not None:
        if "image" in table:
            reader.fail("allowed_images", "give the image choices once: here or options.image")
        else:
            table["image"] = {"choices": allowed_images}
    parsed = [_parse_option(reader, name, spec) for name, spec in table.items()]
    return tuple(o for o in parsed if o is not None)


@dataclass(frozen=True)
class Picked:
    """What :func:`pick` made of a user's choices: ``values`` by setting, ``keys`` as chosen,
    and ``notes``: one sentence per saved choice that was replaced by the default."""

    values: Mapping[str, Value]
    keys: Mapping[str, str]
    notes: tuple[str, ...] = ()


def _closed_or_unknown(
    option: ProfileOption, key: str, user_groups: Collection[str], profile: str
) -> str:
    open_keys = ", ".join(c.key for c in option.open_choices(user_groups)) or "(none)"
    choice = option.find(key)
    what = f"{option.name} '{clip(key)}' of profile '{profile}'"
    if choice is not None:
        return f"{what} is for {groups_words(choice.groups)}; choose one of: {open_keys}"
    return f"{what} is not one of its choices; choose one of: {open_keys}"


def pick(
    options: Sequence[ProfileOption],
    sent: Mapping[str, object],
    user_groups: Collection[str],
    *,
    profile: str,
    saved: bool = False,
) -> Picked:
    """The choices a user made for one profile's ``options``; ``sent`` holds only their keys.

    A key not sent takes the default. ``saved``: the choices are the user's earlier ones,
    which JupyterHub reuses when a start sends none; one no longer offered falls back to the
    default with a note, where a sent one raises :class:`ChoiceError`.
    """
    values: dict[str, Value] = {}
    keys: dict[str, str] = {}
    notes: list[str] = []
    for option in options:
        choice = option.default_for(user_groups)
        if option.name in sent:
            wanted = sent[option.name]
            found = option.find(wanted) if isinstance(wanted, str) else None
            if found is not None and found.open_to(user_groups):
                choice = found
            elif saved:
                replaced = choice.key if choice is not None else "none"
                notes.append(
                    f"Your last choice of {_lowered(option.display_name)} ('{clip(wanted)}') "
                    f"is no longer offered to you; '{replaced}' is used instead."
                )
            elif not isinstance(wanted, str):
                raise ChoiceError(
                    f"user option '{option.name}' must be a string (a choice's key), got "
                    f"{clip(repr(wanted))}"
                )
            else:
                raise ChoiceError(_closed_or_unknown(option, wanted, user_groups, profile))
        if choice is None:
            raise ChoiceError(
                f"profile '{profile}' offers you no {_lowered(option.display_name)} to choose; "
                "ask an admin of this hub"
            )
        values[option.name] = choice.value
        keys[option.name] = choice.key
    return Picked(values, keys, tuple(notes))


def allowed_image(allowed: object, wanted: object) -> str:
    """DockerSpawner's rule for ``{"image": …}``: the image ``allowed_images`` names for key
    ``wanted`` (``"*"``: any image; empty: none may be named). Raises :class:`ChoiceError`."""
    if not isinstance(wanted, str) or not wanted:
        raise ChoiceError(f"user option 'image' must be a string, got {clip(repr(wanted))}")
    if allowed == "*":
        return wanted
    if not isinstance(allowed, Mapping) or not allowed:
        raise ChoiceError(
            "This hub does not let users choose an image; start without the 'image' option."
        )
    if wanted not in allowed:
        keys = ", ".join(clip(str(k), 80) for k in allowed)
        raise ChoiceError(
            f"Image '{clip(wanted)}' is not one you may choose; choose one of: {keys}"
        )
    return str(allowed[wanted])


__all__ = [
    "ECHO_LIMIT",
    "KEY_RE",
    "OPTION_TITLES",
    "Choice",
    "ChoiceError",
    "Picked",
    "ProfileOption",
    "allowed_image",
    "clip",
    "groups_words",
    "parse_options",
    "pick",
]
