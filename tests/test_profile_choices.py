"""Choices inside profiles and DockerSpawner's ``allowed_images``, on the real engine.

What a user may pick (an image key of ``allowed_images``; a profile option's choice key, some
for groups only) runs; anything else is a 400 with a sentence and no container; a saved
choice an admin has since removed falls back to the default with a sentence; an image that
admin code (a pre-spawn hook) sets runs as set. Asserted from outside: ``docker inspect``,
the REST API's answers, the spawn form's HTML, the progress events and the hub log.
"""

from __future__ import annotations

import html
import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
from harness import Hub

pytestmark = pytest.mark.docker

GiB = 1024**3
USER_LABEL = "io.gpu-workspaces.user"


# -- helpers -------------------------------------------------------------------------------


def _inspect(hub: Hub, client: docker.DockerClient, user: str) -> tuple[str, int]:
    """The image and memory limit of ``user``'s running server, as Docker has them."""
    attrs = hub.server_container(client, user).attrs
    return attrs["Config"]["Image"], attrs["HostConfig"]["Memory"]


def _containers_of(hub: Hub, client: docker.DockerClient, user: str) -> list[str]:
    """Every container (``docker ps -a``) this hub made for ``user``."""
    return [c.name for c in hub.containers(client) if c.labels.get(USER_LABEL) == user]


def _refused(hub: Hub, client: docker.DockerClient, user: str, options: Any) -> str:
    """Start ``user``'s server with ``options``: a 400 with a sentence, nothing created."""
    r = hub.request_spawn(user, options)
    assert r.status_code == 400, f"{options}: {r.status_code} {r.text}\n{hub.log_tail()}"
    message = str(r.json()["message"])
    assert message and "Traceback" not in message and len(message) < 400, message
    assert not _containers_of(hub, client, user), f"{options} left a container"
    return message


def _xsrf(session: requests.Session, page: str) -> str:
    found = re.search(r'name="_xsrf" value="([^"]+)"', page)
    return found.group(1) if found else str(session.cookies.get("_xsrf", ""))


def _form(hub: Hub, session: requests.Session, user: str) -> str:
    page = session.get(f"{hub.url}/hub/spawn/{user}", timeout=30)
    assert page.status_code == 200, page.status_code
    return page.text


def _post_form(
    hub: Hub, session: requests.Session, user: str, fields: dict[str, str]
) -> requests.Response:
    """Submit the spawn form as a browser does (the page's _xsrf, no redirect followed)."""
    page = _form(hub, session, user)
    return session.post(
        f"{hub.url}/hub/spawn/{user}",
        data={**fields, "_xsrf": _xsrf(session, page)},
        allow_redirects=False,
        timeout=60,
    )


def _select(page: str, name: str) -> str:
    """The <select> element named ``name`` in the form, as HTML."""
    found = re.search(rf'<select[^>]*name="{re.escape(name)}"[^>]*>.*?</select>', page, re.S)
    assert found, f"no <select name={name!r}> in the form"
    return found.group(0)


def _options_block(page: str, slug: str) -> str:
    """What the form shows under the card of profile ``slug`` (its option lists)."""
    found = re.search(rf'data-options-for="{re.escape(slug)}".*?</div>', page, re.S)
    assert found, f"no options under the card of {slug!r}"
    return found.group(0)


def _write_profiles(path: Path, images: dict[str, str], *, variant: bool = True) -> Path:
    """A profile ``p`` whose image is a choice (standard: the CPU image, variant: the CUDA
    one) and whose memory limit is a choice of 1g and 2g; ``variant=False`` drops that key."""
    variant_line = f"        variant: {{display_name: CUDA, value: {images['cuda']}}}\n"
    path.write_text(
        "- slug: p\n"
        "  display_name: Choices\n"
        "  default: true\n"
        "  options:\n"
        "    image:\n"
        "      choices:\n"
        f"        standard: {{display_name: Standard, value: {images['cpu']}}}\n"
        + (variant_line if variant else "")
        + "      default: standard\n"
        "    mem_limit:\n"
        "      choices: [1g, 2g]\n"
    )
    return path


def _progress_while_pending(
    hub: Hub, user: str, timeout: float = 90
) -> Callable[[], list[dict[str, Any]]]:
    """Follow ``user``'s progress stream from a thread, opened as soon as their spawn is
    pending: the REST call that starts it only answers once the server is ready when that
    is quick, and a stream opened after that holds only the ready event. The server side
    replays every event of the spawn from its start; call the result for them."""
    events: list[dict[str, Any]] = []

    def follow() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with hub.api("GET", f"/users/{user}/server/progress", stream=True) as r:
                if r.status_code == 200:
                    events.extend(_events(r))
                    return
            time.sleep(0.05)  # 400: not starting (yet)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()

    def result() -> list[dict[str, Any]]:
        thread.join(timeout)
        return events

    return result


