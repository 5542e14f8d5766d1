from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from faults import DOCKER_TROUBLE, docker_api_error
from traitlets.config import Config

from spawner.backends.docker import _form_refusal
from spawner.backends.errors import WorkspaceError
from spawner.backends.swarm import GPUSwarmSpawner
from spawner.core.form import TEMPLATE_NAME, availability_text, options_from_form, render_form
from spawner.core.profiles import DEFAULT_PROFILES, Profile, parse_profiles

PROFILES = parse_profiles(DEFAULT_PROFILES, total_gpus=8)
X = "\N{MULTIPLICATION SIGN}"  # what describe() writes between count and name
SUMMARY = f"8 {X} NVIDIA H100 80GB HBM3 (80 GiB)"


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text inside each data-profile card."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.card_text: dict[str, str] = {}
        self._card: str | None = None
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if self._card is not None and tag != "input":
            self._depth += 1
        elif "data-profile" in attributes:
            self._card = attributes["data-profile"]
            self._depth = 1
            self.card_text[self._card or ""] = ""

    def handle_endtag(self, tag: str) -> None:
        if self._card is not None:
            self._depth -= 1
            if self._depth == 0:
                self._card = None

    def handle_data(self, data: str) -> None:
        if self._card is not None:
            self.card_text[self._card] += " " + " ".join(data.split())

    def radios(self) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == "input" and a.get("type") == "radio"]

    def with_attr(self, name: str) -> list[dict[str, str | None]]:
        return [a for _, a in self.tags if name in a]


def render(profiles: tuple[Profile, ...] = PROFILES, **overrides: Any) -> Elements:
    kwargs: dict[str, Any] = {
        "selected": None,
        "gpu_summary": SUMMARY,
        "free_gpus": 3,
        "total_gpus": 8,
        "queue_length": 0,
    }
    kwargs.update(overrides)
    parser = Elements()
    parser.feed(render_form(profiles, **kwargs))
    parser.close()
    return parser


def test_one_radio_card_per_profile() -> None:
    page = render()
    radios = page.radios()
    assert [(r["name"], r["value"], r["id"]) for r in radios] == [
        ("profile", "cpu", "profile-cpu"),
        ("profile", "gpu-1", "profile-gpu-1"),
        ("profile", "gpu-2", "profile-gpu-2"),
    ]
    assert [a["data-profile"] for a in page.with_attr("data-profile")] == ["cpu", "gpu-1", "gpu-2"]
    labels = {a["for"] for t, a in page.tags if t == "label"}
    assert labels == {"profile-cpu", "profile-gpu-1", "profile-gpu-2"}  # every radio is labelled
    assert not [t for t, _ in page.tags if t == "script"]


@pytest.mark.parametrize(
    ("selected", "checked"),
    [(None, "cpu"), ("gpu-2", "gpu-2"), ("gpu-1", "gpu-1"), ("gone", "cpu"), ("", "cpu")],
)
def test_the_selected_or_default_profile_is_checked(selected: str | None, checked: str) -> None:
    radios = render(selected=selected).radios()
    assert [r["value"] for r in radios if "checked" in r] == [checked]


def test_default_profile_is_checked_when_it_is_not_first() -> None:
    profiles = parse_profiles(
        [{"slug": "a", "display_name": "A"}, {"slug": "b", "display_name": "B", "default": True}],
        total_gpus=None,
    )
    assert [r["value"] for r in render(profiles).radios() if "checked" in r] == ["b"]


def test_cards_show_names_descriptions_gpus_and_availability() -> None:
    page = render(free_gpus=3, total_gpus=8, queue_length=0)
    cpu, one, two = (page.card_text[s] for s in ("cpu", "gpu-1", "gpu-2"))
    assert "CPU only" in cpu and "No GPU" in cpu
    assert "GPU" not in cpu.replace("No GPU", "").replace("every GPU", "")
    assert f"1 GPU · {SUMMARY}" in one
    assert f"2 GPUs · {SUMMARY}" in two
    assert "3 of 8 GPUs free" in one and "3 of 8 GPUs free" in two
    assert "waiting" not in one and "will wait" not in two


def test_availability_data_attributes() -> None:
    page = render(free_gpus=1, total_gpus=4, queue_length=2)
    (fieldset,) = [a for t, a in page.tags if t == "fieldset"]
    assert (
        fieldset["data-free-gpus"],
        fieldset["data-total-gpus"],
        fieldset["data-queue-length"],
    ) == (
        "1",
        "4",
        "2",
    )
    cards = {a["data-profile"]: a for a in page.with_attr("data-profile")}
    assert {slug: card["data-gpus"] for slug, card in cards.items()} == {
        "cpu": "0",
        "gpu-1": "1",
        "gpu-2": "2",
    }
    spans = [
        a for a in page.with_attr("data-free-gpus") if a.get("class", "").endswith("availability")
    ]
    assert [(s["data-free-gpus"], s["data-total-gpus"]) for s in spans] == [("1", "4"), ("1", "4")]


