"""``python -m bench``: run the benchmarks, write bench/results/results.{json,md}.

    python -m bench                       # everything (~30 min on 2 cores)
    python -m bench --quick               # fewer rounds and sizes (~8 min)
    python -m bench --only spawn,alloc    # some sections; the others' results are kept
    python -m bench --only scale --scale-servers 10 --scale-rest-seconds 20   # a small scale run

Sections: alloc, spawn, concurrency, restart, footprint, builds, scale (150 idle servers per
hub, ~15 min). Results are written after each section, so an interrupted run keeps what it
finished.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker

from . import alloc, footprint, report, restart, scale, spawn
from .env import BENCH_LABEL, dumps, engine, ensure_network, log, machine_info, remove_labelled

SECTIONS = ("alloc", "spawn", "concurrency", "restart", "footprint", "builds", "scale")
RESULTS = Path(__file__).resolve().parent / "results"


def _plan(args: argparse.Namespace) -> dict[str, Callable[[docker.DockerClient], dict[str, Any]]]:
    quick = args.quick
    rounds = args.rounds or (5 if quick else 10)
    sizes = tuple(args.sizes) or ((10, 40) if quick else (10, 20, 40))
    return {
        "alloc": lambda c: alloc.bench_allocation(repeat=3 if quick else 7),
        "spawn": lambda c: spawn.single(c, rounds),
        "concurrency": lambda c: spawn.concurrency(
            c, sizes, variants_at=() if quick else (max(sizes),)
        ),
        "restart": lambda c: restart.hub_restart(c, servers=10 if quick else 20),
        "footprint": lambda c: {
            "idle_memory": footprint.idle_memory(c, per_kind=2 if quick else 3),
            "image_sizes": footprint.image_sizes(c),
        },
        "builds": lambda c: footprint.builds(c, cold=not quick),
        "scale": lambda c: scale.scale(
            c,
            servers=args.scale_servers or (scale.QUICK_SERVERS if quick else scale.SERVERS),
            rest_s=args.scale_rest_seconds,
            poll_interval=args.scale_poll_interval,
            poll_rounds=args.scale_poll_rounds,
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and sizes")
    parser.add_argument(
        "--only", default="", help=f"comma-separated sections ({', '.join(SECTIONS)})"
    )
    parser.add_argument("--rounds", type=int, default=0, help="single-spawn rounds (default 10)")
    parser.add_argument(
        "--sizes",
        type=lambda text: [int(n) for n in text.split(",") if n],
        default=[],
        help="users at once for the concurrency section (default 10,20,40; quick: 10,40)",
    )
    parser.add_argument(
        "--scale-servers",
        type=int,
        default=0,
        help=f"idle servers per hub in the scale section (default {scale.SERVERS}; "
        f"quick: {scale.QUICK_SERVERS})",
    )
    parser.add_argument(
        "--scale-rest-seconds",
        type=float,
        default=60.0,
        help="seconds the scale section measures each hub at rest (default 60)",
    )
    parser.add_argument(
        "--scale-poll-interval",
        type=float,
        default=10.0,
        help="poll and activity interval of both hubs in the scale section (default 10 s)",
    )
    parser.add_argument(
        "--scale-poll-rounds",
        type=int,
        default=scale.POLL_ROUNDS,
        help=f"timed poll cycles of every server per hub in the scale section "
        f"(default {scale.POLL_ROUNDS})",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or list(SECTIONS)
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.scale_servers < 0 or args.scale_rest_seconds <= 0 or args.scale_poll_interval < 1:
        parser.error(
            "--scale-servers must be 0 (the default) or more, --scale-rest-seconds more than 0 "
            "and --scale-poll-interval at least 1 (JupyterHub takes whole seconds)"
        )
    if args.scale_poll_rounds < 1:
        parser.error("--scale-poll-rounds must be at least 1")

    # `timeout`/`kill` must not leave hubs and containers behind: run the finally blocks.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    client = engine()
    ensure_network(client)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "results.json"
    results: dict[str, Any] = {}
    if args.only and json_path.exists():  # keep the sections this run does not redo
        results = json.loads(json_path.read_text())
    results.setdefault("sections", {})
    results["machine"] = machine_info(client)
    results["command"] = " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)])
    plan = _plan(args)
    started = time.perf_counter()
    try:
        for name in SECTIONS:
            if name not in chosen:
                continue
            log(f"== {name}")
            section_started = time.perf_counter()
            data = plan[name](client)
            data["timestamp"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
            data["wall_s"] = round(time.perf_counter() - section_started, 1)
            data["quick"] = args.quick
            results["sections"][name] = data
            _write(args.out, results, time.perf_counter() - started)
            log(f"== {name} done in {data['wall_s']:.0f}s")
    finally:
        remove_labelled(client, BENCH_LABEL)
    log(f"all done in {time.perf_counter() - started:.0f}s; results in {args.out}")
    print(report.render(results))
    return 0


def _write(out: Path, results: dict[str, Any], wall: float) -> None:
    results["written"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    results["wall_s_this_run"] = round(wall, 1)
    tmp = out / "results.json.tmp"
    tmp.write_text(dumps(results) + "\n")
    tmp.replace(out / "results.json")
    (out / "results.md").write_text(report.render(results))


if __name__ == "__main__":
    sys.exit(main())