def _events(stream: requests.Response) -> list[dict[str, Any]]:
    """The events of a progress stream (server-sent events), until ready or failed."""
    events: list[dict[str, Any]] = []
    for line in stream.iter_lines(decode_unicode=True):
        if line and line.startswith("data:"):
            events.append(json.loads(line[5:]))
            if events[-1].get("ready") or events[-1].get("failed"):
                break
    return events


# -- tests ---------------------------------------------------------------------------------


def test_an_allowed_image_key_runs_and_others_are_a_400_with_nothing_created(
    start_hub: Callable[..., Hub],
    docker_client: docker.DockerClient,
    notebook_images: dict[str, str],
) -> None:
    images = notebook_images
    hub = start_hub(
        extra_config=(
            "c.GPUDockerSpawner.profiles = []\n"
            f"c.GPUDockerSpawner.allowed_images = {{'cpu': {images['cpu']!r}, "
            f"'cuda': {images['cuda']!r}}}\n"
        )
    )
    hub.spawn("ada", {"image": "cuda"})
    assert _inspect(hub, docker_client, "ada")[0] == images["cuda"]

    message = _refused(hub, docker_client, "bob", {"image": "busybox:latest"})
    assert "busybox:latest" in message and "cpu" in message and "cuda" in message, message
    # a value of allowed_images is not a key: users name keys, as with DockerSpawner's dict
    message = _refused(hub, docker_client, "cal", {"image": images["cuda"]})
    assert images["cuda"] in message and "choose one of" in message, message
    assert [c.labels[USER_LABEL] for c in hub.containers(docker_client)] == ["ada"]

    # a callable (DockerSpawner calls it with the spawner; a list: each image is its own key)
    called = start_hub(
        extra_config=(
            "c.GPUDockerSpawner.profiles = []\n"
            f"c.GPUDockerSpawner.allowed_images = lambda spawner: [{images['cpu']!r}]\n"
        )
    )
    called.spawn("lam", {"image": images["cpu"]})
    assert _inspect(called, docker_client, "lam")[0] == images["cpu"]
    message = _refused(called, docker_client, "lou", {"image": images["cuda"]})
    assert images["cuda"] in message, message


def test_a_choice_inside_a_profile_runs_through_the_form_and_the_rest_api(
    start_hub: Callable[..., Hub],
    docker_client: docker.DockerClient,
    notebook_images: dict[str, str],
    tmp_path: Path,
) -> None:
    images = notebook_images
    profiles = _write_profiles(tmp_path / "profiles.yaml", images)
    hub = start_hub(env={"GPUWS_PROFILES_FILE": str(profiles)})

    hub.spawn("eve", {"profile": "p", "image": "variant", "mem_limit": "2g"})
    assert _inspect(hub, docker_client, "eve") == (images["cuda"], 2 * GiB)

    browser = hub.login("fay")
    page = _form(hub, browser, "fay")
    under_card = _options_block(page, "p")
    image_list = _select(under_card, "p:image")
    assert re.findall(r'<option value="([^"]+)"', image_list) == ["standard", "variant"]
    assert re.search(r'value="standard"[^>]*selected', image_list), image_list
    assert ">Standard<" in image_list and ">CUDA<" in image_list
    memory_list = _select(under_card, "p:mem_limit")
    assert re.findall(r'<option value="([^"]+)"', memory_list) == ["1g", "2g"]

    r = _post_form(hub, browser, "fay", {"profile": "p", "p:image": "standard"})
    assert r.status_code == 302, f"{r.status_code} {r.text[:500]}"
    hub.wait_ready("fay")
    # the memory limit not sent takes its default: the first choice
    assert _inspect(hub, docker_client, "fay") == (images["cpu"], GiB)

    # the REST API takes a choice's key, never a free-form image name
    message = _refused(hub, docker_client, "gus", {"profile": "p", "image": images["cuda"]})
    assert "standard" in message and "variant" in message, message


