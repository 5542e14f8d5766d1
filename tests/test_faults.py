"""Faults on the real engine and a real hub: nothing is lost, nothing is left behind.

Hub restarts, containers killed or removed behind the hub's back (while it runs and while
it is down), the Docker daemon restarted under the hub or unreachable when it starts, a
server that never answers, and a notebook that runs out of memory. Each test asserts what
users and Docker see afterwards (servers reachable through the proxy with the same GPUs,
containers, GPU ids handed out) and records its figures in tests/artifacts/fault-figures.json.
"""

from __future__ import annotations

import contextlib
import html
import http.server
import json
import socketserver
import threading
import time
from pathlib import Path
from typing import Any

import docker
import engine
import pytest
import requests
from faults import (
    SocketRelay,
    docker_daemon_stopped,
    docker_events,
    reconnect,
    record_figures,
)
from harness import container_env, wait_for

pytestmark = pytest.mark.docker

FIGURES = "fault-figures.json"
FAST_POLL = "c.GPUDockerSpawner.poll_interval = 2\n"
# Answer spawn requests at once (202) and report the outcome on the progress stream.
NO_SLOW_SPAWN_WAIT = 'c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}\n'
SERVER_CMD_MARK = b"singleuser"


def _containers(hub: Any, client: docker.DockerClient) -> dict[tuple[str, str], Any]:
    """This hub's containers (running or not) by (user, server); duplicates fail."""
    found: dict[tuple[str, str], Any] = {}
    for container in hub.containers(client):
        key = (
            container.labels["io.gpu-workspaces.user"],
            container.labels["io.gpu-workspaces.server"],
        )
        assert key not in found, f"two containers for {key}"
        found[key] = container
    return found


def _gpus(client: docker.DockerClient, container: Any) -> tuple[str, ...]:
    visible = container_env(client, container.id).get("NVIDIA_VISIBLE_DEVICES", "")
    return tuple(g for g in visible.split(",") if g and g != "void")


def _answers(hub: Any, user: str, token: str) -> bool:
    r = requests.get(
        f"{hub.url}/user/{user}/api/status",
        headers={"Authorization": f"token {token}"},
        allow_redirects=False,
        timeout=10,
    )
    return r.status_code == 200


def _ready_servers(hub: Any, users: list[str]) -> set[str]:
    ready = set()
    for user in users:
        model = hub.server_model(user)
        if model and model.get("ready"):
            ready.add(user)
    return ready


def _orphans(hub: Any, client: docker.DockerClient, users: list[str]) -> list[str]:
    """Containers of this hub that no ready server owns."""
    ready = _ready_servers(hub, users)
    return [c.name for (user, _), c in _containers(hub, client).items() if user not in ready]


def _spawn_all(hub: Any, plan: dict[str, str]) -> None:
    # One after the other: with GPUWS_GPU_WAIT_TIMEOUT=0 a request queued behind another is
    # refused even when GPUs are free (the queue is first come, first served).
    for user, profile in plan.items():
        hub.spawn(user, {"profile": profile})


def _server_token(container: Any) -> str:
    env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
    return env["JUPYTERHUB_API_TOKEN"]


def _free_gpus_on_form(hub: Any, browser: requests.Session, user: str) -> str:
    page = browser.get(f"{hub.url}/hub/spawn/{user}", timeout=30)
    assert page.status_code == 200, page.status_code
    return page.text


