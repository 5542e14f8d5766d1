"""Workspace profiles: the choices on the spawn form, checked once at hub start-up.

A profile bundles what a user may pick: how many GPUs, which image, memory, CPU and
``/dev/shm`` limits, and who may see it. The admin's list is validated as a whole by
:func:`parse_profiles` (every mistake reported at once, naming the profile and the field);
what a user asks for, through the form or raw through the REST API, is checked by
:func:`resolve_user_options`, which only ever raises :class:`UserOptionsError`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped, unused-ignore]

from spawner.core.choices import (
    ECHO_LIMIT,
    ChoiceError,
    ProfileOption,
    parse_options,
    pick,
)
from spawner.core.choices import (
    clip as _clip,
)
from spawner.core.session import SessionLimit, parse_duration
from spawner.core.sizes import GiB, MiB, SizeError, format_size, parse_size

SLUG_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}", re.ASCII)
_CONSTRAINT_RE = re.compile(r"[^\s=!]+\s*(?:==|!=)\s*\S+")


class ProfileError(ValueError):
    """The admin's profile list is invalid; ``errors`` holds one line per problem."""

    def __init__(self, message: str, errors: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.errors: tuple[str, ...] = tuple(errors) or (message,)


class UserOptionsError(ValueError):
    """What a user asked for is not a valid choice; shown to them as a 400 error."""


@dataclass(frozen=True)
class Profile:
    """One choice on the spawn form. Sizes are in bytes; ``None`` keeps the spawner's value."""

    slug: str
    display_name: str
    description: str = ""
    gpus: int = 0
    image: str | None = None  # None: the spawner's image (its GPU image for GPU profiles)
    mem_limit: int | None = None
    cpu_limit: float | None = None
    shm_size: int | None = None
    default: bool = False
    groups: tuple[str, ...] = ()  # empty: everyone may use it
    constraints: tuple[str, ...] = ()  # Swarm placement, e.g. "node.labels.gpu==a100"
    options: tuple[ProfileOption, ...] = ()  # settings the user chooses (spawner.core.choices)
    max_age: float | None = None  # seconds one server may run (its session limit); None: no limit
    max_extensions: int = 0  # how often its user may extend that limit ("Extend" in JupyterLab)
    extend_by: float | None = None  # seconds one extension adds; None: max_age

    def session_limit(self) -> SessionLimit | None:
        """The session limit a server of this profile runs under; None without ``max_age``."""
        if self.max_age is None:
            return None
        extend_by = self.extend_by if self.extend_by is not None else self.max_age
        return SessionLimit(self.max_age, self.max_extensions, extend_by)

    def limits_summary(self) -> str:
        """Memory and CPU limits in a few words, e.g. ``"16 GiB RAM · 4 CPUs"``; may be empty."""
        parts: list[str] = []
        if self.mem_limit is not None:
            parts.append(f"{format_size(self.mem_limit)} RAM")
        if self.cpu_limit is not None:
            parts.append(f"{self.cpu_limit:g} CPU" + ("" if self.cpu_limit == 1 else "s"))
        return " · ".join(parts)


#: The keys a profile may have, in the order the docs list them (``allowed_images``: image
#: choices as DockerSpawner writes them, a list or a mapping; short for ``options.image``).
ALLOWED_KEYS: tuple[str, ...] = (
    *(f.name for f in dataclasses.fields(Profile)),
    "allowed_images",
)

#: The profiles a hub gets when the admin configures none.
DEFAULT_PROFILES: list[dict[str, Any]] = [
    {
        "slug": "cpu",
        "display_name": "CPU only",
        "description": (
            "No GPU: for writing and debugging code, preparing data and small experiments. "
            "Starts right away, even when every GPU is in use."
        ),
        "default": True,
    },
    {
        "slug": "gpu-1",
        "display_name": "1 GPU",
        "description": (
            "One GPU that is yours alone while the server runs: training and inference of "
            "most models. Stop the server when you are done so that others can use the GPU."
        ),
        "gpus": 1,
    },
    {
        "slug": "gpu-2",
        "display_name": "2 GPUs",
        "description": (
            "Two GPUs for multi-GPU training (PyTorch DDP, data or model parallel). "
            "May wait until two GPUs are free; stop the server when you are done."
        ),
        "gpus": 2,
    },
]


@dataclass(frozen=True)
class HostResources:
    """What the Docker host has: ``docker info``'s ``NCPU`` and ``MemTotal`` (bytes)."""

    cpus: float
    memory: int
    source: str = "the Docker engine"  # where the figures came from, for the start-up log


#: The CPU profile gets at most this share of the host (less when a GPU's share is smaller).
CPU_PROFILE_SHARE = 1 / 4
#: Held back for the host, dockerd and the hub: 10 % of the memory, between 1 and 8 GiB …
HOST_MEMORY_RESERVE = (0.10, 1 * GiB, 8 * GiB)
#: … and a core (a quarter of the cores on hosts with fewer than four).
HOST_CPU_RESERVE = 1.0
#: No derived limit is below this (unless the host itself has less to give).
MIN_MEMORY_LIMIT = 512 * MiB
MIN_CPU_LIMIT = 1.0


def derived_limits(gpus: int, *, total_gpus: int | None, host: HostResources) -> tuple[int, float]:
    """The memory limit (bytes) and CPU limit of a shipped profile, from the host's size.

    A GPU profile gets its GPUs' share of what the host can give: on a host of 4 GPUs, 16
    cores and 64 GiB, 1 GPU gets a quarter of 15 cores and of 57.6 GiB. The CPU profile
    gets :data:`CPU_PROFILE_SHARE` of it, or one GPU's share when that is smaller. What the
    host can give is its memory less :data:`HOST_MEMORY_RESERVE` and its cores less
    :data:`HOST_CPU_RESERVE`. Memory is rounded down to a MiB, CPUs to a tenth, and neither
    goes below :data:`MIN_MEMORY_LIMIT` / :data:`MIN_CPU_LIMIT` or above what the host gives.
    """
    fraction, low, high = HOST_MEMORY_RESERVE
    reserve = min(max(int(host.memory * fraction), low), high, host.memory // 2)
    memory = host.memory - reserve
    cpus = host.cpus - min(HOST_CPU_RESERVE, host.cpus / 4)
    known = total_gpus or 0
    if gpus > 0:
        share = gpus / max(known, gpus)
    else:
        share = min(CPU_PROFILE_SHARE, 1 / known) if known else CPU_PROFILE_SHARE
    mem_limit = int(memory * share) // MiB * MiB
    cpu_limit = math.floor(round(cpus * share * 10, 6)) / 10
    return (
        min(max(mem_limit, MIN_MEMORY_LIMIT), memory // MiB * MiB),
        min(max(cpu_limit, MIN_CPU_LIMIT), cpus),
    )


def default_profiles_for(
    total_gpus: int | None, host: HostResources | None = None, *, memory: bool = True
) -> list[dict[str, Any]]:
    """Copies of :data:`DEFAULT_PROFILES` without those asking for more GPUs than the host has.

    With ``host``, each copy carries the ``mem_limit`` and ``cpu_limit`` of
    :func:`derived_limits` (``memory=False``: only the CPU limit, for a hub whose admin set one
    memory limit for every server); ``/dev/shm`` then follows the memory limit (half of it).
    """
    chosen = [
        dict(p)
        for p in DEFAULT_PROFILES
        if total_gpus is None or int(p.get("gpus", 0)) <= total_gpus
    ]
    if host is not None:
        for profile in chosen:
            mem_limit, cpu_limit = derived_limits(
                int(profile.get("gpus", 0)), total_gpus=total_gpus, host=host
            )
            if memory:
                profile["mem_limit"] = mem_limit
            profile["cpu_limit"] = cpu_limit
    return chosen


def unlimited_profile_warnings(
    profiles: Sequence[Profile], *, mem_limit: object = None, cpu_limit: object = None
) -> list[str]:
    """One sentence per profile whose servers would run without a memory or CPU limit.

    ``mem_limit`` and ``cpu_limit`` are the spawner's own (they apply where a profile sets
    none); empty or zero means none.
    """
    lines = []
    for p in profiles:
        missing = [
            name
            for name, own, spawner_wide in (
                ("memory", p.mem_limit, mem_limit),
                ("CPU", p.cpu_limit, cpu_limit),
            )
            if own is None and not spawner_wide
        ]
        if missing:
            lines.append(
                f"profile '{p.slug}' has no {' and no '.join(missing)} limit: one of its servers "
                "can take the whole host from the hub and every other user; give it mem_limit "
                "and cpu_limit in a profiles file (docs/gpus.md: Default limits)"
            )
    return lines


def _shown(value: object) -> str:
    """``value`` as Python writes it (strings quoted), clipped, for "got …" in messages."""
    return _clip(repr(value))


def _type_name(value: object) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "true/false"}
    if value is None:
        return "nothing (null)"
    return names.get(type(value), type(value).__name__)


class _Checker:
    """Validates one profile, appending ``"<where>: field '<key>': <problem>"`` to ``errors``."""

    def __init__(self, where: str, errors: list[str]) -> None:
        self.where = where
        self.errors = errors

    def fail(self, key: str, problem: str) -> None:
        self.errors.append(f"{self.where}: field '{key}': {problem}")

    def text(
        self, item: Mapping[str, Any], key: str, *, required: bool, word: bool = False
    ) -> str | None:
        """A string field; ``word``: taken as is and without spaces (slugs, image names)."""
        if key not in item or item[key] is None:
            if required:
                self.fail(key, "is required")
            return None
        value = item[key]
        if not isinstance(value, str) or (required and not value.strip()):
            self.fail(key, f"must be a non-empty string, got {_type_name(value)}")
            return None
        if not word:
            return value.strip()
        if any(c.isspace() for c in value):
            self.fail(key, f"must not contain spaces, got {_shown(value)}")
            return None
        return value

    def count(self, value: object, total_gpus: int | None) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.fail("gpus", f"must be a whole number ≥ 0, got {_shown(value)}")
            return 0
        if total_gpus is not None and value > total_gpus:
            asked = "1 GPU" if value == 1 else f"{value} GPUs"
            self.fail("gpus", f"asks for {asked} but this host has {total_gpus}")
        return value

    def size(self, item: Mapping[str, Any], key: str) -> int | None:
        if item.get(key) is None:
            return None
        try:
            return parse_size(item[key], option=f"{self.where}: field '{key}'")
        except SizeError as e:
            self.errors.append(str(e))
            return None

    def cpus(self, value: object) -> float | None:
        if value is None:
            return None
        if (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and value > 0
        ):
            return float(value)
        self.fail("cpu_limit", f"must be a number of CPUs > 0 (e.g. 2 or 0.5), got {_shown(value)}")
        return None

    def names(self, value: object, key: str, example: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str) or not isinstance(value, list | tuple):
            self.fail(key, f"must be a list, e.g. [{example}], got {_type_name(value)}")
            return ()
        names: list[str] = []
        for i, entry in enumerate(value):
            if not isinstance(entry, str) or not entry.strip():
                self.fail(f"{key}[{i}]", f"must be a non-empty string, got {_shown(entry)}")
            elif entry.strip() not in names:
                names.append(entry.strip())
        return tuple(names)


def _parse_one(
    item: Mapping[Any, Any],
    where: str,
    *,
    total_gpus: int | None,
    allowed_images: Collection[str] | None,
    errors: list[str],
) -> Profile | None:
    before = len(errors)
    unknown = [key for key in item if key not in ALLOWED_KEYS]
    if unknown:
        errors.append(
            f"{where}: unknown key(s) {', '.join(repr(_clip(k, 40)) for k in unknown)}; "
            f"allowed keys: {', '.join(ALLOWED_KEYS)}"
        )
    check = _Checker(where, errors)
    slug = check.text(item, "slug", required=True, word=True)
    if slug is not None and not SLUG_RE.fullmatch(slug):
        check.fail(
            "slug",
            f"'{_clip(slug)}' must be 1-63 lowercase letters, digits and '-', starting with "
            "a letter or digit",
        )
    display_name = check.text(item, "display_name", required=True)
    description = check.text(item, "description", required=False) or ""
    gpus = check.count(item.get("gpus", 0), total_gpus)
    image = None
    if item.get("image") is not None:
        image = check.text(item, "image", required=True, word=True)
    if image is not None and allowed_images is not None and image not in allowed_images:
        choices = ", ".join(sorted(allowed_images)) or "(none)"
        check.fail("image", f"'{_clip(image)}' is not one of the allowed images: {choices}")
    mem_limit = check.size(item, "mem_limit")
    shm_size = check.size(item, "shm_size")
    if mem_limit is not None and shm_size is not None and shm_size > mem_limit:
        check.fail(
            "shm_size",
            f"{format_size(shm_size)} is more than mem_limit {format_size(mem_limit)}; "
            "/dev/shm counts against the memory limit",
        )
    cpu_limit = check.cpus(item.get("cpu_limit"))
    default = item.get("default", False)
    if not isinstance(default, bool):
        check.fail("default", f"must be true or false, got {_shown(default)}")
    groups = check.names(item.get("groups"), "groups", "'students'")
    constraints = check.names(item.get("constraints"), "constraints", "'node.labels.gpu==a100'")
    for i, constraint in enumerate(constraints):
        if not _CONSTRAINT_RE.fullmatch(constraint):
            check.fail(
                f"constraints[{i}]",
                f"'{_clip(constraint)}' is not a Swarm constraint like 'node.labels.gpu==a100'",
            )
    options = parse_options(
        item.get("options"), where, errors, allowed_images=item.get("allowed_images")
    )
    options = _options_agree(check, options, image=image, shm_size=shm_size, mem_limit=mem_limit)
    if allowed_images is not None:
        for option in options:
            for choice in option.choices if option.name == "image" else ():
                if choice.value not in allowed_images:
                    check.fail("options", f"image '{_clip(choice.value)}' is not allowed here")
    session = _session_fields(check, item)
    if len(errors) > before or slug is None or display_name is None:
        return None
    return Profile(
        slug=slug,
        display_name=display_name,
        description=description,
        gpus=gpus,
        image=image,
        mem_limit=mem_limit,
        cpu_limit=cpu_limit,
        shm_size=shm_size,
        default=bool(default),
        groups=groups,
        constraints=constraints,
        options=options,
        **session,
    )


def _session_fields(check: _Checker, item: Mapping[Any, Any]) -> dict[str, Any]:
    """``max_age``, ``max_extensions`` and ``extend_by``, checked (durations in seconds)."""
    fields: dict[str, Any] = {}
    for key in ("max_age", "extend_by"):
        if item.get(key) is not None:
            try:
                fields[key] = parse_duration(item[key])
            except ValueError as e:
                check.fail(key, str(e))
    extensions = item.get("max_extensions", 0)
    if isinstance(extensions, bool) or not isinstance(extensions, int) or extensions < 0:
        check.fail("max_extensions", f"must be a whole number ≥ 0, got {_shown(extensions)}")
    elif extensions:
        fields["max_extensions"] = extensions
    for key in ("max_extensions", "extend_by"):
        if item.get(key) and item.get("max_age") is None:
            check.fail(key, "needs max_age (the session limit it extends)")
    return fields


def _options_agree(
    check: _Checker,
    options: tuple[ProfileOption, ...],
    *,
    image: str | None,
    shm_size: int | None,
    mem_limit: int | None,
) -> tuple[ProfileOption, ...]:
    """The options, checked against the profile's own fields: its ``image`` must be one of
    the image choices (it is then their default), and no ``/dev/shm`` may exceed a memory limit.
    """
    by_name = {o.name: o for o in options}
    images = by_name.get("image")
    if images is not None and image is not None:
        matches = [c for c in images.choices if c.value == image]
        # two keys may name one image (an alias): the default, if it is one of them
        match = next((c for c in matches if c.key == images.default), None)
        match = match or next(iter(matches), None)
        if match is None:
            check.fail("image", f"'{_clip(image)}' is not one of the image choices")
        elif images.default and images.default != match.key:
            check.fail("image", "and options.image.default disagree; give the default once")
        else:
            by_name["image"] = dataclasses.replace(images, default=match.key)
    shms = [shm_size] if shm_size is not None else []
    mems = [mem_limit] if mem_limit is not None else []
    for name, values in (("shm_size", shms), ("mem_limit", mems)):
        if name in by_name:
            values[:] = [int(c.value) for c in by_name[name].choices]
    chosen = "shm_size" in by_name or "mem_limit" in by_name
    if chosen and shms and mems and max(shms) > min(mems):
        check.fail(
            "options",
            f"a /dev/shm of {format_size(max(shms))} can be chosen with a memory limit of "
            f"{format_size(min(mems))}; /dev/shm counts against the memory limit",
        )
    return tuple(by_name.values())


def parse_profiles(
    raw: object,
    *,
    total_gpus: int | None,
    option: str = "profiles",
    allowed_images: Collection[str] | None = None,
) -> tuple[Profile, ...]:
    """Validate the admin's whole profile list and return it as :class:`Profile` objects.

    Each entry is a mapping with the keys of :data:`ALLOWED_KEYS`; ``slug`` and
    ``display_name`` are required. ``gpus`` may not exceed ``total_gpus`` (unless that is
    ``None``: unknown); ``image`` must be one of ``allowed_images`` when that is given; sizes
    are read by :func:`spawner.core.sizes.parse_size`. At most one profile is the default; without
    one, the first is. Every problem is collected and raised as one :class:`ProfileError`, one
    line each, e.g. ``profiles[1] ('gpu-2'): field 'gpus': asks for 4 GPUs but this host has 2``.
    """
    if not isinstance(raw, list | tuple):
        raise ProfileError(f"{option}: must be a list of profiles, got {_type_name(raw)}")
    if not raw:
        raise ProfileError(f"{option}: is empty; give at least one profile")
    errors: list[str] = []
    profiles: list[Profile] = []
    first_by_slug: dict[str, int] = {}
    defaults: list[str] = []
    for i, item in enumerate(raw):
        where = f"{option}[{i}]"
        if not isinstance(item, Mapping):
            errors.append(
                f"{where}: must be a mapping with slug, display_name, …, got {_type_name(item)}"
            )
            continue
        slug = item.get("slug")
        if isinstance(slug, str) and SLUG_RE.fullmatch(slug):
            where += f" ('{slug}')"
            if slug in first_by_slug:
                errors.append(
                    f"{where}: field 'slug': duplicate of {option}[{first_by_slug[slug]}]"
                )
            else:
                first_by_slug[slug] = i
        if item.get("default") is True:
            defaults.append(where)
        profile = _parse_one(
            item, where, total_gpus=total_gpus, allowed_images=allowed_images, errors=errors
        )
        if profile is not None:
            profiles.append(profile)
    if len(defaults) > 1:
        errors.append(f"{option}: more than one default profile: {', '.join(defaults)}")
    if errors:
        raise ProfileError("\n".join(errors), errors)
    if not defaults:
        profiles[0] = dataclasses.replace(profiles[0], default=True)
    return tuple(profiles)


def load_profiles_file(path: str) -> object:
    """Read a YAML (or JSON, for ``.json``) profiles file and return its raw list.

    The file holds the list itself or a mapping ``{profiles: [...]}``. Pass the result to
    :func:`parse_profiles`. A missing, unreadable or invalid file raises :class:`ProfileError`
    naming the path.
    """
    where = f"profiles file {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(f"{where}: not found") from None
    except UnicodeDecodeError:
        raise ProfileError(f"{where}: is not UTF-8 text") from None
    except OSError as e:
        raise ProfileError(f"{where}: cannot be read: {e.strerror or e}") from None
    data: object
    if path.lower().endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ProfileError(f"{where}: is not valid JSON: {e}") from None
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or "syntax error"
            raise ProfileError(f"{where}: is not valid YAML{at}: {problem}") from None
    if data is None:
        raise ProfileError(f"{where}: is empty")
    if isinstance(data, dict):
        if set(data) != {"profiles"}:
            raise ProfileError(
                f"{where}: must hold a list of profiles, or a mapping with the one key 'profiles'"
            )
        data = data["profiles"]
    return data


def visible_profiles(
    profiles: Sequence[Profile], user_groups: Collection[str]
) -> tuple[Profile, ...]:
    """The profiles a user may pick: those without ``groups`` and those sharing a group,
    when each of their options has a choice open to the user."""
    mine = set(user_groups)
    return tuple(
        p
        for p in profiles
        if (not p.groups or mine.intersection(p.groups))
        and all(o.open_choices(mine) for o in p.options)
    )


def default_profile(profiles: Sequence[Profile]) -> Profile:
    """The default among ``profiles``, else the first; :class:`ProfileError` if there are none."""
    if not profiles:
        raise ProfileError("no profiles are available")
    return next((p for p in profiles if p.default), profiles[0])


@dataclass(frozen=True)
class Selection:
    """What a user's options resolved to: the ``profile`` they picked, ``applied`` (the same
    profile with their choices written into its fields, what a spawn uses), the ``choices``
    by setting (keys), and ``notes``: sentences about saved choices that no longer apply."""

    profile: Profile
    applied: Profile
    choices: Mapping[str, str]
    notes: tuple[str, ...] = ()
    profile_gone: str | None = None  # a saved profile no longer offered (a start refuses it)


def _pick_profile(
    profiles_visible: Sequence[Profile], options: Mapping[Any, Any], *, saved: bool
) -> tuple[Profile, list[str]]:
    choices = ", ".join(p.slug for p in profiles_visible)
    if "profile" not in options:
        return default_profile(profiles_visible), []
    wanted = options["profile"]
    for profile in profiles_visible:
        if profile.slug == wanted:
            return profile, []
    fallback = default_profile(profiles_visible)
    if saved:
        return fallback, [
            f"Your last profile ('{_clip(wanted)}') is no longer offered to you; "
            f"'{fallback.slug}' is preselected."
        ]
    if not isinstance(wanted, str):
        raise UserOptionsError(
            f"user option 'profile' must be a string (a profile name), got {_type_name(wanted)}; "
            f"choose one of: {choices}"
        )
    if len(wanted) > ECHO_LIMIT or not SLUG_RE.fullmatch(wanted):
        raise UserOptionsError(f"'{_clip(wanted)}' is not a profile name; choose one of: {choices}")
    raise UserOptionsError(f"unknown profile '{wanted}'; choose one of: {choices}")


def select(
    profiles_visible: Sequence[Profile],
    options: object,
    user_groups: Collection[str] = (),
    *,
    saved: bool = False,
) -> Selection:
    """What a user asked for through the form or the REST API.

    ``options`` is a JSON object: ``profile``, the slug of a profile the user can see (none:
    the default profile), and for each of that profile's options the key of a choice open to
    the user's groups (none: the default choice). Anything else raises
    :class:`UserOptionsError` (and nothing else), repeating at most :data:`ECHO_LIMIT`
    characters of what the user sent. ``saved``: the options are the user's earlier ones
    (JupyterHub reuses them when a start sends none); a choice no longer offered then falls
    back to the default, with a sentence in ``notes``; so does a profile no longer offered,
    which also sets ``profile_gone``: the form preselects the default, a start refuses it.
    """
    if not isinstance(options, dict):
        if not saved:
            raise UserOptionsError("user options must be a JSON object")
        options = {}
    if not profiles_visible:
        raise UserOptionsError("no profiles are available to you; ask an admin of this hub")
    profile, notes = _pick_profile(profiles_visible, options, saved=saved)
    accepted = ("profile", *(o.name for o in profile.options))
    unknown = [key for key in options if key not in accepted]
    if unknown and not saved:
        names = _clip(", ".join(repr(k) if not isinstance(k, str) else k for k in unknown))
        if len(accepted) == 1:
            raise UserOptionsError(f"unknown user option(s): {names}; only 'profile' is accepted")
        raise UserOptionsError(
            f"unknown user option(s): {names}; profile '{profile.slug}' accepts: "
            + ", ".join(accepted)
        )
    sent = {k: v for k, v in options.items() if k in accepted and k != "profile"}
    try:
        picked = pick(profile.options, sent, user_groups, profile=profile.slug, saved=saved)
    except ChoiceError as e:
        raise UserOptionsError(str(e)) from None
    applied = dataclasses.replace(profile, **picked.values) if picked.values else profile  # type: ignore[arg-type]
    gone = _clip(str(options["profile"])) if notes else None
    return Selection(profile, applied, dict(picked.keys), (*notes, *picked.notes), gone)


def resolve_user_options(profiles_visible: Sequence[Profile], options: object) -> Profile:
    """The profile a user asked for, with their choices applied (see :func:`select`)."""
    return select(profiles_visible, options).applied


def asks_for_gpus(raw_profiles: Iterable[Any]) -> bool:
    """Whether any of the configured (raw, unchecked) profiles asks for GPUs."""
    for raw in raw_profiles:
        if not isinstance(raw, dict):
            continue
        try:
            if int(raw.get("gpus", 0) or 0) > 0:
                return True
        except (TypeError, ValueError):
            continue  # parse_profiles names the mistake
    return False


__all__ = [
    "ALLOWED_KEYS",
    "DEFAULT_PROFILES",
    "ECHO_LIMIT",
    "HostResources",
    "Profile",
    "ProfileError",
    "Selection",
    "UserOptionsError",
    "asks_for_gpus",
    "default_profile",
    "default_profiles_for",
    "derived_limits",
    "load_profiles_file",
    "parse_profiles",
    "resolve_user_options",
    "select",
    "unlimited_profile_warnings",
    "visible_profiles",
]
