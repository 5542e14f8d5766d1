"""Fault injection for the tests' private engine: stop and start its dockerd exactly as
tests/engine.py runs it, watch Docker's events, and record the figures the fault and fuzz
tests report. The machine's own engine is never stopped: only the private one is.
"""

from __future__ import annotations

import contextlib
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
import engine
import requests

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


# -- the private daemon ---------------------------------------------------------------------


def docker_api_error(explanation: str = "engine is busy") -> docker.errors.APIError:
    """What docker-py raises when the engine answers a call with a 500."""
    response = requests.Response()
    response.status_code = 500
    return docker.errors.APIError("500 Server Error", response, explanation=explanation)


#: What a Docker call can fail with, and which kind of trouble it is: "down" (the engine does
#: not answer), "error" (it answers with an error) or None (not Docker's doing: a bug).
DOCKER_TROUBLE: list[tuple[Exception, str | None]] = [
    (requests.exceptions.ConnectionError("refused"), "down"),
    (requests.exceptions.ReadTimeout("hung"), "down"),
    (docker.errors.DockerException("no socket"), "down"),
    (docker_api_error(), "error"),
    (ValueError("a bug"), None),
    (KeyError("Id"), None),
]


@dataclass
class DockerDaemon:
    """The tests' private dockerd, stopped and started the one way tests/engine.py does."""

    pid: int

    @classmethod
    def capture(cls) -> DockerDaemon:
        pid = engine.pid()
        if pid is None:
            raise RuntimeError(f"the tests' private dockerd does not run ({engine.PIDFILE})")
        return cls(pid)

    def stop(self, timeout: float = 90) -> None:
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while engine.pid() == self.pid:
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd {self.pid} did not stop in {timeout}s")
            time.sleep(0.2)

    def start(self, timeout: float = 90) -> DockerDaemon:
        """Start the private dockerd again, with the arguments and environment it had."""
        return DockerDaemon(engine.DAEMON.start(timeout=timeout))


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
    """Stop the private dockerd for the block; always start it again exactly as it was."""
    daemon = DockerDaemon.capture()
    daemon.stop()
    try:
        yield daemon
    finally:
        if not engine.answers():
            daemon.start()


@dataclass
class SocketRelay:
    """The hub's way to Docker: a socat relay from a socket of the test's to the engine's.

    Closing it cuts every connection at once, pooled keep-alive ones included, so the hub
    stops seeing Docker at a moment the test chooses. (Stopping dockerd alone does not do
    that: dockerd 20.10 stops its containers first and answers its API for about a second
    more, so a poll in that second truthfully sees a container exit.)
    """

    path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def docker_host(self) -> str:
        return f"unix://{self.path}"

    def open(self, timeout: float = 10) -> None:
        self.path.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            ["socat", f"UNIX-LISTEN:{self.path},fork", f"UNIX-CONNECT:{engine.SOCKET}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its forked children share its process group
        )
        deadline = time.monotonic() + timeout
        while not self.path.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"socat did not listen on {self.path} in {timeout}s")
            time.sleep(0.05)

    def close(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            self.process = None
        self.path.unlink(missing_ok=True)


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
