"""What the machine's own Docker engine holds, read and never changed.

The suite runs on a private engine (tests/engine.py). An admin's engine on the same machine
serves real users, so the run proves it left that engine alone: the test command takes a
snapshot before it starts anything (``python tests/host_engine.py snapshot FILE``) and the
run's last test compares the engine with it.

Command line::

    python tests/host_engine.py snapshot FILE    # write the snapshot as JSON
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import docker
import pytest

MACHINE_SOCKET = Path("/var/run/docker.sock")
MACHINE_PIDFILE = Path("/var/run/docker.pid")
# The test command names its snapshot file here; without it, pytest takes one at its start.
SNAPSHOT_ENV = "GPUWS_HOST_ENGINE_SNAPSHOT"

Snapshot = dict[str, Any]
BEFORE = pytest.StashKey[Snapshot]()


def _daemon_process() -> dict[str, Any] | None:
    """The machine's dockerd as a process: its pid and start time (a restart changes both)."""
    try:
        pid = int(MACHINE_PIDFILE.read_text().strip())
        started = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[19]
    except (OSError, ValueError, IndexError):
        return None
    return {"pid": pid, "started_ticks": started}


def snapshot() -> Snapshot:
    """Containers (with their state and start time), networks and volumes of the machine's
    engine; ``{"answers": False}`` when it does not answer (or is not installed)."""
    if not MACHINE_SOCKET.exists():
        return {"answers": False, "socket": False}
    try:
        client = docker.DockerClient(base_url=f"unix://{MACHINE_SOCKET}", timeout=30)
        api = client.api
        containers = {
            c["Id"]: {
                "name": c["Names"][0] if c["Names"] else "",
                "state": c["State"],
                "image": c["ImageID"],
                "started": api.inspect_container(c["Id"])["State"]["StartedAt"],
            }
            for c in api.containers(all=True)
        }
        networks = sorted(f"{n['Id']} {n['Name']}" for n in api.networks())
        volumes = sorted(v["Name"] for v in api.volumes().get("Volumes") or [])
        client.close()
    except docker.errors.DockerException as e:
        return {"answers": False, "socket": True, "error": type(e).__name__}
    return {
        "answers": True,
        "daemon": _daemon_process(),
        "containers": containers,
        "networks": networks,
        "volumes": volumes,
    }


def before_this_run() -> Snapshot:
    """The snapshot the test command took before it started anything, else one taken now."""
    path = os.environ.get(SNAPSHOT_ENV)
    if path and Path(path).is_file():
        loaded: Snapshot = json.loads(Path(path).read_text())
        return loaded
    return snapshot()


def differences(before: Snapshot, after: Snapshot) -> list[str]:
    """What changed on the machine's engine, one sentence each (empty: untouched)."""
    if before.get("answers") != after.get("answers"):
        state = {True: "answered", False: "did not answer"}
        return [
            f"the machine's engine {state[bool(before.get('answers'))]} before the run "
            f"and {state[bool(after.get('answers'))]} after it"
        ]
    if not before.get("answers"):
        return []
    found = []
    if before["daemon"] != after["daemon"]:
        found.append(f"its dockerd changed: {before['daemon']} -> {after['daemon']}")
    old, new = before["containers"], after["containers"]
    found += [f"container {new[i]['name']} appeared" for i in new.keys() - old.keys()]
    found += [f"container {old[i]['name']} disappeared" for i in old.keys() - new.keys()]
    found += [
        f"container {new[i]['name']} changed: {old[i]} -> {new[i]}"
        for i in old.keys() & new.keys()
        if old[i] != new[i]
    ]
    for kind in ("networks", "volumes"):
        added = sorted(set(after[kind]) - set(before[kind]))
        removed = sorted(set(before[kind]) - set(after[kind]))
        found += [f"{kind[:-1]} {name} appeared" for name in added]
        found += [f"{kind[:-1]} {name} disappeared" for name in removed]
    return found


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "snapshot":
        print(f"usage: {sys.argv[0]} snapshot FILE", file=sys.stderr)
        sys.exit(2)
    Path(sys.argv[2]).write_text(json.dumps(snapshot(), indent=2, sort_keys=True) + "\n")
