"""The scale benchmark's pure parts: the Docker API call classifier and counting proxy,
the spawn batches, and the report rows (plain dicts in, rows out). No Docker."""

from __future__ import annotations

import http.client
import http.server
import socket
import socketserver
import threading
from pathlib import Path
from typing import Any

import pytest

from bench.apicount import ApiCounter, classify, per_interval
from bench.report import render, scale_headline, scale_rows
from bench.scale import batches


@pytest.mark.parametrize(
    ("method", "target", "kind"),
    [
        ("GET", "/v1.43/containers/json?all=1&filters=%7B%7D", "GET /containers/json"),
        ("get", "/containers/json", "GET /containers/json"),
        ("GET", "/v1.43/containers/3f2a9c/json", "GET /containers/{id}/json"),
        ("GET", "/v1.43/containers/jupyter-alice/json", "GET /containers/{id}/json"),
        ("POST", "/v1.43/containers/create?name=jupyter-bob", "POST /containers/create"),
        ("POST", "/v1.41/containers/abc/start", "POST /containers/{id}/start"),
        ("DELETE", "/v1.43/containers/abc?v=1&force=1", "DELETE /containers/{id}"),
        ("GET", "/v1.43/events?filters=%7B%22type%22%3A%5B%22container%22%5D%7D", "GET /events"),
        ("GET", "/v1.43/version", "GET /version"),
        ("GET", "/_ping", "GET /_ping"),
        ("GET", "/v1.43/info", "GET /info"),
        ("GET", "/v1.43/images/quay.io/jupyter/base:2024/json", "GET /images/{id}/json"),
        ("GET", "/v1.43/images/json", "GET /images/json"),
        ("POST", "/v1.43/images/create?fromImage=x", "POST /images/create"),
        ("GET", "/v1.43/volumes/gpuws-home-alice", "GET /volumes/{id}"),
        ("POST", "/v1.43/volumes/create", "POST /volumes/create"),
        ("POST", "/v1.43/networks/net1/connect", "POST /networks/{id}/connect"),
        ("POST", "/v1.43/exec/e1/start", "POST /exec/{id}/start"),
        ("GET", "/v1.43/tasks?filters=x", "GET /tasks"),
        ("GET", "/v1.43/services/svc1", "GET /services/{id}"),
        ("GET", "/v1.43", "GET /"),
    ],
)
def test_classify(method: str, target: str, kind: str) -> None:
    assert classify(method, target) == kind


def test_per_interval_divides_the_difference() -> None:
    from collections import Counter

    before = Counter({"GET /containers/{id}/json": 10, "GET /events": 1})
    after = Counter({"GET /containers/{id}/json": 40, "GET /events": 1, "GET /containers/json": 3})
    assert per_interval(before, after, 3) == {
        "GET /containers/{id}/json": 10.0,
        "GET /containers/json": 1.0,
    }


class _Upstream(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: several requests on one connection

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding") == "chunked":
            body = b""
            while size := int(self.rfile.readline().strip(), 16):
                body += self.rfile.read(size + 2)[:-2]
            self.rfile.readline()
        else:
            body = self.rfile.read(length)
        reply = f"{self.command} {self.path} {len(body)}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = do_DELETE = _answer

    def address_string(self) -> str:
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.unix_path)


def test_counting_proxy_forwards_and_counts_every_request(tmp_path: Path) -> None:
    upstream = _Upstream(str(tmp_path / "engine.sock"), _Handler)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        with ApiCounter(str(tmp_path / "engine.sock"), str(tmp_path / "count.sock")) as counter:
            conn = _UnixConnection(counter.path)
            answers = []
            for method, path, body in [
                ("GET", "/v1.43/containers/json?all=1", None),
                ("POST", "/v1.43/containers/create?name=a", b'{"Image": "x"}'),
                ("GET", "/v1.43/containers/abc/json", None),
                ("GET", "/v1.43/containers/def/json", None),
            ]:
                conn.request(method, path, body=body)
                answers.append(conn.getresponse().read().decode())
            # a chunked body on the same keep-alive connection
            conn.request("POST", "/v1.43/build", body=iter([b"abc", b"de"]))
            answers.append(conn.getresponse().read().decode())
            conn.close()
            counts = counter.counts()
    finally:
        upstream.shutdown()
        upstream.server_close()
    assert answers == [
        "GET /v1.43/containers/json?all=1 0",
        "POST /v1.43/containers/create?name=a 14",
        "GET /v1.43/containers/abc/json 0",
        "GET /v1.43/containers/def/json 0",
        "POST /v1.43/build 5",
    ]
    assert counts == {
        "GET /containers/json": 1,
        "POST /containers/create": 1,
        "GET /containers/{id}/json": 2,
        "POST /build": 1,
    }