def test_a_group_limited_choice_is_refused_for_others_on_the_form_and_the_rest_api(
    start_hub: Callable[..., Hub],
    docker_client: docker.DockerClient,
    notebook_images: dict[str, str],
    tmp_path: Path,
) -> None:
    images = notebook_images
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(
        "- slug: p\n"
        "  display_name: Choices\n"
        "  default: true\n"
        "  options:\n"
        "    image:\n"
        "      choices:\n"
        f"        standard: {{display_name: Standard, value: {images['cpu']}}}\n"
        f"        variant: {{display_name: CUDA, value: {images['cuda']}, groups: [staff]}}\n"
        "      default: standard\n"
    )
    hub = start_hub(env={"GPUWS_PROFILES_FILE": str(profiles)})
    for user in ("oli", "sam"):
        hub.ensure_user(user)
    r = hub.api("POST", "/groups/staff", json={"users": ["sam"]})
    assert r.status_code == 201, r.text

    message = _refused(hub, docker_client, "oli", {"profile": "p", "image": "variant"})
    assert "staff only" in message, message

    outsider = hub.login("oli")
    image_list = _select(_form(hub, outsider, "oli"), "p:image")
    closed = re.search(r'<option value="variant"[^>]*>[^<]*</option>', image_list)
    assert closed, image_list
    assert " disabled" in closed.group(0) and 'data-closed="staff only"' in closed.group(0)
    assert "CUDA (staff only)" in closed.group(0), closed.group(0)
    # a browser never sends a disabled choice; a hand-made POST is refused on the page
    r = _post_form(hub, outsider, "oli", {"profile": "p", "p:image": "variant"})
    assert r.status_code == 400, f"{r.status_code} {r.text[:500]}"
    assert "staff only" in html.unescape(r.text)
    assert "<select" in r.text, "the form is not shown again with the error"
    assert not _containers_of(hub, docker_client, "oli")

    member = hub.login("sam")
    image_list = _select(_form(hub, member, "sam"), "p:image")
    assert "staff only" not in image_list and " disabled" not in image_list, image_list
    hub.spawn("sam", {"profile": "p", "image": "variant"})
    assert _inspect(hub, docker_client, "sam")[0] == images["cuda"]
    assert not _containers_of(hub, docker_client, "oli")


def test_a_saved_choice_that_was_removed_falls_back_with_a_sentence(
    start_hub: Callable[..., Hub],
    docker_client: docker.DockerClient,
    notebook_images: dict[str, str],
    tmp_path: Path,
) -> None:
    images = notebook_images
    profiles = _write_profiles(tmp_path / "profiles.yaml", images)
    hub = start_hub(env={"GPUWS_PROFILES_FILE": str(profiles)})
    hub.spawn("ria", {"profile": "p", "image": "variant"})
    assert _inspect(hub, docker_client, "ria")[0] == images["cuda"]
    hub.stop_server("ria")

    _write_profiles(profiles, images, variant=False)
    hub.restart()

    # the form says the last choice is gone before anything starts
    page = html.unescape(_form(hub, hub.login("ria"), "ria"))
    notes = re.findall(r'<li class="gpuws-note">(.*?)</li>', page, re.S)
    assert any("'variant'" in n and "no longer offered" in n for n in notes), notes

    # a start with no options reuses the saved ones: the default choice runs, with a sentence
    follow = _progress_while_pending(hub, "ria")
    r = hub.request_spawn("ria")  # {}: JupyterHub reuses the saved options
    assert r.status_code in (201, 202), f"{r.status_code} {r.text}\n{hub.log_tail()}"
    hub.wait_ready("ria")
    assert _inspect(hub, docker_client, "ria")[0] == images["cpu"]
    events = follow()
    messages = [str(e.get("message", "")) for e in events]
    # the progress page shows it (a spawn takes seconds; the stream opens within 50 ms)
    assert any("'variant'" in m and "no longer offered" in m for m in messages), messages
    logged = [
        line
        for line in hub.log_path.read_text(errors="replace").splitlines()
        if "'variant'" in line and "no longer offered" in line
    ]
    assert logged, hub.log_tail()
    assert "'standard' is used instead" in logged[-1], logged[-1]

    # the same key sent now is refused, and nothing starts
    hub.stop_server("ria")
    r = hub.request_spawn("ria", {"profile": "p", "image": "variant"})
    assert r.status_code == 400, f"{r.status_code} {r.text}"
    assert "variant" in r.json()["message"] and "standard" in r.json()["message"], r.text
    assert not hub.containers(docker_client, status="running")


def test_a_hook_set_image_runs(
    start_hub: Callable[..., Hub],
    docker_client: docker.DockerClient,
    notebook_images: dict[str, str],
    tmp_path: Path,
) -> None:
    images = notebook_images
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(
        f"- {{slug: cpu, display_name: CPU, default: true, image: {images['cpu']}}}\n"
    )
    hub = start_hub(
        env={"GPUWS_PROFILES_FILE": str(profiles)},
        extra_config=(
            "def _per_user_image(spawner):\n"
            "    if spawner.user.name == 'hana':\n"
            f"        spawner.image = {images['cuda']!r}\n"
            "c.GPUDockerSpawner.pre_spawn_hook = _per_user_image\n"
        ),
    )
    hub.spawn("hana", {"profile": "cpu"})
    hub.spawn("ivo", {"profile": "cpu"})
    assert _inspect(hub, docker_client, "hana")[0] == images["cuda"]
    assert _inspect(hub, docker_client, "ivo")[0] == images["cpu"]
