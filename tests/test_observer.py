"""The engine observer (spawner/runtime/observer.py): a container cache fed by Docker's events.

The pure helpers are table tests. Everything else runs on the tests' private engine: the
cache must follow what the SDK does to containers, cost no API call while nothing happens
(whatever the number of containers), survive a lost stream and stop on demand. A lost stream
is made by a Unix-socket relay to the private engine that the test cuts and restores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import engine
import pytest
from harness import wait_for

from spawner.runtime.observer import (
    API_KINDS,
    EngineObserver,
    api_timestamp,
    created_ns,
    event_effect,
    record_from_inspect,
    summary_name,
)

# -- pure: tables -----------------------------------------------------------------------

MAY_1 = 1714557600 * 10**9  # 2024-05-01T10:00:00Z, by calendar.timegm


@pytest.mark.parametrize(
    ("stamp", "ns"),
    [
        ("2024-05-01T10:00:00Z", MAY_1),
        ("2024-05-01T10:00:00.5Z", MAY_1 + 500_000_000),
        ("2024-05-01T10:00:00.123456789Z", MAY_1 + 123_456_789),
        ("2024-05-01T10:00:00.123456790Z", MAY_1 + 123_456_790),  # a float would merge these
        ("2024-05-01T10:00:00.1234567899Z", MAY_1 + 123_456_789),  # digits past 9 dropped
        ("2024-05-01T12:00:00.25+02:00", MAY_1 + 250_000_000),  # SystemTime in local time
        ("2024-05-01T09:30:00-00:30", MAY_1),
        ("2024-05-01t10:00:00z", MAY_1),
        ("0001-01-01T00:00:00Z", -62135596800 * 10**9),  # Docker's zero time (FinishedAt)
    ],
)
def test_created_ns_reads_docker_times_to_the_nanosecond(stamp: str, ns: int) -> None:
    assert created_ns(stamp) == ns


@pytest.mark.parametrize(
    "stamp", ["", "yesterday", "2024-05-01", "2024-05-01 10:00:00Z", "2024-05-01T10:00:00", None]
)
def test_created_ns_refuses_what_is_no_time_with_a_sentence(stamp: Any) -> None:
    with pytest.raises(ValueError, match="is not an RFC 3339 time"):
        created_ns(stamp)


@pytest.mark.parametrize(
    ("ns", "text"),
    [(MAY_1 + 5, "1714557600.000000005"), (0, "0.000000000"), (MAY_1, "1714557600.000000000")],
)
def test_api_timestamp_is_seconds_dot_nanos(ns: int, text: str) -> None:
    assert api_timestamp(ns) == text


CID = "ab" * 32


@pytest.mark.parametrize(
    ("event", "effect"),
    [
        ({"Type": "container", "Action": "create", "Actor": {"ID": CID}}, ("inspect", CID)),
        ({"Type": "container", "Action": "die", "Actor": {"ID": CID}}, ("inspect", CID)),
        ({"Type": "container", "Action": "rename", "Actor": {"ID": CID}}, ("inspect", CID)),
        ({"Type": "container", "Action": "oom", "Actor": {"ID": CID}}, ("inspect", CID)),
        ({"Type": "container", "Action": "destroy", "Actor": {"ID": CID}}, ("remove", CID)),
        ({"Type": "container", "Action": "exec_create: sh -c env", "Actor": {"ID": CID}}, None),
        ({"Type": "container", "Action": "exec_die", "Actor": {"ID": CID}}, None),
        ({"Type": "container", "Action": "health_status: healthy", "Actor": {"ID": CID}}, None),
        ({"Type": "container", "Action": "attach", "Actor": {"ID": CID}}, None),
        ({"Type": "network", "Action": "connect", "Actor": {"ID": CID}}, None),
        ({"Type": "container", "Action": "start", "Actor": {}}, None),
        ({"status": "start", "id": CID}, ("inspect", CID)),  # API < 1.22
    ],
)
def test_event_effect(event: dict[str, Any], effect: tuple[str, str] | None) -> None:
    assert event_effect(event) == effect


@pytest.mark.parametrize(
    ("names", "name"),
    [(["/web"], "web"), (["/db/alias", "/db"], "db"), (["/a/b"], "a/b"), ([], "")],
)
def test_summary_name_skips_link_aliases(names: list[str], name: str) -> None:
    assert summary_name({"Names": names}) == name


def test_a_resync_interval_that_is_no_duration_is_refused() -> None:
    with pytest.raises(ValueError, match="resync_interval must be a number of seconds > 0"):
        EngineObserver(lambda: None, resync_interval=0)


# -- on the private engine ----------------------------------------------------------------

PREFIX = f"gpuws-obs-{secrets.token_hex(3)}-"
GPU = docker.types.DeviceRequest


def _private_api_client(base_url: str = engine.DOCKER_HOST) -> docker.APIClient:
    return docker.APIClient(base_url=base_url, version="auto", timeout=30)


@pytest.fixture
def name(docker_client: docker.DockerClient) -> Iterator[Callable[[str], str]]:
    """Unique container names; every container so named is removed at the end."""

    def make(word: str) -> str:
        return f"{PREFIX}{word}-{secrets.token_hex(2)}"

    yield make
    for container in docker_client.containers.list(all=True, filters={"name": PREFIX}):
        container.remove(force=True)


@pytest.fixture
def image(notebook_images: dict[str, str]) -> str:
    return notebook_images["cpu"]


@pytest.fixture
def observer(docker_client: docker.DockerClient) -> Iterator[EngineObserver]:
    """An observer of the private engine, synced."""
    watching = EngineObserver(_private_api_client, name="test")
    watching.start()
    assert asyncio.run(watching.wait_synced(30)), "the observer did not sync in 30 s"
    yield watching
    watching.stop()


def settled(observer: EngineObserver, quiet: float = 0.5, timeout: float = 15) -> dict[str, int]:
    """The observer's API call counts once they stay the same for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last = dict(observer.api_calls)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = dict(observer.api_calls)
        if now == last:
            return now
        last = now
    raise AssertionError(f"the observer kept calling the engine for {timeout}s: {last}")


