"""Carrying the images to a host with no network: `make bundle` writes them into one archive,
`make up BUNDLE=…` checks and loads it, then builds nothing (docs/deploy.md).

The stack's images are removed from the tests' private engine between the two, and are back
at the end whatever happens (the rest of the suite uses them). The figures (archive size,
seconds to save and to load) go to tests/artifacts/bundle-figures.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
import requests
from harness import REPO, versions
from test_compose import MAKE_TIMEOUT, Stack

pytestmark = [pytest.mark.docker, pytest.mark.compose]

# What `make bundle` writes into its folder (scripts/bundle.sh).
ARCHIVE, VERSIONS, LIST, SUMS = "images.tar.gz", "versions.env", "images.txt", "SHA256SUMS"


@dataclass
class Bundle:
    path: Path
    images: dict[str, str]  # name -> image id, as images.txt lists them
    ready_s: int  # scripts/build-images.sh inside make bundle
    save_s: int  # docker save | gzip

    @property
    def archive(self) -> Path:
        return self.path / ARCHIVE


def run_make(stack: Stack, *args: str) -> tuple[int, str, float]:
    started = time.monotonic()
    result = subprocess.run(
        ["make", "-C", str(REPO), *args],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=MAKE_TIMEOUT,
    )
    return result.returncode, result.stdout + result.stderr, time.monotonic() - started


def image_id(client: docker.DockerClient, name: str) -> str | None:
    try:
        return str(client.images.get(name).id)
    except docker.errors.ImageNotFound:
        return None


def stack_image_names() -> set[str]:
    """Every image the stack needs: the *_IMAGE names of images/versions.env."""
    return {v for k, v in versions().items() if k.endswith("_IMAGE")}


@pytest.fixture(scope="module")
def bundle(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Bundle]:
    """`make bundle` once for the module; its 1 GB are removed at the end."""
    path = tmp_path_factory.mktemp("bundle") / "offline.bundle"
    code, output, _ = run_make(Stack(docker_client), "bundle", f"BUNDLE_OUT={path}")
    assert code == 0, output[-4000:]
    assert f"Bundle: {path}" in output, output
    said = re.search(
        r"images ready in (\d+) s \(scripts/build-images.sh\), saved in (\d+) s", output
    )
    assert said, output
    # One archive, its checksums, the versions file; every image the stack needs is in it.
    assert sorted(p.name for p in path.iterdir()) == sorted([ARCHIVE, VERSIONS, LIST, SUMS])
    assert (path / VERSIONS).read_bytes() == (REPO / "images" / "versions.env").read_bytes()
    images = dict(
        line.split() for line in (path / LIST).read_text().splitlines() if not line.startswith("#")
    )
    assert stack_image_names() <= images.keys(), images
    for name, id_ in images.items():
        assert image_id(docker_client, name) == id_, name
    size = (path / ARCHIVE).stat().st_size
    print(f"make bundle: {len(images)} images, {size} bytes, ready {said[1]} s, saved {said[2]} s")
    yield Bundle(path=path, images=images, ready_s=int(said[1]), save_s=int(said[2]))
    shutil.rmtree(path)


@pytest.fixture
def images_back(
    bundle: Bundle, docker_client: docker.DockerClient
) -> Iterator[dict[str, list[str]]]:
    """The tags of the bundle's images (other tests add their own); whatever the test did,
    the images and all those tags are on the engine again afterwards."""
    tags = {id_: list(docker_client.images.get(id_).tags) for id_ in set(bundle.images.values())}
    yield tags
    if any(image_id(docker_client, name) is None for name in bundle.images):
        subprocess.run(["docker", "load", "-i", str(bundle.archive)], check=True, timeout=900)
    for id_, names in tags.items():
        for name in names:
            if image_id(docker_client, name) != id_:
                repository, _, tag = name.rpartition(":")
                docker_client.images.get(id_).tag(repository, tag)


@pytest.fixture
def stack(docker_client: docker.DockerClient) -> Iterator[Callable[[], Stack]]:
    stacks: list[Stack] = []

    def make_stack(**extra_env: str) -> Stack:
        s = Stack(docker_client, extra_env=extra_env)
        stacks.append(s)
        return s

    yield make_stack
    for s in stacks:
        s.teardown()
        assert not docker_client.volumes.list(filters={"name": s.name})


def test_make_up_from_a_bundle_loads_every_image_and_builds_nothing(
    bundle: Bundle,
    images_back: dict[str, list[str]],
    stack: Callable[..., Stack],
    docker_client: docker.DockerClient,
    artifacts_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = set(bundle.images.values())
    users = [c.name for c in docker_client.containers.list(all=True) if c.attrs["Image"] in ids]
    assert not users, f"containers use the stack's images, which this test removes: {users}"
    # The offline host: none of the images, under any tag.
    for names in images_back.values():
        for name in names:
            docker_client.images.remove(name)
    assert all(image_id(docker_client, name) is None for name in bundle.images)

    # ... and no network: without the build proxy this namespace has no way out. A fresh
    # checkout there has no wheelhouse (build-images.sh's downloads on the host) either.
    monkeypatch.delenv("GPUWS_BUILD_PROXY", raising=False)
    (tmp_path / "no-wheelhouse").mkdir()
    s = stack(GPUWS_WHEELHOUSE=str(tmp_path / "no-wheelhouse"))
    output, load_up_s = s.make("up", f"BUNDLE={bundle.path}")
    assert f"GPU workspaces are up:  http://127.0.0.1:{s.port}/" in output
    loaded = re.search(r"loaded (\d+) images from .* in (\d+) s", output)
    assert loaded and int(loaded.group(1)) == len(bundle.images), output
    # Each image is the one saved, and build-images.sh reused every one of them.
    assert {name: image_id(docker_client, name) for name in bundle.images} == bundle.images
    reports = dict(re.findall(r"^\S+\s+(\S+/\S+)\s+(built|reused)\s", output, re.M))
    assert reports == dict.fromkeys(
        stack_image_names() - {versions()["BASE_LOCAL_IMAGE"]}, "reused"
    )
    assert requests.get(f"{s.url}/hub/health", timeout=30).status_code == 200

    down, _ = s.make("down")
    assert not docker_client.containers.list(
        all=True, filters={"label": [f"com.docker.compose.project={s.name}"]}
    ), down
    figures = {
        "images": len(bundle.images),
        "archive_bytes": bundle.archive.stat().st_size,
        "make_bundle_images_ready_s": bundle.ready_s,
        "make_bundle_save_s": bundle.save_s,
        "load_s": int(loaded.group(2)),
        "make_up_with_load_s": round(load_up_s, 1),
    }
    (artifacts_dir / "bundle-figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"bundle figures: {figures}")


def _damaged(bundle: Bundle, copy: Path) -> None:
    (copy / ARCHIVE).unlink()
    shutil.copy(bundle.archive, copy / ARCHIVE)
    with (copy / ARCHIVE).open("r+b") as f:
        f.seek(bundle.archive.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def _other_versions(bundle: Bundle, copy: Path) -> None:
    name = versions()["NOTEBOOK_CPU_IMAGE"]
    text = (copy / VERSIONS).read_text().replace(f"={name}\n", "=gpu-workspaces/other:0.1\n")
    (copy / VERSIONS).write_text(text)
    sums = [
        f"{hashlib.sha256((copy / VERSIONS).read_bytes()).hexdigest()}  {VERSIONS}"
        if line.endswith(f"  {VERSIONS}")
        else line
        for line in (copy / SUMS).read_text().splitlines()
    ]
    (copy / SUMS).write_text("\n".join(sums) + "\n")


def _without(name: str) -> Callable[[Bundle, Path], None]:
    return lambda bundle, copy: (copy / name).unlink()


REFUSALS = {
    "damaged archive": (
        _damaged,
        r"images\.tar\.gz in the bundle \S+ does not match its "
        r"checksum in SHA256SUMS \(a damaged or incomplete copy\)",
    ),
    "no archive": (_without(ARCHIVE), r"the bundle \S+ has no images\.tar\.gz: copy the whole"),
    "no checksums": (_without(SUMS), r"the bundle \S+ has no SHA256SUMS"),
    "other image names": (
        _other_versions,
        r"the bundle holds NOTEBOOK_CPU_IMAGE=gpu-workspaces/other:0\.1, this checkout needs "
        r"NOTEBOOK_CPU_IMAGE=gpu-workspaces/notebook-cpu:\S+: make the bundle from the same",
    ),
}


@pytest.mark.parametrize("case", [*REFUSALS, "no such folder"])
def test_make_up_refuses_a_bad_bundle_with_a_sentence_and_loads_nothing(
    case: str,
    bundle: Bundle,
    stack: Callable[..., Stack],
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    copy = tmp_path / "copy.bundle"
    if case == "no such folder":
        expected = rf"no bundle at {re.escape(str(copy))} \(make bundle writes one"
    else:
        copy.mkdir()
        os.link(bundle.archive, copy / ARCHIVE)  # linked, not copied (hundreds of MB)
        for name in (VERSIONS, LIST, SUMS):
            shutil.copy(bundle.path / name, copy / name)
        prepare, expected = REFUSALS[case]
        prepare(bundle, copy)

    s = stack()
    since = int(time.time())
    try:
        code, output, _ = run_make(s, "up", f"BUNDLE={copy}")
    finally:
        shutil.rmtree(copy, ignore_errors=True)  # the damaged copy is 1 GB
    until = int(time.time()) + 1
    assert code != 0 and "Error 1" in output, output  # make says: up.sh exited 1
    assert re.search(rf"bundle\.sh: error: {expected}", output), output
    assert "Traceback" not in output
    if case != "no such folder":
        assert "nothing was loaded" in output
    events = docker_client.events(since=since, until=until, filters={"type": "image"}, decode=True)
    assert [e for e in events if e.get("Action") in ("load", "tag")] == []
    assert not docker_client.containers.list(
        all=True, filters={"label": [f"com.docker.compose.project={s.name}"]}
    )