def test_hub_restart_keeps_six_mixed_servers(start_hub, docker_client) -> None:
    hub = start_hub(env={"GPUWS_GPU_INVENTORY": "4", "GPUWS_GPU_WAIT_TIMEOUT": "0"})
    plan = {
        "rs-g1": "gpu-1",
        "rs-g2": "gpu-1",
        "rs-g3": "gpu-2",
        "rs-c1": "cpu",
        "rs-c2": "cpu",
        "rs-c3": "cpu",
    }
    _spawn_all(hub, plan)
    tokens = {user: hub.user_token(user) for user in plan}
    before = {
        key: (c.id, _gpus(docker_client, c)) for key, c in _containers(hub, docker_client).items()
    }
    assert sorted(g for _, gpus in before.values() for g in gpus) == ["0", "1", "2", "3"]

    started = time.monotonic()
    hub.restart()
    restart_seconds = time.monotonic() - started

    after = {
        key: (c.id, _gpus(docker_client, c)) for key, c in _containers(hub, docker_client).items()
    }
    ready = _ready_servers(hub, list(plan))
    reachable = {user for user in plan if _answers(hub, user, tokens[user])}
    orphans = _orphans(hub, docker_client, list(plan))
    # every GPU is still held: the next request is refused at once, nothing is created
    refused = hub.request_spawn("rs-new", {"profile": "gpu-1"})
    figures = {
        "servers": len(plan),
        "gpu_servers": 3,
        "servers_lost": len(plan) - len(ready & reachable),
        "containers_replaced": sum(before[k][0] != after.get(k, ("",))[0] for k in before),
        "gpu_assignments_changed": sum(before[k][1] != after.get(k, ("", ()))[1] for k in before),
        "duplicate_or_orphaned_containers": len(after) - len(before) + len(orphans),
        "gpu_request_after_restart": refused.status_code,
        "restart_seconds": round(restart_seconds, 1),
    }
    record_figures(FIGURES, "hub_restart_6_servers", figures)
    assert after == before, "containers or their GPUs changed across the restart"
    assert ready == reachable == set(plan)
    assert not orphans
    assert refused.status_code == 503, refused.text

    # the ledger hands back exactly what a stopped server held
    freed = before[("rs-g1", "")][1]
    hub.stop_server("rs-g1")
    hub.spawn("rs-new", {"profile": "gpu-1"})
    assert _gpus(docker_client, _containers(hub, docker_client)[("rs-new", "")]) == freed


def test_dead_containers_are_noticed_while_the_hub_runs_and_while_it_is_down(
    start_hub, docker_client
) -> None:
    hub = start_hub(
        env={"GPUWS_GPU_INVENTORY": "2", "GPUWS_GPU_WAIT_TIMEOUT": "0"}, extra_config=FAST_POLL
    )
    plan = {"kd-1": "gpu-1", "kd-2": "gpu-1", "kd-3": "cpu", "kd-keep": "cpu"}
    _spawn_all(hub, plan)
    keep_token = hub.user_token("kd-keep")
    containers = _containers(hub, docker_client)
    gpu_of_1 = _gpus(docker_client, containers[("kd-1", "")])
    token_of_1 = _server_token(containers[("kd-1", "")])
    assert hub.api("GET", "/user", token=token_of_1).status_code == 200

    # while the hub runs: one killed, one removed
    containers[("kd-1", "")].kill()
    containers[("kd-3", "")].remove(force=True)
    hub.wait_gone("kd-1", timeout=60)
    hub.wait_gone("kd-3", timeout=60)
    token_revoked = hub.api("GET", "/user", token=token_of_1).status_code == 403
    hub.spawn("kd-1", {"profile": "gpu-1"})
    hub.spawn("kd-3", {"profile": "cpu"})
    regained = _gpus(docker_client, _containers(hub, docker_client)[("kd-1", "")])

    # while the hub is down: one killed, one removed
    hub.stop()
    containers = _containers(hub, docker_client)
    containers[("kd-2", "")].kill()
    containers[("kd-1", "")].remove(force=True)
    hub.start()
    hub.wait_gone("kd-2", timeout=60)
    hub.wait_gone("kd-1", timeout=60)
    # both GPUs are free again: a two-GPU server gets them
    hub.spawn("kd-5", {"profile": "gpu-2"})
    users = [*plan, "kd-5"]
    ready = _ready_servers(hub, users)
    orphans = _orphans(hub, docker_client, users)
    figures = {
        "killed_or_removed_while_up": 2,
        "killed_or_removed_while_down": 2,
        "noticed": 4,
        "token_of_killed_server_revoked": token_revoked,
        "servers_lost": int(not _answers(hub, "kd-keep", keep_token))
        + len({"kd-3", "kd-keep", "kd-5"} - ready),
        "containers_leaked": len(orphans),
        "gpus_freed_after_restart": len(
            _gpus(docker_client, _containers(hub, docker_client)[("kd-5", "")])
        ),
    }
    record_figures(FIGURES, "dead_containers", figures)
    assert token_revoked, "the killed server's API token still works"
    assert regained == gpu_of_1
    assert ready == {"kd-3", "kd-keep", "kd-5"}
    assert _answers(hub, "kd-keep", keep_token)
    assert not orphans
    assert figures["gpus_freed_after_restart"] == 2


