"""Sections 1 and 2: one spawn at a time, and many at once.

1. ``spawn``: one user, ``rounds`` times (after one unmeasured warm-up each), contenders
   interleaved round by round so that drifting load hits all of them alike.
2. ``concurrency``: 10, 20 and 40 users at once, for the floors, our spawner with the CPU and
   the 1-GPU profile (static inventory of fake GPUs) and stock DockerSpawner; at the largest
   size also our spawner with one Docker thread (stock's setting) and with every server
   started at once (``start_concurrency = 0``), to see what each is worth.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import docker

from .env import (
    container_memory_mib,
    load_average,
    log,
    process_tree_rss_mib,
    ratio,
    summarize,
)
from .hubs import (
    FLOOR,
    FLOOR_LAZY_OFF,
    FLOOR_SU,
    OURS,
    OURS_1THREAD,
    OURS_ALL_AT_ONCE,
    STOCK,
    BenchHub,
    Floor,
    Outcome,
    contenders,
)

OURS_GPU = "ours-gpu"
OPTIONS = {
    OURS: {"profile": "cpu"},
    OURS_GPU: {"profile": "gpu-1"},
    OURS_1THREAD: {"profile": "cpu"},
    OURS_ALL_AT_ONCE: {"profile": "cpu"},
}
SETTLE = 2.0  # seconds of quiet between runs (container removal finishes in the background)


def _start(
    client: docker.DockerClient, things: dict[str, Any], kind: str, names: Sequence[str]
) -> list[Outcome]:
    if kind in (FLOOR, FLOOR_SU, FLOOR_LAZY_OFF):
        floor: Floor = things[kind]
        return floor.start_many(client, names)
    hub: BenchHub = things[OURS if kind == OURS_GPU else kind]
    return hub.spawn_many(names, OPTIONS.get(kind))


def _stop(
    client: docker.DockerClient, things: dict[str, Any], kind: str, names: Sequence[str]
) -> None:
    if kind in (FLOOR, FLOOR_SU, FLOOR_LAZY_OFF):
        things[kind].stop_many(client, names)
    else:
        things[OURS if kind == OURS_GPU else kind].stop_many(names)
    time.sleep(SETTLE + 0.1 * len(names))


PAIRS = (
    (OURS, FLOOR_SU),
    (STOCK, FLOOR_SU),
    (OURS, FLOOR),
    (STOCK, FLOOR),
    (OURS, STOCK),
    (FLOOR_LAZY_OFF, FLOOR),  # what the image's lazy imports save at every server start
)


def single(client: docker.DockerClient, rounds: int) -> dict[str, Any]:
    """One user's spawn, ``rounds`` times per contender."""
    kinds = [OURS, STOCK, FLOOR_SU, FLOOR, FLOOR_LAZY_OFF]
    per_round: list[dict[str, float]] = []
    hub_cpu: dict[str, list[float]] = {OURS: [], STOCK: []}
    server_cpu: dict[str, list[float]] = {FLOOR_SU: [], FLOOR: [], FLOOR_LAZY_OFF: []}
    failures: dict[str, list[str]] = {k: [] for k in kinds}
    name = "solo"
    with contenders(client, *kinds) as things:
        for kind in kinds:  # warm-up: volumes, page cache, the hubs' first-spawn work
            _start(client, things, kind, [name])
            _stop(client, things, kind, [name])
        for r in range(rounds):
            order = kinds[r % len(kinds) :] + kinds[: r % len(kinds)]
            this_round: dict[str, float] = {}
            for kind in order:
                (outcome,) = _start(client, things, kind, [name])
                if outcome.seconds is not None:
                    this_round[kind] = outcome.seconds
                else:
                    failures[kind].append(outcome.error or "?")
                if outcome.hub_cpu_s is not None:
                    hub_cpu[kind].append(outcome.hub_cpu_s)
                if outcome.server_cpu_s is not None:
                    server_cpu[kind].append(outcome.server_cpu_s)
                _stop(client, things, kind, [name])
            per_round.append(this_round)
            log(
                f"round {r + 1}/{rounds}: "
                + ", ".join(f"{k} {v:.2f}s" for k, v in sorted(this_round.items()))
            )
    times = {k: [r[k] for r in per_round if k in r] for k in kinds}
    stats = {k: summarize(v) for k, v in times.items()}
    med = {k: stats[k].get("median") for k in kinds}
    paired = {
        f"{a}/{b}": summarize([r[a] / r[b] for r in per_round if a in r and b in r]).get("median")
        for a, b in PAIRS
    }
    return {
        "rounds": rounds,
        "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "stats": stats,
        "hub_cpu_s_per_spawn": {k: summarize(v).get("median") for k, v in hub_cpu.items()},
        # CPU a server itself burns from start to first answer: what bounds many at once
        "server_cpu_s_per_start": {k: summarize(v).get("median") for k, v in server_cpu.items()},
        "failures": failures,
        # ratio of the medians, and the median of each round's ratio (contenders run
        # back to back within a round, so drifting load cancels out better)
        "ratios": {f"{a}/{b}": ratio(med[a], med[b]) for a, b in PAIRS},
        "paired_ratios": paired,
    }


