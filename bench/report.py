"""results.json → results.md: the headline against the targets, then one table per section."""

from __future__ import annotations

from typing import Any

TARGETS = {
    "single_ours_floor": 1.15,
    "ten_p50_ours_floor": 1.2,
    "idle_over_floor_mib": 10.0,
    "forty_p95_over_single": 3.0,
}


def _f(value: Any, digits: int = 2, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def _met(value: float | None, limit: float) -> str:
    if value is None:
        return "not measured"
    return "met" if value <= limit else "**missed**"


def _row(figure: str, value: Any, target: str = "", status: str = "") -> dict[str, Any]:
    return {"figure": figure, "value": value, "target": target, "status": status}


def headline(sections: dict[str, Any], nproc: int | None = None) -> list[dict[str, Any]]:
    """The figures the issue sets targets for, each with its target and whether it is met.

    Spawn targets are taken against the floor that runs the image's own command
    (``jupyterhub-singleuser`` under a plain ``docker run``): what the spawner and the hub add.
    One spawn compares per round (contenders run back to back, seconds apart), which cancels
    the load that drifts over a run on a shared machine; the ratio of medians is shown too.
    The ratios to plain ``jupyter server`` are shown too; the difference between the two
    floors is jupyterhub-singleuser's own start-up, the same under any spawner.
    """
    rows: list[dict[str, Any]] = []
    spawn = sections.get("spawn", {})
    single_median = None
    if spawn:
        r, paired = spawn["ratios"], spawn.get("paired_ratios", {})
        single_median = spawn["stats"]["ours"].get("median")
        limit = TARGETS["single_ours_floor"]
        value = paired.get("ours/floor-singleuser")
        rows.append(
            _row(
                "one spawn: ours / floor (image's own command), median of per-round ratios",
                value,
                f"≤ {limit}",
                _met(value, limit),
            )
        )
        rows.append(_row("one spawn: same, ratio of the medians", r.get("ours/floor-singleuser")))
        rows.append(
            _row(
                "one spawn: ours / floor (plain jupyter server), median of per-round ratios",
                paired.get("ours/floor"),
            )
        )
        rows.append(
            _row(
                "one spawn: median stock / floor (image's own command)",
                r.get("stock/floor-singleuser"),
                "(stock/floor ~2.5 in the issue)",
            )
        )
        rows.append(_row("one spawn: median ours / stock", r["ours/stock"]))
        rows.append(_row("one spawn: median ours (s)", single_median))
    conc = sections.get("concurrency", {})
    if conc:
        small = min(conc["sizes"])
        limit = TARGETS["ten_p50_ours_floor"]
        value = conc["ratios"].get(f"ours@{small} p50/floor-singleuser p50")
        rows.append(
            _row(
                f"{small} at once: p50 ours / floor (image's own command)",
                value,
                f"≤ {limit}",
                _met(value, limit),
            )
        )
        rows.append(
            _row(
                f"{small} at once: p50 ours / floor (plain jupyter server)",
                conc["ratios"].get(f"ours@{small} p50/floor p50"),
            )
        )
        rows.append(
            _row(
                f"{small} at once: p50 stock / floor (image's own command)",
                conc["ratios"].get(f"stock@{small} p50/floor-singleuser p50"),
                "(12.8/7.9 = 1.6 in the issue)",
            )
        )
        big = max(conc["sizes"])
        for kind, label in (("ours", "CPU"), ("ours-gpu", "1 GPU each")):
            run = conc["runs"].get(f"{kind}@{big}")
            if not run:
                continue
            rows.append(
                _row(
                    f"{big} at once ({label}): failures",
                    run["failures"],
                    "0",
                    "met" if run["failures"] == 0 else "**missed**",
                )
            )
            p95 = run["stats"].get("p95")
            rel = None if single_median is None or p95 is None else p95 / single_median
            limit = TARGETS["forty_p95_over_single"]
            rows.append(
                _row(
                    f"{big} at once ({label}): p95 / one-spawn median",
                    rel,
                    f"≤ {limit}",
                    _met(rel, limit),
                )
            )
        cpu = spawn.get("server_cpu_s_per_start", {}).get("floor-singleuser") if spawn else None
        if cpu and nproc and single_median:
            # Every server burns `cpu` seconds before it answers; with `nproc` CPUs the
            # server at the 95th percentile cannot answer before 95 % of that work is done.
            bound = 0.95 * big * cpu / nproc
            rows.append(
                _row(
                    f"{big} at once: least possible p95 on {nproc} CPUs / one-spawn median",
                    bound / single_median,
                    f"(0.95 x {big} x {cpu:.2f} CPU-s per server start / {nproc} CPUs "
                    f"= {bound:.1f} s)",
                )
            )
        floor_run = conc["runs"].get(f"floor@{big}", {})
        if floor_run and single_median:
            rows.append(
                _row(
                    f"{big} at once, floor (jupyter server): p95 / one-spawn median of ours",
                    floor_run["stats"].get("p95", 0) / single_median,
                    "(what the raw engine does on this machine)",
                )
            )
    foot = sections.get("footprint", {}).get("idle_memory", {})
    if foot:
        over = foot["ours"]["over_floor_mib"]
        limit = TARGETS["idle_over_floor_mib"]
        rows.append(
            _row(
                "idle server memory: ours - floor (plain jupyter server), MiB",
                over,
                f"≤ {limit:.0f}",
                _met(over, limit),
            )
        )
    return rows


def _stats_row(label: str, stats: dict[str, Any], extra: list[str]) -> str:
    cells = (
        [label]
        + [_f(stats.get(k)) for k in ("median", "p95", "min", "max")]
        + [str(stats.get("n", 0))]
        + extra
    )
    return "| " + " | ".join(cells) + " |"


def render(results: dict[str, Any]) -> str:
    machine = results.get("machine", {})
    sections = results.get("sections", {})
    out = ["# Benchmark results", ""]
    out.append(
        f"`{results.get('command', 'python -m bench')}` — written {results.get('written', '?')}. "
        "Every ratio compares contenders measured side by side in the same run "
        "(sections may come from different runs: each has its own time stamp)."
    )
    out.append("")
    out.append(
        f"Machine: {machine.get('nproc')} CPUs ({machine.get('cpu_model', '?')}), "
        f"{machine.get('memory_gib')} GiB, Docker engine {machine.get('engine')} "
        f"(cgroup {machine.get('cgroup')}), JupyterHub {machine.get('jupyterhub')}, "
        f"DockerSpawner {machine.get('dockerspawner')}, Python {machine.get('python')}, "
        f"image {machine.get('notebook_image')}."
    )
    others = machine.get("other_containers_at_start")
    if others:
        out.append(f"Other containers running when the bench started: {', '.join(others)}.")
    out += ["", "## Headline", "", "| figure | value | target | |", "|---|---|---|---|"]
    for row in headline(sections, machine.get("nproc")):
        out.append(f"| {row['figure']} | {_f(row['value'])} | {row['target']} | {row['status']} |")

    spawn = sections.get("spawn")
    if spawn:
        out += ["", f"## 1. One spawn ({spawn['rounds']} rounds each) — {spawn['timestamp']}", ""]
        out.append(
            "Seconds from the REST spawn request to the server's answer through the proxy. "
            "Floors, without hub, proxy or spawner: `docker run` of the same image until it "
            "answers, `floor-singleuser` with the image's own command (jupyterhub-singleuser, "
            "its start-up version check answered by a stub), `floor` with plain "
            "`jupyter server`, `floor-lazy-off` the same with the image's lazy imports off "
            "(`GPUWS_LAZY_IMPORTS=0`: the image as it was before)."
        )
        out += [
            "",
            "| contender | median | p95 | min | max | n | failures |",
            "|---|---|---|---|---|---|---|",
        ]
        for kind, stats in spawn["stats"].items():
            out.append(_stats_row(kind, stats, [str(len(spawn["failures"][kind]))]))
        out.append("")
        out.append(
            "Ratios of medians: " + ", ".join(f"{k} = {_f(v)}" for k, v in spawn["ratios"].items())
        )
        cpu = {k: v for k, v in spawn.get("server_cpu_s_per_start", {}).items() if v}
        if cpu:
            out.append("")
            out.append(
                "CPU a server uses from its start until it answers (container cgroup, median): "
                + ", ".join(f"{k} {_f(v)} s" for k, v in cpu.items())
                + "."
            )

    conc = sections.get("concurrency")
    if conc:
        out += ["", f"## 2. Spawns at once — {conc['timestamp']}", ""]
        out.append(
            "Time to ready of each server (s) when all are asked for at the same moment. "
            "`ours-gpu`: the 1-GPU profile against a static inventory of 40 fake GPUs. "
            "`ours-1thread`: our spawner with `docker_threads = 1` (stock's single thread); "
            "`ours-all-at-once`: our spawner with `start_concurrency = 0` (every server starts "
            "at once, as the floors do). Floors: `docker run` of every container at once."
        )
        out += [
            "",
            "| contender | users | p50 | p95 | min | max | ok | failures | hub CPU s "
            "| load before |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for key, run in conc["runs"].items():
            kind = key.split("@")[0]
            s = run["stats"]
            out.append(
                f"| {kind} | {run['n']} | {_f(s.get('median'))} | {_f(s.get('p95'))} | "
                f"{_f(s.get('min'))} | {_f(s.get('max'))} | {s.get('n', 0)} | {run['failures']} | "
                f"{_f(run.get('hub_cpu_s'), 1)} | {run['load_before'][0]} |"
            )
        out.append("")
        out.append(
            "p50 ratios to the floors at the same size: "
            + ", ".join(f"{k} = {_f(v)}" for k, v in conc["ratios"].items())
        )

    restart = sections.get("restart")
    if restart:
        out += [
            "",
            f"## 3. Hub restart with {restart['servers']} servers — {restart['timestamp']}",
            "",
        ]
        out += ["| contender | hub answers (s) | all servers answer (s) |", "|---|---|---|"]
        for kind in ("ours", "stock"):
            r = restart.get(kind)
            if r:
                out.append(
                    f"| {kind} | {_f(r['hub_answers_s'])} | {_f(r['all_servers_answer_s'])} |"
                )
        out.append("")
        out.append(f"Ratio ours/stock: {_f(restart.get('ratio ours/stock'))}")

    alloc = sections.get("alloc")
    if alloc:
        out += [
            "",
            f"## 4. Placement decision cost ({alloc['containers']} running containers)"
            f" — {alloc['timestamp']}",
            "",
        ]
        out += ["| GPUs | operation | median µs | p95 µs | min µs |", "|---|---|---|---|---|"]
        for n, ops in alloc["sizes"].items():
            for op, value in ops.items():
                if isinstance(value, dict):
                    t = value["per_call_us"]
                    out.append(
                        f"| {n} | {op} | {_f(t['median'], 1)} | {_f(t['p95'], 1)} "
                        f"| {_f(t['min'], 1)} |"
                    )

    foot = sections.get("footprint")
    if foot:
        out += ["", f"## 5. Footprint — {foot['timestamp']}", ""]
        idle = foot.get("idle_memory")
        if idle:
            out.append(
                f"Idle notebook container ({idle['servers_per_kind']} each, median, after "
                f"{idle['idle_wait_s']:.0f}s idle): cgroup usage less inactive cache (what "
                "`docker stats` shows) and anonymous memory."
            )
            out += [
                "",
                "| contender | usage MiB | anon MiB | over floor MiB |",
                "|---|---|---|---|",
            ]
            for kind in ("floor", "floor-lazy-off", "ours", "ours-lazy-off", "stock"):
                r = idle.get(kind)
                if r:
                    out.append(
                        f"| {kind} | {_f(r['usage_mib'], 1)} | {_f(r['anon_mib'], 1)} | "
                        f"{_f(r.get('over_floor_mib'), 1)} |"
                    )
        if conc:
            big = max(conc["sizes"])
            rows = []
            for kind in ("ours", "stock", "ours-gpu"):
                run = conc["runs"].get(f"{kind}@{big}", {})
                fp = run.get("footprint") or {}
                if fp.get("hub_and_proxy_rss_mib") is not None:
                    idle_hub = conc.get("idle_hub_rss_mib", {}).get(kind.replace("-gpu", ""))
                    rows.append(
                        f"| {kind} | {fp['containers']} | {_f(idle_hub, 1)} | "
                        f"{_f(fp['hub_and_proxy_rss_mib'], 1)} | "
                        f"{_f(fp['container_usage_mib'].get('median'), 1)} |"
                    )
            if rows:
                out += [
                    "",
                    f"Hub + proxy resident memory, idle and with {big} servers up "
                    "(from section 2):",
                    "",
                    "| hub | servers | hub+proxy idle MiB | hub+proxy MiB "
                    "| per container MiB (median) |",
                    "|---|---|---|---|---|",
                    *rows,
                ]
        sizes = foot.get("image_sizes")
        if sizes:
            out += ["", "| image | size MB |", "|---|---|"]
            out += [f"| {name} | {_f(mb, 1)} |" for name, mb in sizes.items()]
    builds = sections.get("builds")
    if builds:
        out += ["", f"## 5b. Image builds — {builds['timestamp']}", ""]
        out += [
            "| image | cold (s, --no-cache) | warm (s, cached) | build-images.sh up to date (s) |",
            "|---|---|---|---|",
        ]
        for name, b in builds.items():
            if isinstance(b, dict):
                out.append(
                    f"| {name} | {_f(b.get('cold_s'), 1)} | {_f(b.get('warm_s'), 1)} | "
                    f"{_f(b.get('build_images_sh_up_to_date_s'), 1)} |"
                )
    out.append("")
    return "\n".join(out)