def test_docker_daemon_restart_under_a_running_hub(start_hub, docker_client, tmp_path) -> None:
    """dockerd restarts for real while the hub runs; the hub reaches it through a relay that
    the test cuts first, so the outage as the hub sees it begins before any container dies
    (without it, a poll in dockerd's last second of API could truthfully see one exit)."""
    relay = SocketRelay(tmp_path / "hub-docker.sock")
    relay.open()
    try:
        _docker_daemon_restart(start_hub, docker_client, relay)
    finally:
        relay.close()


def _docker_daemon_restart(start_hub, docker_client, relay: SocketRelay) -> None:
    hub = start_hub(
        env={
            "GPUWS_GPU_INVENTORY": "2",
            "GPUWS_GPU_WAIT_TIMEOUT": "0",
            "DOCKER_HOST": relay.docker_host,
        },
        extra_config=FAST_POLL,
    )
    plan = {"dr-gpu": "gpu-1", "dr-cpu": "cpu"}
    _spawn_all(hub, plan)
    before = {
        k: (c.id, _gpus(docker_client, c)) for k, c in _containers(hub, docker_client).items()
    }
    tokens = {user: hub.user_token(user) for user in plan}
    browser = hub.login("dr-viewer")

    pages: dict[str, int] = {}
    relay.close()  # from here on the hub cannot reach Docker
    outage_started = time.monotonic()
    with docker_daemon_stopped() as daemon:
        # a poll ran while Docker was down, and kept the servers
        wait_for(
            lambda: (
                "Docker engine not answering; keeping" in hub.log_path.read_text(errors="replace")
            ),
            timeout=30,
        )
        pages["health"] = requests.get(f"{hub.url}/hub/health", timeout=10).status_code
        pages["home"] = browser.get(f"{hub.url}/hub/home", timeout=30).status_code
        pages["spawn_form"] = browser.get(f"{hub.url}/hub/spawn/dr-viewer", timeout=30).status_code
        pages["api_users"] = hub.api("GET", "/users").status_code
        during = hub.request_spawn("dr-late", {"profile": "cpu"})
        kept_during_outage = _ready_servers(hub, list(plan))
        daemon.start()
    reconnect(docker_client)
    relay.open()  # the hub sees Docker again
    outage_seconds = time.monotonic() - outage_started

    # live-restore off: the containers died with the daemon; each server is either back with
    # its container and GPUs, or marked stopped (and its container gone)
    def settled() -> bool:
        containers = _containers(hub, docker_client)
        for user in plan:
            model = hub.server_model(user)
            running = containers.get((user, ""))
            running_ok = running is not None and running.status == "running"
            if model is None and running is None:
                continue
            if model and model.get("ready") and running_ok:
                continue
            return False
        return True

    wait_for(settled, timeout=90, interval=1)
    after = {k: (c.id, _gpus(docker_client, c)) for k, c in _containers(hub, docker_client).items()}
    back = {user for user in plan if hub.server_model(user)}
    # lost: listed as running but not answering, or a different container / other GPUs
    lost = [
        user
        for user in back
        if after.get((user, "")) != before[(user, "")] or not _answers(hub, user, tokens[user])
    ]
    held = sum(len(gpus) for _, gpus in after.values())
    form = _free_gpus_on_form(hub, browser, "dr-viewer")
    free_shown = f"{2 - held} of 2 GPUs free"
    # what the hub hands out now matches what runs: the free GPUs go to the next request
    hub.spawn("dr-next", {"profile": f"gpu-{2 - held}"} if held < 2 else {"profile": "cpu"})
    users = [*plan, "dr-next"]
    orphans = _orphans(hub, docker_client, users)
    figures = {
        "servers": len(plan),
        "came_back": len(back),
        "marked_stopped": len(plan) - len(back),
        "servers_lost": len(lost),
        "kept_while_docker_was_down": len(kept_during_outage),
        "pages_during_outage": pages,
        "spawn_during_outage": during.status_code,
        "containers_leaked": len(orphans),
        "free_gpus_shown_after": 2 - held,
        "outage_seconds": round(outage_seconds, 1),
    }
    record_figures(FIGURES, "docker_daemon_restart", figures)
    assert not lost
    # the spawn form needs Docker to count the free GPUs: a 503 with a sentence, not a 500
    assert pages == {"health": 200, "home": 200, "spawn_form": 503, "api_users": 200}
    assert during.status_code == 503, during.text
    assert "Docker engine" in during.json()["message"]
    assert kept_during_outage == set(plan), "servers were marked stopped while Docker was down"
    assert free_shown in form
    assert not orphans


