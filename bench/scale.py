"""Section 6 ``scale``: many idle servers on one hub, our spawner against stock DockerSpawner.

For each contender in turn (never both sets of servers at once), one hub from the project's
config, its Docker traffic through a counting proxy (:mod:`bench.apicount`):

1. N/5 servers, then the rest up to N (default 150), started through the REST API in batches
   of twice the CPUs (our spawner starts about one per CPU at a time, ``start_concurrency``);
   for ours 1 server in 3 takes the 1-GPU profile (a fake inventory of 160 GPUs);
2. at rest, at N/5 and at N: CPU of the hub process, of its proxy and of its services (the
   idle culler) as % of one core, their memory, and Docker API calls per poll interval
   (``last_activity_interval`` and ``Spawner.poll_interval`` set alike for both hubs);
3. 100 renders of the spawn form (``/hub/spawn`` through the proxy as a signed-in user; stock
   has no form: its ``/hub/spawn`` for a user whose server runs, a redirect), 100 of
   ``/hub/home``, 100 GETs of ``/hub/api/gpus`` with an admin token (ours only);
4. ours only: one placement (acquire + release of 1 GPU on a :class:`GPUPool` fed from the
   live engine, N servers' containers present), 1,000 times, in this process;
5. at N, one poll cycle (every server's ``poll()`` at once, as the hub does each
   ``poll_interval``), 20 times, with spawner objects of the hub's class built in this
   process for the hub's containers; its Docker calls counted by a proxy of its own;
6. every server stopped through the REST API, the hub stopped, its containers removed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import docker
import engine as test_engine
import requests
from dockerspawner import DockerSpawner
from traitlets.config import Config

from spawner.backends.docker import GPUDockerSpawner, running_claims
from spawner.core.inventory import Inventory, parse_static_inventory
from spawner.core.pool import GPUPool, Observation
from spawner.runtime.observer import EngineObserver
from spawner.runtime.runtime import reset_runtime

from . import report
from .apicount import ApiCounter, per_interval
from .env import (
    BENCH_LABEL,
    BENCH_NETWORK,
    cpu_seconds,
    images,
    log,
    process_tree_rss_mib,
    remove_labelled,
    summarize,
)
from .hubs import OURS, STOCK, BenchHub, Outcome, fake_inventory, stock_config

SERVERS = 150
QUICK_SERVERS = 20
GPUS = 160
GPU_EVERY = 3  # for ours, servers 0, 3, 6, … take the 1-GPU profile
RENDERS = 100
PLACEMENTS = 1000
POLL_ROUNDS = 20  # timed poll cycles per contender
SETTLE = 10.0  # seconds after the last spawn before anything at rest is measured
FORM_USER = "formuser"  # signed in, no server: the hub renders the spawn form for it


def poll_config(interval: float) -> str:
    """The same poll and activity intervals for both hubs."""
    return (
        f"c.JupyterHub.last_activity_interval = {int(interval)}\n"
        f"c.Spawner.poll_interval = {int(interval)}\n"
        f"c.DockerSpawner.poll_interval = {int(interval)}\n"
    )


def batches(kind: str, names: Sequence[str], size: int) -> list[tuple[dict[str, Any], list[str]]]:
    """Spawn batches of at most ``size``, each with one set of options; for ours every
    ``GPU_EVERY``-th server (by the number in its name) holds 1 GPU."""
    groups: dict[str, list[str]] = collections.defaultdict(list)
    for name in names:
        if kind != OURS:
            groups[""].append(name)
        else:
            gpu = int("".join(ch for ch in name if ch.isdigit()) or 0) % GPU_EVERY == 0
            groups["gpu-1" if gpu else "cpu"].append(name)
    out = []
    for profile, group in groups.items():
        options = {"profile": profile} if profile else {}
        out += [(options, group[i : i + size]) for i in range(0, len(group), size)]
    return out


def scale(
    client: docker.DockerClient,
    servers: int = SERVERS,
    rest_s: float = 60.0,
    poll_interval: float = 10.0,
    batch: int = 0,
    poll_rounds: int = POLL_ROUNDS,
) -> dict[str, Any]:
    """Both contenders, one after the other, each with ``servers`` idle servers."""
    small = max(1, servers // 5)
    result: dict[str, Any] = {
        "servers": servers,
        "small": small,
        "rest_s": rest_s,
        "poll_interval_s": poll_interval,
        "batch": batch or 2 * (os.cpu_count() or 1),
        "gpus": GPUS,
        "gpu_every": GPU_EVERY,
        "poll_rounds": poll_rounds,
    }
    for kind in (OURS, STOCK):
        remove_labelled(client, BENCH_LABEL)
        result[kind] = _contender(client, kind, result)
    result["table"] = report.scale_rows(result)
    return result


def _contender(client: docker.DockerClient, kind: str, plan: dict[str, Any]) -> dict[str, Any]:
    names = [f"s{i:03d}" for i in range(plan["servers"])]
    small, interval, size = plan["small"], plan["poll_interval_s"], plan["batch"]
    out: dict[str, Any] = {}
    with ApiCounter(str(test_engine.SOCKET)) as counter:
        hub = BenchHub(
            kind,
            gpus=GPUS,
            extra_config=poll_config(interval),
            env={"DOCKER_HOST": counter.docker_host},
        )
        try:
            log(f"scale: starting the {kind} hub (Docker API through {counter.path})")
            hub.start()
            out["spawn_small"] = _spawn(hub, counter, names[:small], size)
            out["rest_small"] = _at_rest(hub, counter, 3 * interval, interval)
            out["spawn"] = _spawn(hub, counter, names[small:], size)
            out["rest"] = _at_rest(hub, counter, max(plan["rest_s"], 3 * interval), interval)
            out["poll_cycle"] = _poll_cycle_or_error(client, hub, names, plan["poll_rounds"])
            out.update(_pages(hub, names[0]))
            if kind == OURS:
                out["placement"] = placement()
        except Exception as e:  # the other contender still runs; the error is reported
            log(f"scale: {kind} failed: {e!r}")
            out["error"] = f"{type(e).__name__}: {e}"[:2000]
            if hub.hub is not None:
                out["hub_log_tail"] = hub.h.log_tail(30)
        finally:
            _teardown(client, hub, names)
    return out


def _spawn(hub: BenchHub, counter: ApiCounter, names: Sequence[str], size: int) -> dict[str, Any]:
    """Start ``names`` in batches; ready times, failures, Docker calls per spawn."""
    before = counter.counts()
    started = time.perf_counter()
    outcomes: list[Outcome] = []
    for options, group in batches(hub.kind, names, size):
        outcomes += hub.spawn_many(group, options)
    wall = time.perf_counter() - started
    calls = per_interval(before, counter.counts(), max(1, len(names)))
    ok = [o.seconds for o in outcomes if o.seconds is not None]
    errors = [f"{o.name}: {o.error}" for o in outcomes if o.error]
    log(f"scale: {hub.kind}: {len(ok)}/{len(names)} up in {wall:.0f}s, {len(errors)} failed")
    return {
        "asked": len(names),
        "ok": len(ok),
        "failures": len(errors),
        "errors": errors[:5],
        "ready_s": summarize(ok),
        "wall_s": round(wall, 1),
        "api_calls_per_spawn": round(sum(calls.values()), 1) if names else None,
        "api_calls_per_spawn_by_kind": calls,
    }


# -- at rest ------------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                children[int(fields[1])].append(int(entry.name))
    return children


def process_roles(pid: int) -> dict[int, str]:
    """The hub's process tree: ``hub`` (the pid), ``proxy`` (configurable-http-proxy),
    ``services`` (everything else it started: the idle culler)."""
    children = _children()
    roles: dict[int, str] = {}
    todo = [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        try:
            cmdline = Path(f"/proc/{current}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if current == pid:
            roles[current] = "hub"
        elif b"configurable-http-proxy" in cmdline:
            roles[current] = "proxy"
        else:
            roles[current] = "services"
    return roles


def rss_mib(pid: int) -> float | None:
    """Resident memory of one process."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def _at_rest(hub: BenchHub, counter: ApiCounter, seconds: float, interval: float) -> dict[str, Any]:
    """CPU, memory and Docker calls while nobody asks the hub anything."""
    time.sleep(SETTLE)
    pid = hub.hub_pid()
    roles = process_roles(pid)
    cpu_before = {p: cpu_seconds(p) for p in roles}
    calls_before = counter.counts()
    started = time.perf_counter()
    time.sleep(seconds)
    wall = time.perf_counter() - started
    calls = per_interval(calls_before, counter.counts(), wall / interval)
    cpu: dict[str, float] = {"hub": 0.0, "proxy": 0.0, "services": 0.0}
    for p, role in roles.items():
        cpu[role] += max(0.0, cpu_seconds(p) - cpu_before[p])
    running = sum(1 for model in hub.servers().values() if model and model.get("ready"))
    figures = {
        "servers_running": running,
        "seconds": round(wall, 1),
        "intervals": round(wall / interval, 2),
        "cpu_pct_of_one_core": {role: round(100 * s / wall, 2) for role, s in cpu.items()},
        "hub_rss_mib": None if (rss := rss_mib(pid)) is None else round(rss, 1),
        "tree_rss_mib": round(process_tree_rss_mib(pid), 1),
        "api_calls_per_interval": round(float(sum(calls.values())), 2),
        "api_calls_by_kind": calls,
    }
    log(
        f"scale: {hub.kind} at rest with {running} servers: hub "
        f"{figures['cpu_pct_of_one_core']['hub']:.1f} % of a core, "
        f"{figures['api_calls_per_interval']} Docker calls per {interval:g} s"
    )
    return figures