def test_profiles_asking_for_more_than_is_free_stay_selectable_but_wait() -> None:
    page = render(free_gpus=1, total_gpus=8, queue_length=2)
    cards = {a["data-profile"]: a["data-will-wait"] for a in page.with_attr("data-profile")}
    assert cards == {"cpu": "false", "gpu-1": "false", "gpu-2": "true"}
    assert "will wait for a free GPU" in page.card_text["gpu-2"]
    assert "will wait" not in page.card_text["gpu-1"]
    assert "1 of 8 GPUs free · 2 waiting" in page.card_text["gpu-2"]
    assert not [r for r in page.radios() if "disabled" in r]


def test_nothing_free() -> None:
    page = render(free_gpus=0, total_gpus=2, queue_length=0)
    assert "0 of 2 GPUs free" in page.card_text["gpu-1"]
    assert "will wait for a free GPU" in page.card_text["gpu-1"]


@pytest.mark.parametrize(
    ("free", "total", "queue", "text"),
    [
        (3, 8, 0, "3 of 8 GPUs free"),
        (0, 1, 0, "0 of 1 GPU free"),
        (1, 8, 3, "1 of 8 GPUs free · 3 waiting"),
        (0, 0, 0, ""),
    ],
)
def test_availability_text(free: int, total: int, queue: int, text: str) -> None:
    assert availability_text(free, total, queue) == text


def test_limits_are_shown() -> None:
    (profile,) = parse_profiles(
        [{"slug": "big", "display_name": "Big", "mem_limit": "64g", "cpu_limit": 8}],
        total_gpus=None,
    )
    assert "64 GiB RAM · 8 CPUs" in render((profile,)).card_text["big"]


def test_everything_the_admin_wrote_is_escaped() -> None:
    (profile,) = parse_profiles(
        [
            {
                "slug": "x",
                "display_name": "<script>alert(1)</script>",
                "description": '"><img src=x onerror=alert(1)>',
            }
        ],
        total_gpus=None,
    )
    html = render_form(
        (profile,),
        selected='"><b>',
        gpu_summary="<i>GPUs</i>",
        free_gpus=0,
        total_gpus=0,
        queue_length=0,
    )
    assert "<script>" not in html and "<img" not in html and "<i>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_no_profiles() -> None:
    html = render_form(
        (), selected=None, gpu_summary="no GPUs", free_gpus=0, total_gpus=0, queue_length=0
    )
    assert "No profiles are available to you" in html
    assert 'type="radio"' not in html


def test_an_admin_template_folder_comes_first(tmp_path: Path) -> None:
    (tmp_path / TEMPLATE_NAME).write_text(
        "{% for card in cards %}[{{ card.profile.slug }}{% if card.checked %}*{% endif %}]"
        "{% endfor %}"
        " {{ availability }} <{{ gpu_summary }}>",
        encoding="utf-8",
    )
    html = render_form(
        PROFILES,
        selected="gpu-1",
        gpu_summary="<b>",
        free_gpus=2,
        total_gpus=4,
        queue_length=1,
        template_paths=[str(tmp_path / "missing"), str(tmp_path)],
    )
    assert html == "[cpu][gpu-1*][gpu-2] 2 of 4 GPUs free · 1 waiting <&lt;b&gt;>"


def test_an_admin_folder_without_the_template_falls_back_to_the_packaged_one(
    tmp_path: Path,
) -> None:
    html = render_form(
        PROFILES,
        selected=None,
        gpu_summary=SUMMARY,
        free_gpus=1,
        total_gpus=1,
        queue_length=0,
        template_paths=[str(tmp_path)],
    )
    assert 'data-profile="gpu-1"' in html


@pytest.mark.parametrize(
    ("formdata", "options"),
    [
        ({}, {}),
        ({"profile": []}, {}),
        ({"profile": ["gpu-1"]}, {"profile": "gpu-1"}),
        ({"profile": ["gpu-1", "cpu"]}, {"profile": "gpu-1"}),
        ({"profile": ["<anything>"], "other": ["x"]}, {"profile": "<anything>"}),
        ({"other": ["x"]}, {}),
        # the chosen profile's option fields, not another card's
        (
            {"profile": ["gpu-1"], "gpu-1:image": ["pytorch", "x"], "cpu:image": ["tf"]},
            {"profile": "gpu-1", "image": "pytorch"},
        ),
        ({"profile": ["gpu-1"], "gpu-1:": ["x"], "gpu-1:profile": ["cpu"]}, {"profile": "gpu-1"}),
        ({"gpu-1:image": ["pytorch"]}, {}),
    ],
)
def test_options_from_form(formdata: dict[str, list[str]], options: dict[str, Any]) -> None:
    assert options_from_form(formdata) == options


