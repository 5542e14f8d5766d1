"""Section 5: memory of idle servers, image sizes, and cold/warm image builds (every image, by
scripts/build-images.sh, from the filled wheelhouse and from an empty one).

Idle memory is the container's memory cgroup ``usage`` less inactive page cache (what
``docker stats`` shows) and its anonymous memory alone, sampled after the servers sat idle.
Contenders, all the same image: the floor (plain ``jupyter server``), our spawner, stock
DockerSpawner, and the floor and our spawner with ``GPUWS_LAZY_IMPORTS=0`` (the image's
import deferral off: how the image behaved before it).
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import tempfile
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
    v = versions()
    names = [*images().values(), v["DATASCIENCE_CPU_IMAGE"], v["DATASCIENCE_CUDA_IMAGE"]]
    sizes = {}
    for name in [*names, v["BASE_LOCAL_IMAGE"]]:
        try:
            sizes[name] = round(client.images.get(name).attrs["Size"] / 1e6, 1)
        except docker.errors.ImageNotFound:
            continue
    return sizes


# -- builds -------------------------------------------------------------------------------

# Every image scripts/build-images.sh builds, by the versions.env name it is built under.
BUILT = {
    "notebook-cpu": "NOTEBOOK_CPU_IMAGE",
    "notebook-cuda": "NOTEBOOK_CUDA_IMAGE",
    "datascience-cpu": "DATASCIENCE_CPU_IMAGE",
    "datascience-cuda": "DATASCIENCE_CUDA_IMAGE",
    "hub": "HUB_IMAGE",
}
REPORT_LINE = re.compile(r"^(\S+)\s+\S+\s+(built|reused)\s+(\d+)s", re.M)


def _build_images(env: dict[str, str], *args: str) -> tuple[dict[str, int], str]:
    """scripts/build-images.sh's own per-image seconds (its report lines), and its stderr."""
    done = run_quiet(
        ["bash", str(REPO / "scripts" / "build-images.sh"), *args], env={**os.environ, **env}
    )
    seconds = {name: int(s) for name, _, s in REPORT_LINE.findall(done.stdout)}
    return seconds, "" if done.returncode == 0 else done.stderr[-500:]


def builds(client: docker.DockerClient, cold: bool = True) -> dict[str, Any]:
    """Cold (``--no-cache``, base present, wheelhouse filled) and warm (layers cached) builds
    of every image, by scripts/build-images.sh itself, and the wheelhouse's fill from nothing.

    Built under bench-only tags, so the images in use are never replaced; also times
    ``scripts/build-images.sh`` finding every image up to date.
    """
    tags = {key: f"gpuws-bench/{name}:build" for name, key in BUILT.items()}
    result: dict[str, Any] = {name: {} for name in BUILT}
    try:
        if cold:
            with tempfile.TemporaryDirectory(prefix="gpuws-bench-wheelhouse-") as empty:
                started = time.perf_counter()
                seconds, error = _build_images(
                    {**tags, "GPUWS_WHEELHOUSE": empty, "GPUWS_BUILD_NO_CACHE": "1"}, "--force"
                )
                result["all_cold_with_an_empty_wheelhouse_s"] = round(
                    time.perf_counter() - started, 1
                )
            for name in BUILT:  # an image's seconds include filling its wheelhouse folder
                result[name]["cold_with_fill_s"] = seconds.get(name)
            if error:
                result["cold_with_fill_error"] = error
            seconds, error = _build_images({**tags, "GPUWS_BUILD_NO_CACHE": "1"}, "--force")
            for name in BUILT:
                result[name]["cold_s"] = seconds.get(name)
            if error:
                result["cold_error"] = error
        seconds, error = _build_images(tags, "--force")
        for name in BUILT:
            result[name]["warm_s"] = seconds.get(name)
        if error:
            result["warm_error"] = error
        started = time.perf_counter()
        seconds, error = _build_images({})
        result["build_images_sh_up_to_date_s"] = round(time.perf_counter() - started, 1)
        for name in BUILT:
            result[name]["build_images_sh_up_to_date_s"] = seconds.get(name)
    finally:
        for tag in tags.values():
            subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True)
    log(f"builds: {result}")
    return result


__all__ = ["OURS", "STOCK", "builds", "idle_memory", "image_sizes"]