# -- pages --------------------------------------------------------------------------------


def timed_gets(
    session: requests.Session, url: str, n: int = RENDERS, **kwargs: Any
) -> dict[str, Any]:
    """``n`` GETs (after one unmeasured): milliseconds and the status codes seen."""
    session.get(url, timeout=60, **kwargs)
    ms: list[float] = []
    statuses: collections.Counter[int] = collections.Counter()
    for _ in range(n):
        started = time.perf_counter()
        r = session.get(url, timeout=60, **kwargs)
        ms.append((time.perf_counter() - started) * 1000)
        statuses[r.status_code] += 1
    return {"ms": summarize(ms), "statuses": {str(k): v for k, v in statuses.items()}}


def _pages(hub: BenchHub, running_user: str) -> dict[str, Any]:
    """Spawn form, home page and the GPU API, each ``RENDERS`` times, through the proxy."""
    url = hub.h.url
    out: dict[str, Any] = {}
    if hub.kind == OURS:
        session = hub.h.login(FORM_USER)
        out["form"] = timed_gets(session, f"{url}/hub/spawn")
        out["form"]["what"] = "the spawn form (200), for a signed-in user without a server"
        admin = requests.Session()
        admin.headers["Authorization"] = f"token {hub.h.token}"
        out["api_gpus"] = timed_gets(admin, f"{url}/hub/api/gpus")
    else:
        # Stock has no form: /hub/spawn would start a server. For a user whose server
        # runs it answers with a redirect to that server, which is timed instead.
        session = hub.h.login(running_user)
        out["form"] = timed_gets(session, f"{url}/hub/spawn", allow_redirects=False)
        out["form"]["what"] = "no form: /hub/spawn of a user whose server runs (a redirect)"
        out["api_gpus"] = None
    out["home"] = timed_gets(session, f"{url}/hub/home")
    return out


