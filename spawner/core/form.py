"""The spawn form: one card per profile, with live GPU availability.

The form is the packaged Jinja template ``templates/spawn_form.html.j2``; an admin restyles it
by putting a file of the same name in one of ``template_paths``. A template gets:

- ``cards``: one :class:`ProfileCard` per profile, in order (``card.profile`` is the
  :class:`~spawner.core.profiles.Profile`; ``checked``, ``gpu_label``, ``will_wait``);
- ``free_gpus``, ``total_gpus``, ``queue_length``, ``gpu_summary``;
- ``availability``: e.g. ``"3 of 8 GPUs free · 2 waiting"``, empty on a host without GPUs.

The form posts one field, ``profile``; :func:`options_from_form` turns it into user options,
which :func:`spawner.core.profiles.resolve_user_options` validates.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from spawner.core.profiles import Profile, default_profile

TEMPLATE_NAME = "spawn_form.html.j2"
PACKAGED_TEMPLATES = Path(__file__).parent.parent / "templates"
WAIT_NOTE = "will wait for a free GPU"


@dataclass(frozen=True)
class ProfileCard:
    """What the template shows for one profile."""

    profile: Profile
    checked: bool
    gpu_label: str  # "2 GPUs · " + the inventory summary; empty for CPU profiles
    will_wait: bool  # asks for more GPUs than are free right now

    @property
    def input_id(self) -> str:
        return f"profile-{self.profile.slug}"


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
    free_gpus: int,
    total_gpus: int,
    queue_length: int,
    template_paths: Sequence[str] = (),
) -> str:
    """The HTML of the spawn form (autoescaped), for ``Spawner.options_form``.

    ``selected`` is the slug to pre-select (e.g. the one used last time); when it is not among
    ``profiles_visible`` the default profile is pre-selected. A profile asking for more GPUs than
    ``free_gpus`` stays selectable and is marked as waiting for a free GPU.
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
    )


def options_from_form(formdata: Mapping[str, list[str]]) -> dict[str, Any]:
    """``{"profile": <the first value posted>}``, or ``{}``; validated later, no side effects."""
    values = formdata.get("profile")
    if values:
        return {"profile": values[0]}
    return {}


__all__ = [
    "PACKAGED_TEMPLATES",
    "TEMPLATE_NAME",
    "WAIT_NOTE",
    "ProfileCard",
    "availability_text",
    "options_from_form",
    "render_form",
]
