"""What every section shares: the engine, the images, machine facts, statistics, cleanup."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import requests
from harness import private_engine_client, versions

REPO = Path(__file__).resolve().parents[1]

BENCH_NETWORK = "gpuws-bench"
# On every container, volume and image the bench makes itself (floors, probes), for cleanup.
BENCH_LABEL = "io.gpu-workspaces.bench"
POLL_INTERVAL = 0.025  # seconds between readiness checks, the same for every contender


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def images() -> dict[str, str]:
    v = versions()
    return {"cpu": v["NOTEBOOK_CPU_IMAGE"], "cuda": v["NOTEBOOK_CUDA_IMAGE"], "hub": v["HUB_IMAGE"]}


def engine() -> docker.DockerClient:
    return private_engine_client()


# -- statistics ---------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100), as numpy's default."""
    data = sorted(values)
    if not data:
        return math.nan
    k = (len(data) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def summarize(values: Iterable[float]) -> dict[str, float | int]:
    data = [float(v) for v in values]
    if not data:
        return {"n": 0}
    return {
        "n": len(data),
        "median": statistics.median(data),
        "p95": percentile(data, 95),
        "min": min(data),
        "max": max(data),
        "mean": statistics.fmean(data),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


# -- machine facts --------------------------------------------------------------------------


def machine_info(client: docker.DockerClient) -> dict[str, Any]:
    info = client.info()
    mem_kib = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    import dockerspawner
    import jupyterhub

    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "engine": client.version().get("Version"),
        "cgroup": "v2" if info.get("CgroupVersion") == "2" else "v1",
        "jupyterhub": jupyterhub.__version__,
        "dockerspawner": dockerspawner.__version__,
        "notebook_image": images()["cpu"],
        "other_containers_at_start": other_containers(client),
    }


def other_containers(client: docker.DockerClient) -> list[str]:
    """Running containers the bench did not start: load that skews timings."""
    return sorted(c.name for c in client.containers.list() if BENCH_LABEL not in c.labels)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- the bench network, and what to remove afterwards ----------------------------------------


def ensure_network(client: docker.DockerClient) -> None:
    try:
        client.networks.get(BENCH_NETWORK)
    except docker.errors.NotFound:
        client.networks.create(BENCH_NETWORK, driver="bridge", labels={BENCH_LABEL: "1"})


def remove_labelled(client: docker.DockerClient, label: str) -> None:
    for container in client.containers.list(all=True, filters={"label": label}):
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)
    for volume in client.volumes.list(filters={"label": label}):
        with contextlib.suppress(docker.errors.APIError):
            volume.remove(force=True)


def remove_volumes_named(client: docker.DockerClient, prefix: str) -> None:
    for volume in client.volumes.list(filters={"name": prefix}):
        if volume.name.startswith(prefix):
            with contextlib.suppress(docker.errors.APIError):
                volume.remove(force=True)


# -- memory -----------------------------------------------------------------------------


def process_tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants (the hub and its proxy)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    total_kib = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
    return total_kib / 1024


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def container_cpu_seconds(client: docker.DockerClient, container_id: str) -> float | None:
    """CPU time (user + system) all of a container's processes have used so far."""
    stats = client.api.stats(container_id, stream=False, one_shot=True)
    total = ((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage")
    return None if total is None else total / 1e9


def container_memory_mib(client: docker.DockerClient, container_id: str) -> dict[str, float]:
    """A container's memory as its cgroup counts it.

    ``anon``: anonymous memory (heap, stacks: what the processes themselves use; cgroup v1
    ``total_rss``, v2 ``anon``). ``usage``: what ``docker stats`` shows (usage less inactive
    page cache).
    """
    stats = client.api.stats(container_id, stream=False, one_shot=True)
    mem = stats.get("memory_stats") or {}
    detail = mem.get("stats") or {}
    anon = detail.get("total_rss", detail.get("anon", 0))
    inactive = detail.get("total_inactive_file", detail.get("inactive_file", 0))
    mib = 1024 * 1024
    return {"anon": anon / mib, "usage": (mem.get("usage", 0) - inactive) / mib}


# -- readiness ----------------------------------------------------------------------------


def answers(url: str, session: requests.Session | None = None, timeout: float = 2.0) -> bool:
    """Whether a Jupyter server (not the hub's 'not running' page) answers at ``url``."""
    try:
        r = (session or requests).get(url, timeout=timeout, allow_redirects=False)
    except requests.RequestException:
        return False
    if r.status_code != 200:
        return False
    with contextlib.suppress(ValueError):
        return "version" in r.json()
    return False


@dataclass
class Stopwatch:
    started: float = 0.0

    def __post_init__(self) -> None:
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


@contextlib.contextmanager
def timed(label: str) -> Iterator[Stopwatch]:
    watch = Stopwatch()
    yield watch
    log(f"{label}: {watch.elapsed():.1f}s")


def run_quiet(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str)