def observer_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"engine-observer-{name}"]


@pytest.mark.docker
def test_the_cache_follows_create_start_exit_and_remove(observer, docker_client, image, name):
    container = docker_client.containers.create(image, ["sh", "-c", "exit 3"], name=name("exit"))
    assert asyncio.run(observer.wait_seen(container.id, 5))
    created = observer.get(container.id)
    assert created is not None and created.state == "created" and created.live
    assert not created.running
    assert observer.get(container.name) == observer.get("/" + container.name) == created
    container.start()
    exited = wait_for(lambda: _in_state(observer, container.id, "exited"), 10, 0.05)
    assert exited.exit_code == 3 and not exited.live and not exited.running
    assert exited.finished_at.startswith(time.strftime("%Y-", time.gmtime()))
    assert container.wait(timeout=10)["StatusCode"] == 3
    container.remove()
    wait_for(lambda: observer.get(container.id) is None, 10, 0.05)
    assert observer.get(container.name) is None
    assert asyncio.run(observer.wait_seen(container.id, 0.1))  # came and went: still seen
    assert not asyncio.run(observer.wait_seen("0" * 64, 0.3))


def _in_state(observer: EngineObserver, container_id: str, state: str) -> Any:
    record = observer.get(container_id)
    return record if record is not None and record.state == state else None


RECORD_CASES = {
    "created": ({"command": ["true"]}, [], {"state": "created", "running": False, "claim": None}),
    "running, labelled": (
        {"command": ["sleep", "600"], "labels": {"team": "a", "io.x/y": "z"}},
        ["start"],
        {"state": "running", "running": True, "live": True, "exit_code": 0},
    ),
    "paused": (
        {"command": ["sleep", "600"]},
        ["start", "pause"],
        {"state": "paused", "running": True, "live": True},
    ),
    "GPU 1 by device request": (
        {
            "command": ["sleep", "600"],
            "device_requests": [GPU(device_ids=["1"], capabilities=[["gpu"]])],
        },
        ["start"],
        {"state": "running", "claim_ids": {"1"}, "claim_all": False},
    ),
    "every GPU by --gpus all": (
        {"command": ["true"], "device_requests": [GPU(count=-1, capabilities=[["gpu"]])]},
        [],
        {"state": "created", "claim_ids": set(), "claim_all": True},
    ),
    "GPU 2 by the nvidia runtime": (
        {
            "command": ["sleep", "600"],
            "runtime": "nvidia",
            "environment": {"NVIDIA_VISIBLE_DEVICES": "2"},
        },
        ["start"],
        {"state": "running", "claim_ids": {"2"}, "claim_all": False},
    ),
}


