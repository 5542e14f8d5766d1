"""Section 3: the hub restarts while 20 servers run; how long until all answer again.

The hub (and the proxy it started) is stopped with SIGTERM; the notebook containers keep
running (``cleanup_servers = False``). The clock starts when the new hub process is started
and stops when every server answers through the (new) proxy again.
"""

from __future__ import annotations

import time
from typing import Any

import docker

from .env import log, ratio
from .hubs import OURS, STOCK, BenchHub, contenders

OPTIONS = {OURS: {"profile": "cpu"}, STOCK: {}}


def hub_restart(client: docker.DockerClient, servers: int = 20) -> dict[str, Any]:
    names = [f"r{i:02d}" for i in range(servers)]
    results: dict[str, Any] = {"servers": servers}
    with contenders(client, OURS, STOCK) as things:
        for kind in (OURS, STOCK):
            hub: BenchHub = things[kind]
            outcomes = hub.spawn_many(names, OPTIONS[kind])
            failed = [o.name for o in outcomes if o.error]
            hub.h.stop()
            started = time.perf_counter()
            hub.h.start(timeout=120)
            hub_up = time.perf_counter() - started
            rest = hub.all_answer(names, timeout=240)
            total = None if rest is None else hub_up + rest
            results[kind] = {
                "spawn_failures": len(failed),
                "hub_answers_s": round(hub_up, 2),
                "all_servers_answer_s": None if total is None else round(total, 2),
            }
            log(f"{kind}: hub up in {hub_up:.2f}s, all {servers} answer after {total}s")
            hub.stop_many(names)
    results["ratio ours/stock"] = ratio(
        results[OURS]["all_servers_answer_s"], results[STOCK]["all_servers_answer_s"]
    )
    return results