def test_batches_give_every_third_server_a_gpu_for_ours_only() -> None:
    names = [f"s{i:03d}" for i in range(7)]
    assert batches("ours", names, 2) == [
        ({"profile": "gpu-1"}, ["s000", "s003"]),
        ({"profile": "gpu-1"}, ["s006"]),
        ({"profile": "cpu"}, ["s001", "s002"]),
        ({"profile": "cpu"}, ["s004", "s005"]),
    ]
    assert batches("stock", names, 4) == [({}, names[:4]), ({}, names[4:])]


def _run(form_p95: float, calls_small: float, calls_big: float, hub_cpu: float) -> dict[str, Any]:
    return {
        "spawn_small": {"ok": 2, "errors": []},
        "spawn": {"ok": 8, "errors": [], "api_calls_per_spawn": 12.0},
        "rest_small": {"api_calls_per_interval": calls_small},
        "rest": {
            "api_calls_per_interval": calls_big,
            "cpu_pct_of_one_core": {"hub": hub_cpu, "proxy": 0.5, "services": 0.1},
            "hub_rss_mib": 150.0,
            "tree_rss_mib": 220.0,
            "seconds": 60.0,
        },
        "form": {"ms": {"median": form_p95 / 2, "p95": form_p95}},
        "home": {"ms": {"median": 10.0, "p95": 20.0}},
    }


SECTION: dict[str, Any] = {
    "servers": 10,
    "small": 2,
    "poll_interval_s": 10.0,
    "ours": {
        **_run(form_p95=40.0, calls_small=3.0, calls_big=3.0, hub_cpu=1.0),
        "api_gpus": {"ms": {"median": 4.0, "p95": 8.0}},
        "placement": {"ms": {"median": 0.2, "p95": 0.4}, "how": "test"},
    },
    "stock": {**_run(form_p95=8.0, calls_small=2.0, calls_big=10.0, hub_cpu=6.0)},
}


def _by_figure(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["figure"]: r for r in rows}


def test_scale_rows_put_ours_and_stock_side_by_side_with_the_goals() -> None:
    rows = _by_figure(scale_rows(SECTION))
    assert rows["servers up (of 10 asked)"] | {"goal": ""} == {
        "figure": "servers up (of 10 asked)",
        "ours": 10,
        "stock": 10,
        "ratio": 1.0,
        "goal": "",
        "status": "met",
    }
    form = rows["spawn form p95, ms"]
    assert (form["ours"], form["stock"], form["ratio"], form["status"]) == (40.0, 8.0, 5.0, "met")
    assert rows["/hub/api/gpus p95, ms"]["stock"] is None
    assert rows["/hub/api/gpus p95, ms"]["ratio"] is None
    assert rows["placement (acquire + release 1 GPU) p95, ms"]["status"] == "met"
    assert rows["hub process CPU at rest, % of one core"]["status"] == "met"
    slope = rows["added Docker calls per interval per added server (2 → 10)"]
    assert (slope["ours"], slope["stock"], slope["status"]) == (0.0, 1.0, "met")


def test_scale_rows_mark_missed_goals_and_missing_figures() -> None:
    section = {
        **SECTION,
        "ours": {
            **_run(form_p95=150.0, calls_small=2.0, calls_big=10.0, hub_cpu=7.5),
            "spawn": {"ok": 7, "errors": ["s009: HTTP 500"]},
        },
    }
    rows = _by_figure(scale_rows(section))
    assert rows["servers up (of 10 asked)"]["status"] == "**missed**"
    assert rows["spawn form p95, ms"]["status"] == "**missed**"
    assert rows["hub process CPU at rest, % of one core"]["status"] == "**missed**"
    assert rows["placement (acquire + release 1 GPU) p95, ms"]["status"] == "not measured"
    assert rows["added Docker calls per interval per added server (2 → 10)"]["status"] == (
        "**missed**"
    )
    headline = {r["figure"]: r["status"] for r in scale_headline(section)}
    assert headline["10 idle servers: spawn form p95, ms"] == "**missed**"
    assert all(r["target"] for r in scale_headline(section))


