"""Fault injection for the real engine: restart dockerd exactly as it ran, watch Docker's
events, and record the figures the fault and fuzz tests report.

Restarting dockerd kills every container on it (live-restore is off here), so
:func:`wait_until_engine_is_ours` refuses while containers this test did not start are
running, and :func:`require_docker_lock` refuses when the shared lock exists but is not held.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest
from harness import LABEL_PREFIX_NAME, docker_answers

DOCKER_PIDFILE = Path("/var/run/docker.pid")
DOCKER_LOCK = Path("/tmp/gpuws-docker.lock")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


# -- figures -------------------------------------------------------------------------------


def record_figures(file_name: str, scenario: str, figures: dict[str, Any]) -> dict[str, Any]:
    """Merge ``figures`` under ``scenario`` into tests/artifacts/<file_name>; print them."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / file_name
    try:
        everything = json.loads(path.read_text())
        if not isinstance(everything, dict):
            everything = {}
    except (OSError, ValueError):
        everything = {}
    everything[scenario] = figures
    path.write_text(json.dumps(everything, indent=2, sort_keys=True) + "\n")
    print(f"{file_name} {scenario}: {json.dumps(figures, sort_keys=True)}")
    return everything


# -- the shared daemon ----------------------------------------------------------------------


def require_docker_lock() -> None:
    """Skip unless the shared lock is held by whoever runs the tests (or does not exist).

    Developers sharing one engine run Docker-heavy tests under ``flock /tmp/gpuws-docker.lock``;
    a CI machine has no such file and runs the suite alone.
    """
    if not DOCKER_LOCK.exists():
        return
    with DOCKER_LOCK.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return  # held, by the flock this test runs under
            raise
        fcntl.flock(f, fcntl.LOCK_UN)
    pytest.skip(f"restarting dockerd needs the shared lock: run under `flock {DOCKER_LOCK}`")


def foreign_running(client: docker.DockerClient, prefix: str) -> list[str]:
    """Names of running containers that are not this hub's."""
    names = []
    for container in client.containers.list():
        if container.labels.get(LABEL_PREFIX_NAME) != prefix:
            names.append(container.name)
    return names


def wait_until_engine_is_ours(client: docker.DockerClient, prefix: str, timeout: float) -> None:
    """Wait for other people's containers to finish; skip if they do not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        others = foreign_running(client, prefix)
        if not others:
            return
        if time.monotonic() > deadline:
            pytest.skip(
                "restarting dockerd would kill containers this test did not start: "
                + ", ".join(sorted(others)[:5])
            )
        time.sleep(5)


@dataclass
class DockerDaemon:
    """The running dockerd as it was started: arguments, environment, folder, log file."""

    pid: int
    args: list[str]
    env: dict[str, str]
    cwd: str
    log: str
    systemd_unit: str = ""  # "docker.service" when systemd runs it: then systemctl does

    @classmethod
    def capture(cls) -> DockerDaemon:
        pid = int(DOCKER_PIDFILE.read_text().strip())
        proc = Path(f"/proc/{pid}")
        args = [a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
        if not args or Path(args[0]).name != "dockerd":
            raise RuntimeError(f"{DOCKER_PIDFILE} names pid {pid}, which is not dockerd: {args}")
        env = dict(
            item.decode().split("=", 1)
            for item in (proc / "environ").read_bytes().split(b"\0")
            if b"=" in item
        )
        log = os.readlink(proc / "fd" / "1")  # "pipe:[…]" or "socket:[…]" under systemd
        if not log.startswith("/"):
            log = "/dev/null"
        cgroups = (proc / "cgroup").read_text()
        unit = "docker.service" if "/docker.service" in cgroups else ""
        return cls(pid, args, env, os.readlink(proc / "cwd"), log, unit)

    def alive(self) -> bool:
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().split(")")[-1].split()[0]
        except OSError:
            return False
        return state != "Z"

    def stop(self, timeout: float = 90) -> None:
        if self.systemd_unit:
            subprocess.run(["systemctl", "stop", self.systemd_unit], check=True)
        else:
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd {self.pid} did not stop in {timeout}s")
            time.sleep(0.2)

    def start(self, timeout: float = 90) -> DockerDaemon:
        """Start dockerd again with the same arguments, environment, folder and log."""
        if self.systemd_unit:
            subprocess.run(["systemctl", "start", self.systemd_unit], check=True)
            return self._came_back(None, timeout)
        log = open(self.log, "ab")  # noqa: SIM115 - handed to the daemon
        try:
            process = subprocess.Popen(
                self.args,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        return self._came_back(process, timeout)

    def _came_back(self, process: subprocess.Popen[bytes] | None, timeout: float) -> DockerDaemon:
        deadline = time.monotonic() + timeout
        while not docker_answers():
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"dockerd exited with {process.returncode}; see {self.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not answer in {timeout}s; see {self.log}")
            time.sleep(0.5)
        restarted = DockerDaemon.capture()
        if (restarted.args, restarted.env) != (self.args, self.env):
            raise RuntimeError("dockerd came back with other arguments or environment")
        return restarted


def reconnect(client: docker.DockerClient, attempts: int = 10) -> None:
    """Let a client whose pooled connections died with the old daemon talk to the new one."""
    for attempt in range(attempts):
        try:
            client.ping()
            return
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)


@contextlib.contextmanager
def docker_daemon_stopped() -> Iterator[DockerDaemon]:
    """Stop the shared dockerd for the block; always start it again exactly as it was."""
    daemon = DockerDaemon.capture()
    daemon.stop()
    try:
        yield daemon
    finally:
        if not docker_answers():
            daemon.start()


# -- Docker events ----------------------------------------------------------------------


@dataclass
class EventLog:
    """Docker events seen while the block ran (container events only)."""

    client: docker.DockerClient
    events: list[dict[str, Any]] = field(default_factory=list)

    def actions(self, container_id: str) -> list[str]:
        return [e.get("Action", "") for e in self.events if e.get("id") == container_id]

    def exit_codes(self, container_id: str) -> list[str]:
        return [
            e.get("Actor", {}).get("Attributes", {}).get("exitCode", "")
            for e in self.events
            if e.get("id") == container_id and e.get("Action") == "die"
        ]


@contextlib.contextmanager
def docker_events(client: docker.DockerClient) -> Iterator[EventLog]:
    log = EventLog(client)
    stream = client.events(decode=True, filters={"type": "container"})

    def read() -> None:
        with contextlib.suppress(Exception):
            for event in stream:
                log.events.append(event)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.5)  # the subscription is live before the block acts
    try:
        yield log
    finally:
        time.sleep(1)  # late events (die after oom) arrive
        stream.close()
        reader.join(5)