# -- placement ----------------------------------------------------------------------------

Observe = Callable[[], Awaitable[Observation]]


def placement(repeat: int = PLACEMENTS) -> dict[str, Any]:
    """Acquire + release 1 GPU on a pool fed from the live engine, ``repeat`` times."""
    return asyncio.run(_placement(repeat))


def _make_client() -> docker.APIClient:
    return docker.APIClient(base_url=test_engine.DOCKER_HOST, version="auto", timeout=60)


async def _placement(repeat: int) -> dict[str, Any]:
    inventory = parse_static_inventory(json.loads(fake_inventory(GPUS)), option="bench")
    observe, close = await _observer(inventory)
    try:
        pool = GPUPool(inventory, observe)
        ms: list[float] = []
        for i in range(repeat):
            started = time.perf_counter()
            await pool.acquire(f"bench-{i}", 1, user="bench", timeout=0)
            pool.release(f"bench-{i}")
            ms.append((time.perf_counter() - started) * 1000)
        seen = await observe()
    finally:
        await close()
    log(f"scale: placement: median {summarize(ms).get('median', 0):.3f} ms")
    return {
        "how": "GPUPool over the EngineObserver's cache (running_claims), in the bench process",
        "placements": repeat,
        "ms": summarize(ms),
        "busy_gpus_seen": len(seen.busy),
        "live_containers_seen": len(seen.live),
    }


async def _observer(inventory: Inventory) -> tuple[Observe, Callable[[], Awaitable[None]]]:
    """What the hub's pool reads at each placement: the engine observer's cache (fed by
    Docker's events), through the backend's own ``running_claims``."""
    observer = EngineObserver(_make_client, name="bench")
    if inspect.isawaitable(started := observer.start()):
        await started
    if not await observer.wait_synced(60):
        raise RuntimeError("the engine observer did not follow the engine within 60 s")

    async def observe() -> Observation:
        return running_claims(observer.live(), inventory)

    async def close() -> None:
        if inspect.isawaitable(stopped := observer.stop()):
            await stopped

    return observe, close


# -- one poll cycle -----------------------------------------------------------------------


def poll_cycle(
    client: docker.DockerClient, hub: BenchHub, names: Sequence[str], rounds: int = POLL_ROUNDS
) -> dict[str, Any]:
    """What the hub does each ``poll_interval``: every server's ``poll()`` at once, ``rounds``
    times, with spawner objects of the hub's class built in this process for its servers.

    Their Docker traffic goes through a counting proxy of its own (the hub's own calls are
    not counted); one cycle before the timed ones is not measured (for ours the observer's
    first list, for both the client's version check).
    """
    with ApiCounter(str(test_engine.SOCKET)) as counter, _docker_host(counter.docker_host):
        try:
            figures = asyncio.run(_poll_cycle(client, hub, names, rounds, counter))
        finally:
            _forget_clients()
    log(
        f"scale: {hub.kind}: one poll cycle of {len(names)} servers: median "
        f"{figures['ms'].get('median', 0):.1f} ms, {figures['api_calls_per_cycle']} Docker calls"
    )
    return figures