FORM_SAYS = {"down": "is not answering", "error": "answered with an error"}


@pytest.mark.parametrize(("error", "trouble"), DOCKER_TROUBLE)
def test_the_form_is_a_503_with_a_sentence_when_docker_cannot_count_the_gpus(
    error: Exception, trouble: str | None
) -> None:
    refusal = _form_refusal(error)
    if trouble is None:
        assert refusal is None  # a bug is raised as it is
        return
    assert refusal is not None and refusal.status_code == 503
    assert FORM_SAYS[trouble] in refusal.jupyterhub_message
    assert "try again in a minute" in refusal.jupyterhub_message


@pytest.mark.parametrize(
    "case",
    [
        {"error": requests.exceptions.ConnectionError("refused"), "says": "is not answering"},
        {"error": docker_api_error(), "says": "Swarm manager of this hub answered with an error"},
    ],
)
async def test_the_swarm_form_is_a_503_with_a_sentence_when_the_manager_fails(
    monkeypatch: pytest.MonkeyPatch, case: dict[str, Any]
) -> None:
    async def failing(self: Any) -> None:
        raise case["error"]

    monkeypatch.setattr(GPUSwarmSpawner, "swarm_gpus", failing)
    user = SimpleNamespace(name="form-user", groups=[], url="/user/form-user/")
    spawner = GPUSwarmSpawner(config=Config(), user=user)
    with pytest.raises(WorkspaceError) as refused:
        await spawner.gpu_availability()
    assert refused.value.status_code == 503
    assert case["says"] in refused.value.jupyterhub_message


CHOICES = parse_profiles(
    [
        {"slug": "cpu", "display_name": "CPU"},
        {
            "slug": "gpu-1",
            "display_name": "1 GPU",
            "gpus": 1,
            "options": {
                "image": {
                    "display_name": "Framework",
                    "choices": {
                        "pytorch": {"display_name": "PyTorch", "value": "site/pt:2"},
                        "tf": {
                            "display_name": "TensorFlow",
                            "value": "site/tf:2",
                            "groups": ["staff"],
                        },
                    },
                },
                "mem_limit": {"choices": ["16g", "32g"], "default": "16g"},
            },
        },
    ],
    total_gpus=8,
)


def _selects(page: Elements) -> dict[str, list[dict[str, str | None]]]:
    """Each <select> by name, with the attributes of its <option>s in order."""
    selects: dict[str, list[dict[str, str | None]]] = {}
    current = ""
    for tag, attributes in page.tags:
        if tag == "select":
            current = attributes["name"] or ""
            selects[current] = []
        elif tag == "option" and current:
            selects[current].append(attributes)
    return selects


@pytest.mark.parametrize(
    ("groups", "chosen", "selected_image", "tf_disabled"),
    [
        ([], {}, "pytorch", True),  # the first open choice: no default given
        (["staff"], {"image": "tf"}, "tf", False),  # the user's last choice
        ([], {"image": "tf"}, "pytorch", True),  # last choice closed to them now
        (["staff"], {"image": "gone"}, "pytorch", False),  # last choice removed
    ],
)
def test_options_render_under_their_profile(
    groups: list[str], chosen: dict[str, str], selected_image: str, tf_disabled: bool
) -> None:
    html = render_form(
        CHOICES,
        selected="gpu-1",
        chosen=chosen,
        user_groups=groups,
        gpu_summary=SUMMARY,
        free_gpus=3,
        total_gpus=8,
        queue_length=0,
    )
    page = Elements()
    page.feed(html)
    selects = _selects(page)
    assert list(selects) == ["gpu-1:image", "gpu-1:mem_limit"]  # the CPU card has none
    images = {o["value"]: o for o in selects["gpu-1:image"]}
    assert [k for k, o in images.items() if "selected" in o] == [selected_image]
    assert ("disabled" in images["tf"]) is tf_disabled
    assert "TensorFlow (staff only)" in html if tf_disabled else "staff only" not in html
    memory = selects["gpu-1:mem_limit"]
    assert [o["value"] for o in memory] == ["16g", "32g"]
    assert [o["value"] for o in memory if "selected" in o] == ["16g"]
    assert "16 GiB" in html and ">Framework</label>" in html


def test_notes_about_earlier_choices_are_shown_escaped() -> None:
    page = render(CHOICES, notes=["Your last choice of image ('<b>') is no longer offered."])
    notes = [a for t, a in page.tags if t == "li" and a.get("class") == "gpuws-note"]
    assert len(notes) == 1
    html = render_form(
        CHOICES,
        selected=None,
        notes=["<b>x</b>"],
        gpu_summary=SUMMARY,
        free_gpus=3,
        total_gpus=8,
        queue_length=0,
    )
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html