def test_hub_started_while_docker_is_unreachable_keeps_its_servers(
    start_hub, docker_client, tmp_path
) -> None:
    hub = start_hub(
        env={"GPUWS_GPU_INVENTORY": "2", "GPUWS_GPU_WAIT_TIMEOUT": "0", "GPUWS_HTTP_TIMEOUT": "10"},
        extra_config=FAST_POLL,
    )
    plan = {"du-a": "gpu-1", "du-b": "gpu-1", "du-c": "cpu"}
    _spawn_all(hub, plan)
    tokens = {user: hub.user_token(user) for user in plan}
    before = _containers(hub, docker_client)
    gpu_of_b = _gpus(docker_client, before[("du-b", "")])

    hub.stop()
    before[("du-b", "")].kill()  # died while the hub was down
    # The hub's Docker socket is missing (as when dockerd is not up yet); it appears later.
    socket = tmp_path / "docker.sock"
    hub.env["DOCKER_HOST"] = f"unix://{socket}"
    hub.start()
    log = hub.log_path.read_text(errors="replace")
    assert "using the last known gateway" in log
    wait_for(lambda: "Docker engine not answering" in hub.log_path.read_text(errors="replace"))
    # du-b does not answer HTTP: JupyterHub marks it stopped without asking Docker
    hub.wait_gone("du-b", timeout=60)
    kept = _ready_servers(hub, list(plan))
    reachable = {u for u in ("du-a", "du-c") if _answers(hub, u, tokens[u])}
    browser = hub.login("du-viewer")
    form_status = browser.get(f"{hub.url}/hub/spawn/du-viewer", timeout=30).status_code
    during = hub.request_spawn("du-new", {"profile": "cpu"})

    before[("du-c", "")].kill()  # dies while the hub cannot see Docker
    socket.symlink_to(engine.SOCKET)  # Docker answers again
    hub.wait_gone("du-c", timeout=60)
    hub.spawn("du-new", {"profile": "gpu-1"})
    after = _containers(hub, docker_client)
    users = [*plan, "du-new"]
    orphans = _orphans(hub, docker_client, users)
    figures = {
        "servers": len(plan),
        "kept_at_start_without_docker": len(kept),
        "reachable_without_docker": len(reachable),
        "spawn_form_without_docker": form_status,
        "spawn_without_docker": during.status_code,
        "dead_servers_noticed": 2,
        "servers_lost": 2 - len({"du-a", "du-c"} & reachable),
        "containers_leaked": len(orphans),
    }
    record_figures(FIGURES, "docker_unreachable_at_hub_start", figures)
    assert kept == {"du-a", "du-c"}
    assert reachable == {"du-a", "du-c"}
    assert form_status == 503  # the free GPUs cannot be counted: a sentence, not a 500
    assert during.status_code == 503 and "Docker engine" in during.json()["message"]
    assert after[("du-a", "")].id == before[("du-a", "")].id
    assert _gpus(docker_client, after[("du-new", "")]) == gpu_of_b
    assert _ready_servers(hub, users) == {"du-a", "du-new"}
    assert not orphans