def _poll_cycle_or_error(
    client: docker.DockerClient, hub: BenchHub, names: Sequence[str], rounds: int
) -> dict[str, Any]:
    """The poll cycle, or why not (the pages and the placement are still measured)."""
    try:
        return poll_cycle(client, hub, names, rounds)
    except Exception as e:
        log(f"scale: {hub.kind}: poll cycle failed: {e!r}")
        return {"error": f"{type(e).__name__}: {e}"[:2000]}


@contextlib.contextmanager
def _docker_host(address: str) -> Iterator[None]:
    """DOCKER_HOST for the spawners built here: both read it whenever they make a client."""
    before = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = address
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = before


def _forget_clients() -> None:
    """Stock keeps one client per class (ours keeps its own in the runtime)."""
    for cls in (DockerSpawner, GPUDockerSpawner):
        if (made := cls.__dict__.get("_client")) is not None:
            with contextlib.suppress(Exception):
                made.close()
            cls._client = None


def poll_spawner(hub: BenchHub, name: str) -> Any:
    """A spawner object of the hub's class, configured as the hub configures its own (so its
    ``object_name`` is the hub's container name for ``name``)."""
    config = Config()
    if hub.kind == STOCK:
        # the very settings the stock hub was started with (bench.hubs.stock_config)
        exec(stock_config(hub.prefix, images()["cpu"]), {"c": config})
        cls: type[Any] = DockerSpawner
    else:
        config.GPUDockerSpawner.prefix = hub.prefix
        config.GPUDockerSpawner.image = images()["cpu"]
        config.GPUDockerSpawner.network_name = BENCH_NETWORK
        cls = GPUDockerSpawner
    user = SimpleNamespace(name=name, groups=[], url=f"/user/{name}/")
    spawner = cls(config=config, user=user)
    if hub.kind != STOCK:
        spawner.api_token = "bench"  # else its poll reads the token back from the container
    return spawner


def _adopt(client: docker.DockerClient, spawners: Sequence[Any]) -> None:
    """Each object's container must exist (``docker inspect``); its id becomes ``object_id``."""
    missing = []
    for spawner in spawners:
        try:
            spawner.object_id = client.api.inspect_container(spawner.object_name)["Id"]
        except docker.errors.NotFound:
            missing.append(spawner.object_name)
    if missing:
        raise RuntimeError(f"no container for {len(missing)} spawners, e.g. {missing[:3]}")


async def _poll_cycle(
    client: docker.DockerClient,
    hub: BenchHub,
    names: Sequence[str],
    rounds: int,
    counter: ApiCounter,
) -> dict[str, Any]:
    spawners = [poll_spawner(hub, name) for name in names]
    _adopt(client, spawners)
    ms: list[float] = []
    running: list[int] = []
    try:
        if hub.kind == OURS and await spawners[0].synced_observer() is None:
            raise RuntimeError("the engine observer did not follow the engine")
        await asyncio.gather(*(s.poll() for s in spawners))  # not measured
        before = counter.counts()
        for _ in range(rounds):
            started = time.perf_counter()
            answers = await asyncio.gather(*(s.poll() for s in spawners))
            ms.append((time.perf_counter() - started) * 1000)
            running.append(sum(1 for a in answers if a is None))
        calls = per_interval(before, counter.counts(), rounds)
    finally:
        reset_runtime()  # ours: its observer, client and threads, while this loop still runs
    return {
        "how": f"{type(spawners[0]).__name__}.poll() of every server at once, in the bench process",
        "servers": len(spawners),
        "rounds": rounds,
        "ms": summarize(ms),
        "answered_running": min(running),
        "api_calls_per_cycle": round(float(sum(calls.values())), 2),
        "api_calls_by_kind": calls,
    }


# -- clean-up -----------------------------------------------------------------------------


def _teardown(client: docker.DockerClient, hub: BenchHub, names: Sequence[str]) -> None:
    """Stop every server through the REST API, then the hub; remove what is left."""
    if hub.hub is not None and hub.h.process is not None:
        for i in range(0, len(names), 25):
            try:
                hub.stop_many(names[i : i + 25])
            except (RuntimeError, requests.RequestException) as e:
                log(f"scale: {hub.kind}: stopping servers: {e}")
    hub.stop(client)
    remove_labelled(client, BENCH_LABEL)


__all__ = [
    "POLL_ROUNDS",
    "QUICK_SERVERS",
    "SERVERS",
    "batches",
    "placement",
    "poll_cycle",
    "poll_spawner",
    "process_roles",
    "scale",
]
