"""The spawn form: one card per profile, with live GPU availability.

The form is the packaged Jinja template ``templates/spawn_form.html.j2``; an admin restyles it
by putting a file of the same name in one of ``template_paths``. A template gets:

- ``cards``: one :class:`ProfileCard` per profile, in order (``card.profile`` is the
  :class:`~spawner.core.profiles.Profile`; ``checked``, ``gpu_label``, ``will_wait``, and
  ``options``: one :class:`OptionField` per setting the profile lets the user choose);
- ``notes``: sentences about the user's last choices that no longer apply;
- ``free_gpus``, ``total_gpus``, ``queue_length``, ``gpu_summary``;
- ``availability``: e.g. ``"3 of 8 GPUs free · 2 waiting"``, empty on a host without GPUs.

The form posts ``profile`` and, for each option of a profile, a field ``<slug>:<option>``
holding a choice's key; :func:`options_from_form` turns those of the chosen profile into user
options (``{"profile": "gpu-1", "image": "pytorch"}``), which
:func:`spawner.core.profiles.select` validates.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from spawner.core.choices import ProfileOption, groups_words
from spawner.core.profiles import Profile, default_profile

TEMPLATE_NAME = "spawn_form.html.j2"
PACKAGED_TEMPLATES = Path(__file__).parent.parent / "templates"
WAIT_NOTE = "will wait for a free GPU"


@dataclass(frozen=True)
class ChoiceEntry:
    """One entry of an option's list: ``closed_why`` (e.g. "staff only") when the user may
    not pick it, in which case it is shown disabled."""

    key: str
    label: str
    selected: bool
    closed_why: str = ""


@dataclass(frozen=True)
class OptionField:
    """One option of a profile, as a list of its choices under the profile's card."""

    field_name: str  # "<slug>:<option>", read back by options_from_form
    input_id: str
    label: str
    entries: tuple[ChoiceEntry, ...]


@dataclass(frozen=True)
class ProfileCard:
    """What the template shows for one profile."""

    profile: Profile
    checked: bool
    gpu_label: str  # "2 GPUs · " + the inventory summary; empty for CPU profiles
    will_wait: bool  # asks for more GPUs than are free right now
    options: tuple[OptionField, ...] = ()

    @property
    def input_id(self) -> str:
        return f"profile-{self.profile.slug}"


def option_field(
    slug: str, option: ProfileOption, user_groups: Collection[str], chosen: str | None
) -> OptionField:
    """The list of ``option``'s choices; ``chosen`` (the user's last pick) or the default is
    selected, choices closed to the user's groups are shown disabled with who they are for."""
    default = option.default_for(user_groups)
    pick = option.find(chosen or "")
    if pick is None or not pick.open_to(user_groups):
        pick = default
    entries = tuple(
        ChoiceEntry(
            key=c.key,
            label=c.display_name,
            selected=pick is not None and c.key == pick.key,
            closed_why="" if c.open_to(user_groups) else groups_words(c.groups),
        )
        for c in option.choices
    )
    return OptionField(
        field_name=f"{slug}:{option.name}",
        input_id=f"option-{slug}-{option.name}",
        label=option.display_name,
        entries=entries,
    )


@functools.lru_cache(maxsize=16)
def _environment(template_paths: tuple[str, ...]) -> jinja2.Environment:
    loader = jinja2.FileSystemLoader([*template_paths, str(PACKAGED_TEMPLATES)])
    return jinja2.Environment(
        loader=loader,
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def availability_text(free_gpus: int, total_gpus: int, queue_length: int) -> str:
    """``"3 of 8 GPUs free"``, plus ``" · 2 waiting"`` when requests are queued."""
    if total_gpus <= 0:
        return ""
    unit = "GPU" if total_gpus == 1 else "GPUs"
    text = f"{free_gpus} of {total_gpus} {unit} free"
    if queue_length > 0:
        text += f" · {queue_length} waiting"
    return text


def render_form(
    profiles_visible: Sequence[Profile],
    *,
    selected: str | None,
    gpu_summary: str,
    chosen: Mapping[str, str] | None = None,
    notes: Sequence[str] = (),
    user_groups: Collection[str] = (),
    free_gpus: int,
    total_gpus: int,
    queue_length: int,
    budget_line: str = "",
    template_paths: Sequence[str] = (),
) -> str:
    """The HTML of the spawn form (autoescaped), for ``Spawner.options_form``.

    ``selected`` is the slug to pre-select (e.g. the one used last time); when it is not among
    ``profiles_visible`` the default profile is pre-selected. A profile asking for more GPUs than
    ``free_gpus`` stays selectable and is marked as waiting for a free GPU. ``chosen`` holds
    the user's last choices of the selected profile's options (keys by setting); every other
    option shows its default for ``user_groups``. ``budget_line`` says how many GPU-hours
    are left ("12.5 of 40 GPU-hours left this month"; empty: no budget).
    """
    checked_slug: str | None = None
    if profiles_visible:
        slugs = {p.slug for p in profiles_visible}
        checked_slug = selected if selected in slugs else default_profile(profiles_visible).slug
    cards = [
        ProfileCard(
            profile=p,
            checked=p.slug == checked_slug,
            gpu_label=(
                f"{p.gpus} GPU{'' if p.gpus == 1 else 's'} · {gpu_summary}" if p.gpus else ""
            ),
            will_wait=p.gpus > free_gpus,
            options=tuple(
                option_field(
                    p.slug,
                    o,
                    user_groups,
                    (chosen or {}).get(o.name) if p.slug == checked_slug else None,
                )
                for o in p.options
            ),
        )
        for p in profiles_visible
    ]
    template = _environment(tuple(template_paths)).get_template(TEMPLATE_NAME)
    return template.render(
        cards=cards,
        free_gpus=free_gpus,
        total_gpus=total_gpus,
        queue_length=queue_length,
        gpu_summary=gpu_summary,
        availability=availability_text(free_gpus, total_gpus, queue_length),
        wait_note=WAIT_NOTE,
        notes=list(notes),
        budget_line=budget_line,
    )


def options_from_form(formdata: Mapping[str, list[str]]) -> dict[str, Any]:
    """``{"profile": <the first value posted>, <option>: <its choice>…}`` for the chosen
    profile's ``<slug>:<option>`` fields, or ``{}``; validated later, no side effects."""
    values = formdata.get("profile")
    if not values:
        return {}
    slug = values[0]
    options: dict[str, Any] = {"profile": slug}
    for field_name, posted in formdata.items():
        owner, _, option = field_name.partition(":")
        if owner == slug and option and posted and option != "profile":
            options[option] = posted[0]
    return options


__all__ = [
    "PACKAGED_TEMPLATES",
    "TEMPLATE_NAME",
    "WAIT_NOTE",
    "ChoiceEntry",
    "OptionField",
    "ProfileCard",
    "availability_text",
    "option_field",
    "options_from_form",
    "render_form",
]