def _footprint(client: docker.DockerClient, things: dict[str, Any], kind: str) -> dict[str, Any]:
    """Memory with every server up: the hub (+ its proxy) and each container."""
    if kind in (FLOOR, FLOOR_SU):
        ids = things[kind].container_ids(client)
        hub_mib = None
    else:
        hub: BenchHub = things[OURS if kind == OURS_GPU else kind]
        ids = hub.container_ids(client)
        hub_mib = process_tree_rss_mib(hub.hub_pid())
    per_container = [container_memory_mib(client, i)["usage"] for i in ids]
    return {
        "hub_and_proxy_rss_mib": hub_mib,
        "containers": len(ids),
        "container_usage_mib": summarize(per_container),
    }


VARIANTS = (OURS_ALL_AT_ONCE, OURS_1THREAD)


def concurrency(
    client: docker.DockerClient, sizes: Sequence[int], variants_at: Sequence[int] = ()
) -> dict[str, Any]:
    """``n`` users at once for each size: time to ready of each, failures, footprint."""
    hubs = [OURS, STOCK] + (list(VARIANTS) if variants_at else [])
    runs: dict[str, dict[str, Any]] = {}
    with contenders(client, *hubs, FLOOR_SU, FLOOR) as things:
        idle_hub = {k: process_tree_rss_mib(things[k].hub_pid()) for k in hubs if k in things}
        for index, n in enumerate(sizes):
            names = [f"u{n}x{i:02d}" for i in range(n)]
            # a different order at each size, so no contender always follows the same one
            base = [FLOOR_SU, FLOOR, OURS, STOCK, OURS_GPU]
            kinds = base[index % len(base) :] + base[: index % len(base)]
            if n in variants_at:
                kinds += VARIANTS
            for kind in kinds:
                load = load_average()
                started = time.perf_counter()
                outcomes = _start(client, things, kind, names)
                wall = time.perf_counter() - started
                ok = [o.seconds for o in outcomes if o.seconds is not None]
                errors = [f"{o.name}: {o.error}" for o in outcomes if o.error]
                entry: dict[str, Any] = {
                    "n": n,
                    "stats": summarize(ok),
                    "failures": len(errors),
                    "errors": errors[:5],
                    "wall_s": round(wall, 2),
                    "hub_cpu_s": None
                    if outcomes[0].hub_cpu_s is None
                    else round(outcomes[0].hub_cpu_s, 2),
                    "load_before": load,
                }
                if n == max(sizes):
                    entry["footprint"] = _footprint(client, things, kind)
                runs[f"{kind}@{n}"] = entry
                stats = entry["stats"]
                log(
                    f"{kind} x{n}: p50 {stats.get('median', float('nan')):.2f}s "
                    f"p95 {stats.get('p95', float('nan')):.2f}s "
                    f"max {stats.get('max', float('nan')):.2f}s, {len(errors)} failed"
                )
                _stop(client, things, kind, names)
    ratios: dict[str, Any] = {}
    for n in sizes:
        for floor_kind in (FLOOR_SU, FLOOR):
            floor = runs[f"{floor_kind}@{n}"]["stats"].get("median")
            for kind in (OURS, STOCK, OURS_GPU, *VARIANTS):
                key = f"{kind}@{n}"
                if key in runs:
                    ratios[f"{key} p50/{floor_kind} p50"] = ratio(
                        runs[key]["stats"].get("median"), floor
                    )
    return {"sizes": list(sizes), "runs": runs, "ratios": ratios, "idle_hub_rss_mib": idle_hub}