def _poll(p95: float, calls: float, running: int) -> dict[str, Any]:
    return {
        "poll_cycle": {
            "ms": {"median": p95 / 2, "p95": p95},
            "answered_running": running,
            "api_calls_per_cycle": calls,
            "api_calls_by_kind": {"GET /containers/{id}/json": calls} if calls else {},
        }
    }


@pytest.mark.parametrize(
    ("ours", "stock", "running_status", "calls_status"),
    [
        # ours reads the observer's cache, stock inspects every container: O(1) met
        (_poll(4.0, 0.0, 10), _poll(80.0, 10.0, 10), "met", "met"),
        # the goal is < 0.1 call per server: at 10 servers 1 call per cycle is too many
        (_poll(4.0, 1.0, 10), _poll(80.0, 10.0, 10), "met", "**missed**"),
        # a cycle where a poll said "stopped" did not time the same work as the other
        (_poll(4.0, 0.0, 9), _poll(80.0, 10.0, 10), "**missed**", "met"),
        (_poll(4.0, 0.0, 10), _poll(80.0, 10.0, 8), "**missed**", "met"),
        ({"poll_cycle": {"error": "RuntimeError: no container"}}, {}, "**missed**", "not measured"),
    ],
)
def test_scale_rows_report_one_poll_cycle(
    ours: dict[str, Any], stock: dict[str, Any], running_status: str, calls_status: str
) -> None:
    section = {
        **SECTION,
        "ours": {**SECTION["ours"], **ours},
        "stock": {**SECTION["stock"], **stock},
    }
    rows = _by_figure(scale_rows(section))
    p50, p95 = (
        rows["one poll cycle of 10 servers p50, ms"],
        rows["one poll cycle of 10 servers p95, ms"],
    )
    calls = rows["Docker API calls per poll cycle of 10 servers"]
    running = rows["polls answering running in one cycle (of 10)"]
    assert (running["status"], calls["status"], calls["goal"]) == (
        running_status,
        calls_status,
        "O(1): < 1",
    )
    got = [(row["ours"], row["stock"]) for row in (p50, p95, calls, running)]
    poll = (ours.get("poll_cycle") or {}), (stock.get("poll_cycle") or {})
    assert got == [
        tuple((p.get("ms") or {}).get("median") for p in poll),
        tuple((p.get("ms") or {}).get("p95") for p in poll),
        tuple(p.get("api_calls_per_cycle") for p in poll),
        tuple(p.get("answered_running") for p in poll),
    ]
    if ours.get("poll_cycle", {}).get("ms"):
        assert p95["ratio"] == 0.05
    headline = {r["figure"]: r["status"] for r in scale_headline(section)}
    assert (
        headline["10 idle servers: Docker API calls per poll cycle of 10 servers"] == calls_status
    )


def test_scale_section_renders_the_poll_cycle_calls_and_its_error() -> None:
    section = {
        **SECTION,
        "timestamp": "t",
        "poll_rounds": 20,
        "ours": {**SECTION["ours"], **_poll(4.0, 0.0, 10)},
        "stock": {**SECTION["stock"], "poll_cycle": {"error": "RuntimeError: no container"}},
    }
    text = render({"sections": {"scale": section}})
    assert "every server's `poll()` at once, 20 times" in text
    assert (
        "| Docker API calls per poll cycle of 10 servers | 0.00 | - | - | O(1): < 1 | met |" in text
    )
    assert "ours: Docker calls per poll cycle, by kind: none." in text
    assert "stock: errors: poll cycle: RuntimeError: no container" in text


def test_scale_section_renders_its_table_and_errors() -> None:
    section = {**SECTION, "timestamp": "t", "stock": {"error": "RuntimeError: hub exited"}}
    text = render({"sections": {"scale": section}})
    assert "## 6. At 10 idle servers" in text
    assert "| spawn form p95, ms | 40.00 | - | - | < 100 ms | met |" in text
    assert "stock: errors: RuntimeError: hub exited" in text
