"""Section 4: what one placement decision costs, as a pure function (no Docker, no hub).

A placement is what the pool does under its lock before each GPU spawn: read what every live
container holds (``claimed_gpus`` of its ``docker inspect``, mapped onto the inventory by
``resolve_claim``), merge it with the ledger, and choose (``GPULedger.claim`` →
``choose_gpus``). Measured on synthesized inspect data: 8, 64 and 512 GPUs, 1,000 running
containers of which half the GPUs' worth hold one GPU each (by index, UUID, ``--gpus N`` or the
legacy runtime) and the rest are CPU servers.
"""

from __future__ import annotations

import timeit
from collections.abc import Callable
from typing import Any

from spawner.core.allocator import GPULedger
from spawner.core.devices import claimed_gpus
from spawner.core.inventory import Inventory, parse_static_inventory

from .env import summarize

CONTAINERS = 1000


def _inventory(n: int) -> Inventory:
    return parse_static_inventory(
        [{"id": f"GPU-{i:08x}-0000-0000-0000-000000000000", "index": i} for i in range(n)],
        option="bench",
    )


def _inspect_dicts(inventory: Inventory, containers: int) -> list[dict[str, Any]]:
    """``docker inspect`` fragments (HostConfig, Config.Env) as the engine returns them."""
    gpus = list(inventory)
    busy = len(gpus) // 2
    out: list[dict[str, Any]] = []
    for i in range(containers):
        env = ["PATH=/opt/venv/bin:/usr/bin", f"JUPYTERHUB_USER=u{i}", "HOME=/home/jovyan"]
        host: dict[str, Any] = {"Runtime": "runc", "ShmSize": 1 << 30, "DeviceRequests": None}
        if i < busy:
            gpu = gpus[i]
            style = i % 4
            if style == 0:  # our spawner: explicit index
                request = {"Driver": "nvidia", "Count": 0, "DeviceIDs": [str(gpu.index)]}
            elif style == 1:  # by UUID
                request = {"Driver": "", "Count": 0, "DeviceIDs": [gpu.id]}
            elif style == 2:  # `docker run --gpus device=N`
                request = {"Driver": "", "Count": 0, "DeviceIDs": [str(gpu.index)]}
            else:  # legacy nvidia runtime with NVIDIA_VISIBLE_DEVICES
                request = None
                host["Runtime"] = "nvidia"
                env.append(f"NVIDIA_VISIBLE_DEVICES={gpu.index}")
            if request is not None:
                request.update({"Capabilities": [["gpu", "compute", "utility"]], "Options": {}})
                host["DeviceRequests"] = [request]
        else:
            env.append("NVIDIA_VISIBLE_DEVICES=void")
        out.append({"HostConfig": host, "Config": {"Env": env}})
    return out


def _time(fn: Callable[[], Any], repeat: int) -> dict[str, Any]:
    """Per-call seconds over ``repeat`` timeit rounds (each auto-ranged to >= 0.2 s)."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    rounds = [t / number for t in timer.repeat(repeat=repeat, number=number)]
    stats = summarize(rounds)
    return {
        "per_call_us": {k: (v * 1e6 if k != "n" else v) for k, v in stats.items()},
        "calls_per_round": number,
    }


def bench_allocation(sizes: tuple[int, ...] = (8, 64, 512), repeat: int = 7) -> dict[str, Any]:
    return {
        "containers": CONTAINERS,
        "sizes": {str(n): _bench_size(n, repeat) for n in sizes},
    }


def _bench_size(n: int, repeat: int) -> dict[str, Any]:
    inventory = _inventory(n)
    inspects = _inspect_dicts(inventory, CONTAINERS)
    claims = [claimed_gpus(d["HostConfig"], d["Config"]["Env"]) for d in inspects]
    ledger = GPULedger(inventory)
    # The hub's own GPU servers (every other busy one) are in its ledger too.
    for i, claim in enumerate(claims[: n // 2]):
        if i % 2 == 0:
            ledger.restore(f"server-{i}", inventory.resolve_claim(claim))

    def observe_cold() -> frozenset[str]:
        busy: set[str] = set()
        for d in inspects:
            busy |= inventory.resolve_claim(claimed_gpus(d["HostConfig"], d["Config"]["Env"]))
        return frozenset(busy)

    def observe_cached() -> frozenset[str]:
        busy: set[str] = set()
        for claim in claims:
            busy |= inventory.resolve_claim(claim)
        return frozenset(busy)

    external = observe_cached()
    assert len(external) == n // 2, (n, len(external))

    def choose(count: int) -> Callable[[], None]:
        def place() -> None:
            ledger.claim("new-server", count, external=external)
            ledger.release("new-server")

        return place

    def placement() -> None:
        ledger.claim("new-server", 1, external=observe_cached())
        ledger.release("new-server")

    count_big = min(4, n - n // 2)
    return {
        "gpus": n,
        "busy_gpus": n // 2,
        "observe_cold (inspect→claim, 1000 containers)": _time(observe_cold, repeat),
        "observe_cached (claims cached, 1000 containers)": _time(observe_cached, repeat),
        "choose 1 GPU (ledger.claim)": _time(choose(1), repeat),
        f"choose {count_big} GPUs (ledger.claim)": _time(choose(count_big), repeat),
        "placement 1 GPU (cached observe + claim)": _time(placement, repeat),
    }