class _FailingEngine:
    """Stands where the hub's Docker socket was and answers every API call with a 500 and a
    JSON message, as an engine does when it fails a request (docker-py: ``APIError``)."""

    def __init__(self, path: Path) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _fail(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                body = json.dumps({"message": "fault test: the engine failed this call"})
                self.send_response(500)
                # no keep-alive: once this engine is gone, no pooled connection still reaches it
                self.close_connection = True
                self.send_header("Connection", "close")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            do_GET = do_POST = do_DELETE = do_HEAD = _fail

            def log_message(self, *args: Any) -> None:  # unix sockets have no client address
                pass

        path.unlink(missing_ok=True)
        self.server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        self.server.daemon_threads = True
        self.path = path
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _FailingEngine:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.path.unlink(missing_ok=True)


def _pages(hub: Any, admin: requests.Session, viewer: requests.Session) -> dict[str, Any]:
    """The dashboard (page and JSON, as an admin and with a service token) and the form."""
    answers = {
        "dashboard_page": admin.get(f"{hub.url}/hub/gpus", timeout=30),
        "dashboard_json": admin.get(f"{hub.url}/hub/api/gpus", timeout=30),
        "dashboard_json_token": hub.api("GET", "/gpus"),
        "spawn_form": viewer.get(f"{hub.url}/hub/spawn/d5-viewer", timeout=30),
    }
    return answers


def test_dashboard_and_spawn_form_answer_503_with_a_sentence_while_docker_fails(
    start_hub, docker_client, tmp_path
) -> None:
    relay = SocketRelay(tmp_path / "hub-docker.sock")
    relay.open()
    try:
        hub = start_hub(
            env={
                "GPUWS_GPU_INVENTORY": "2",
                "GPUWS_GPU_WAIT_TIMEOUT": "0",
                "DOCKER_HOST": relay.docker_host,
                "GPUWS_ADMIN_USERS": "d5-admin",
            }
        )
        hub.spawn("d5-gpu", {"profile": "gpu-1"})
        admin, viewer = hub.login("d5-admin"), hub.login("d5-viewer")
        before = _pages(hub, admin, viewer)
        log_start = len(hub.log_path.read_bytes())

        relay.close()  # the hub's way to Docker is gone: connections refused
        down = _pages(hub, admin, viewer)
        with _FailingEngine(relay.path):  # Docker answers, with an error to every call
            failing = _pages(hub, admin, viewer)
        relay.open()
        after = _pages(hub, admin, viewer)
        log = hub.log_path.read_bytes()[log_start:].decode(errors="replace")
    finally:
        relay.close()

    def statuses(answers: dict[str, Any]) -> dict[str, int]:
        return {name: r.status_code for name, r in answers.items()}

    figures = {
        "before": statuses(before),
        "docker_unreachable": statuses(down),
        "docker_api_error": statuses(failing),
        "after": statuses(after),
        "tracebacks_in_hub_log": log.count("Traceback"),
    }
    record_figures(FIGURES, "dashboard_and_form_while_docker_fails", figures)
    assert set(figures["before"].values()) == {200}, figures
    assert set(figures["docker_unreachable"].values()) == {503}, figures
    assert set(figures["docker_api_error"].values()) == {503}, figures
    assert set(figures["after"].values()) == {200}, figures
    for answers, says in ((down, "is not answering"), (failing, "with an error")):
        for name in ("dashboard_json", "dashboard_json_token"):
            body = answers[name].json()
            assert answers[name].headers["Content-Type"].startswith("application/json")
            assert body["status"] == 503 and says in body["message"], body
        for name in ("dashboard_page", "spawn_form"):
            page = answers[name]
            assert page.headers["Content-Type"].startswith("text/html"), name
            assert says in html.unescape(page.text) and "try again" in page.text.lower()
            assert "Traceback" not in page.text
    assert figures["tracebacks_in_hub_log"] == 0, log[-4000:]
    # Docker back: the form and the dashboard count from Docker again, the server held one GPU
    assert "1 of 2 GPUs free" in after["spawn_form"].text
    assert after["dashboard_json"].json()["summary"]["allocated"] == 1


def _progress_until_done(hub: Any, user: str) -> list[dict[str, Any]]:
    events = hub.progress_events(user, timeout=120)
    assert events and events[-1].get("failed"), events
    return events


def test_server_that_never_answers_times_out_and_frees_its_gpu(start_hub, docker_client) -> None:
    hub = start_hub(
        env={"GPUWS_GPU_INVENTORY": "1", "GPUWS_HTTP_TIMEOUT": "5", "GPUWS_GPU_WAIT_TIMEOUT": "0"},
        extra_config=NO_SLOW_SPAWN_WAIT
        + 'c.GPUDockerSpawner.cmd = ["python3", "-c", "import time; time.sleep(3600)"]\n',
    )
    outcomes = []
    for user in ("nr-1", "nr-2"):
        r = hub.request_spawn(user, {"profile": "gpu-1"})
        assert r.status_code == 202, r.text
        events = _progress_until_done(hub, user)
        messages = [e.get("message", "") for e in events]
        wait_for(lambda: not hub.containers(docker_client), timeout=60)
        outcomes.append(messages)
    figures = {
        "spawns": 2,
        "timed_out_with_message": sum("did not answer within 5 seconds" in m[-1] for m in outcomes),
        "got_the_gpu_after_the_first_failed": "Assigned GPU 0" in " ".join(outcomes[1]),
        "containers_left": len(hub.containers(docker_client)),
    }
    record_figures(FIGURES, "never_ready", figures)
    for messages in outcomes:
        assert "did not answer within 5 seconds" in messages[-1], messages
        assert "GPUs freed" in messages[-1]
    assert "Assigned GPU 0" in " ".join(outcomes[1]), outcomes[1]
    assert hub.server_model("nr-1") is None or not hub.server_model("nr-1").get("pending")


def test_server_that_exits_at_once_says_so(start_hub, docker_client) -> None:
    hub = start_hub(
        extra_config=NO_SLOW_SPAWN_WAIT
        + 'c.GPUDockerSpawner.cmd = ["python3", "-c", "raise SystemExit(3)"]\n'
        + "c.GPUDockerSpawner.remove = True\n",
    )
    r = hub.request_spawn("ex-1", {"profile": "cpu"})
    assert r.status_code == 202, r.text
    events = _progress_until_done(hub, "ex-1")
    assert "exited before it answered" in events[-1]["message"], events
    wait_for(lambda: not hub.containers(docker_client), timeout=60)


def _raise_oom_score_of_server(container: Any) -> None:
    """Make the kernel's OOM killer pick the notebook server itself in this container."""
    script = (
        "import glob\n"
        "for p in glob.glob('/proc/[0-9]*'):\n"
        "    try:\n"
        "        cmd = open(p + '/cmdline', 'rb').read()\n"
        "    except OSError:\n"
        "        continue\n"
        f"    if {SERVER_CMD_MARK!r} in cmd and b'glob' not in cmd:\n"
        "        open(p + '/oom_score_adj', 'w').write('1000')\n"
    )
    code, out = container.exec_run(["python3", "-c", script])
    assert code == 0, out


def test_out_of_memory_kills_only_that_container(start_hub, docker_client, tmp_path) -> None:
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(
        """
- {slug: cpu, display_name: CPU, default: true}
- {slug: small-gpu, display_name: Small GPU, gpus: 1, mem_limit: 256m}
"""
    )
    hub = start_hub(
        env={
            "GPUWS_GPU_INVENTORY": "1",
            "GPUWS_PROFILES_FILE": str(profiles),
            "GPUWS_GPU_WAIT_TIMEOUT": "0",
        },
        extra_config=FAST_POLL,
    )
    _spawn_all(hub, {"oom-a": "small-gpu", "oom-b": "cpu"})
    tokens = {user: hub.user_token(user) for user in ("oom-a", "oom-b")}
    containers = _containers(hub, docker_client)
    a, b = containers[("oom-a", "")], containers[("oom-b", "")]
    allocate = ["python3", "-c", "b = bytearray(1 << 30)"]

    with docker_events(docker_client) as events:
        # 1. a notebook process over the limit: the kernel kills that process only
        code, _ = a.exec_run(allocate)
        a.reload()
        survived = a.status == "running" and _answers(hub, "oom-a", tokens["oom-a"])
        # 2. the server itself over the limit: the container ends, the hub notices
        _raise_oom_score_of_server(a)
        # the container may be gone before the exec reports back
        with contextlib.suppress(docker.errors.APIError):
            a.exec_run(allocate)
        hub.wait_gone("oom-a", timeout=60)
    b.reload()
    a_actions, b_actions = events.actions(a.id), events.actions(b.id)
    hub.spawn("oom-c", {"profile": "small-gpu"})
    figures = {
        "oom_events_in_the_notebook": a_actions.count("oom"),
        "process_killed_exit_code": code,
        "server_survived_a_process_oom": survived,
        "container_died_exit_codes": events.exit_codes(a.id),
        "server_marked_stopped": hub.server_model("oom-a") is None,
        "other_container_events": [x for x in b_actions if x in ("oom", "die", "kill", "stop")],
        "gpu_freed": _gpus(docker_client, _containers(hub, docker_client)[("oom-c", "")]) == ("0",),
    }
    record_figures(FIGURES, "out_of_memory", figures)
    assert code == 137
    assert survived, "a process's OOM took the server down"
    assert a_actions.count("oom") >= 2, a_actions
    assert "die" in a_actions and "137" in events.exit_codes(a.id)
    assert figures["other_container_events"] == []
    assert b.status == "running" and _answers(hub, "oom-b", tokens["oom-b"])
    assert figures["gpu_freed"]