@pytest.mark.docker
@pytest.mark.parametrize("case", list(RECORD_CASES))
def test_records_read_docker_inspect(case, observer, docker_client, image, name, fake_gpu_hook):
    create, actions, expected = RECORD_CASES[case]
    before = time.time_ns()
    container = docker_client.containers.create(image, name=name("rec"), **create)
    after = time.time_ns()
    for action in actions:
        getattr(container, action)()
    state = expected["state"]
    record = wait_for(lambda: _in_state(observer, container.id, state), 10, 0.05)
    doc = docker_client.api.inspect_container(container.id)  # the real document
    assert record == record_from_inspect(doc, observer.default_runtime)
    assert record.name == container.name
    assert create.get("labels", {}).items() <= record.labels.items()  # and the image's own
    assert before - 10**9 <= record.created_ns <= after + 10**9  # one clock: the same machine
    for key, value in expected.items():
        if key == "claim_ids":
            assert set(record.claim.ids) == value
        elif key == "claim_all":
            assert record.claim.all is value
        else:
            assert getattr(record, key) == value, key
    with pytest.raises(TypeError):
        record.labels["team"] = "b"  # readers cannot change the cache


@pytest.mark.docker
def test_a_rename_is_seen(observer, docker_client, image, name):
    old, new = name("old"), name("new")
    container = docker_client.containers.create(image, ["true"], name=old)
    wait_for(lambda: observer.get(old), 5, 0.05)
    container.rename(new)
    renamed = wait_for(lambda: observer.get(new), 5, 0.05)
    assert renamed.id == container.id and observer.get(old) is None


@pytest.mark.docker
def test_one_inspect_per_lifecycle_event_and_none_for_exec(observer, docker_client, image, name):
    container = docker_client.containers.run(image, ["sleep", "600"], detach=True, name=name("ev"))
    wait_for(lambda: _in_state(observer, container.id, "running"), 10, 0.05)
    calls = settled(observer)
    assert container.exec_run(["true"]).exit_code == 0  # exec_create, exec_start, exec_die
    assert settled(observer) == calls
    container.pause()
    wait_for(lambda: _in_state(observer, container.id, "paused"), 5, 0.05)
    paused = settled(observer)
    assert paused == {**calls, "inspect": calls["inspect"] + 1}
    container.unpause()
    wait_for(lambda: _in_state(observer, container.id, "running"), 5, 0.05)
    assert settled(observer) == {**calls, "inspect": calls["inspect"] + 2}


@pytest.mark.docker
@pytest.mark.parametrize("count", [1, 20])
def test_idle_containers_cost_no_api_call(count, docker_client, image, name, artifacts_dir):
    for _ in range(count):
        docker_client.containers.run(image, ["sleep", "600"], detach=True, name=name("idle"))
    watching = EngineObserver(_private_api_client, name=f"idle{count}")
    watching.start()
    try:
        assert asyncio.run(watching.wait_synced(30))
        start_up = settled(watching)
        known = len(watching.records())
        assert known >= count
        # one info, one list, one subscription, one inspect per container: nothing more
        assert start_up == {"info": 1, "list": 1, "events": 1, "inspect": known}
        time.sleep(2)
        assert dict(watching.api_calls) == start_up
        assert watching.synced
    finally:
        watching.stop()
    figures_file = artifacts_dir / "observer-figures.json"
    figures = json.loads(figures_file.read_text()) if figures_file.exists() else {}
    figures[f"idle_{count}"] = {
        "containers": known,
        "start_up_calls": start_up,
        "calls_in_2s_idle": sum(watching.api_calls.values()) - sum(start_up.values()),
    }
    figures_file.write_text(json.dumps(figures, indent=2))


@pytest.mark.docker
def test_a_scheduled_resync_lists_again_and_stays_synced(docker_client, image, name):
    container = docker_client.containers.create(image, ["true"], name=name("resync"))
    watching = EngineObserver(_private_api_client, name="resync", resync_interval=1.5)
    synced_states: list[bool] = []
    watching.add_listener(lambda: synced_states.append(watching.synced))
    watching.start()
    try:
        assert asyncio.run(watching.wait_synced(30))
        first = settled(watching, quiet=0.2)
        wait_for(lambda: watching.api_calls["list"] >= 3, 10, 0.05)
        assert watching.synced and watching.get(container.id) is not None
        # the stream ended on schedule each time: never unsynced, nothing inspected again
        since_synced = synced_states[synced_states.index(True) :]
        assert all(since_synced), synced_states
        assert watching.api_calls["inspect"] == first["inspect"]
        assert watching.api_calls["events"] == watching.api_calls["list"]
    finally:
        watching.stop()


@pytest.mark.docker
def test_stop_ends_the_thread_and_the_calls(docker_client, image, name):
    watching = EngineObserver(_private_api_client, name="stopping")
    watching.start()
    watching.start()  # idempotent
    assert len(observer_threads("stopping")) == 1
    assert asyncio.run(watching.wait_synced(30))
    calls = settled(watching)
    began = time.monotonic()
    watching.stop(timeout=5)
    assert time.monotonic() - began < 2
    assert not watching.synced and observer_threads("stopping") == []
    docker_client.containers.create(image, ["true"], name=name("after-stop"))
    time.sleep(0.5)
    assert dict(watching.api_calls) == calls


class SocketRelay:
    """A Unix socket relaying to the private engine's; ``cut()`` drops it and every
    connection through it (as an engine restart would), ``open()`` brings it back."""

    def __init__(self, target: Path, path: Path) -> None:
        self.target, self.path = str(target), str(path)
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []

    def open(self) -> None:
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(self.path)
        listener.listen(16)
        listener.settimeout(0.1)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        os.unlink(self.path)
        for connection in self._connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
        self._connections = []

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.target)
            self._connections += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def relay() -> Iterator[SocketRelay]:
    folder = Path(tempfile.mkdtemp(prefix="obs-", dir="/tmp"))  # short: Unix socket paths
    relaying = SocketRelay(engine.SOCKET, folder / "docker.sock")
    relaying.open()
    yield relaying
    if relaying._listener is not None:
        relaying.cut()
    folder.rmdir()


@pytest.mark.docker
def test_a_lost_stream_turns_unsynced_then_lists_again(relay, docker_client, image, name):
    watching = EngineObserver(lambda: _private_api_client(f"unix://{relay.path}"), name="lost")
    watching.start()
    try:
        assert asyncio.run(watching.wait_synced(30))
        relay.cut()
        cut_at = time.monotonic()
        wait_for(lambda: not watching.synced, 2, 0.01)
        lost_after = time.monotonic() - cut_at
        meanwhile = docker_client.containers.create(image, ["true"], name=name("meanwhile"))
        time.sleep(1.6)  # reconnects fail meanwhile, with a backoff
        assert not watching.synced and watching.get(meanwhile.id) is None
        relay.open()
        reopened_at = time.monotonic()
        assert asyncio.run(watching.wait_synced(15))
        back_after = time.monotonic() - reopened_at
        record = watching.get(meanwhile.id)
        assert record is not None and record.state == "created"
        assert watching.api_calls["list"] == 2  # the failed attempts never reached a list
        meanwhile.remove()  # and the new stream delivers
        wait_for(lambda: watching.get(meanwhile.id) is None, 5, 0.05)
    finally:
        watching.stop()
    assert lost_after < 1.0, lost_after
    assert back_after < 6.0, back_after  # the backoff is at most 5 s
    print(f"stream lost noticed in {lost_after:.3f}s, synced again {back_after:.2f}s after")


@pytest.mark.docker
def test_stop_returns_at_once_while_the_engine_is_gone(relay):
    watching = EngineObserver(lambda: _private_api_client(f"unix://{relay.path}"), name="gone")
    watching.start()
    assert asyncio.run(watching.wait_synced(30))
    relay.cut()
    wait_for(lambda: not watching.synced, 2, 0.01)
    time.sleep(0.7)  # into the backoff, retrying against a socket that is not there
    began = time.monotonic()
    watching.stop(timeout=5)
    assert time.monotonic() - began < 1.0
    assert observer_threads("gone") == []


def test_api_kinds_are_counted_from_zero() -> None:
    watching = EngineObserver(lambda: None)
    assert dict(watching.api_calls) == dict.fromkeys(API_KINDS, 0)
    assert watching.version == 0 and not watching.synced and watching.records() == []
