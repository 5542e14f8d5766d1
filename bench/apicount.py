"""A counting proxy for the Docker API: how many calls a hub makes, by kind.

The hub is started with ``DOCKER_HOST=unix://<ApiCounter.path>``; every connection it opens
is forwarded byte for byte to the engine's own socket, and each request head read from the
hub's side is counted under :func:`classify` (method + path with the ids taken out). Replies
are never parsed, so streams that stay open (``GET /events``) are counted once, when asked
for, and hijacked connections (attach, exec) are passed through untouched after their head.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import socket
import tempfile
import threading
from typing import BinaryIO
from urllib.parse import urlsplit

# Collections whose second path segment is an id or a name, unless it is one of these verbs.
_COLLECTIONS = frozenset(
    {"containers", "volumes", "networks", "images", "exec", "services", "tasks", "nodes"}
    | {"secrets", "configs", "plugins", "swarm", "distribution"}
)
_NOT_IDS = frozenset({"json", "create", "prune", "search", "load", "get", "init", "join"})
# An image name may hold slashes (/images/quay.io/org/x:1/json): these end its path.
_IMAGE_VERBS = frozenset({"json", "history", "push", "tag", "get"})
_VERSION = re.compile(r"^/v\d+(?:\.\d+)?(?=/|$)")
#: Kinds of call whose answer is a stream that stays open (counted once, when opened).
STREAMING = frozenset({"GET /events"})


def classify(method: str, target: str) -> str:
    """``"GET /v1.43/containers/3f2a…/json?size=0"`` → ``"GET /containers/{id}/json"``."""
    path = _VERSION.sub("", urlsplit(target).path) or "/"
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] in _COLLECTIONS and parts[1] not in _NOT_IDS:
        if parts[0] == "images":
            verb = parts[-1] if len(parts) > 2 and parts[-1] in _IMAGE_VERBS else None
            parts = ["images", "{id}", *([verb] if verb else [])]
        else:
            parts = [parts[0], "{id}", *parts[2:]]
    return f"{method.upper()} /" + "/".join(parts)


def _copy_raw(source: BinaryIO | socket.socket, target: socket.socket) -> None:
    """Copy until the source ends, then tell the other side no more is coming."""
    with contextlib.suppress(OSError):
        while True:
            chunk = source.read1(65536) if hasattr(source, "read1") else source.recv(65536)
            if not chunk:
                break
            target.sendall(chunk)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


def _copy_body(reader: BinaryIO, target: socket.socket, headers: dict[str, str]) -> None:
    """Forward one request body, sized by Content-Length or chunked."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = reader.readline()
            target.sendall(size_line)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:  # the last chunk; trailers end with an empty line
                while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
                    target.sendall(line)
                target.sendall(b"\r\n")
                return
            target.sendall(reader.read(size + 2))  # the chunk and its CRLF
    length = int(headers.get("content-length", "0") or 0)
    while length > 0:
        chunk = reader.read(min(length, 65536))
        if not chunk:
            return
        target.sendall(chunk)
        length -= len(chunk)


class ApiCounter:
    """A unix-socket proxy in front of the engine that counts requests by kind."""

    def __init__(self, upstream: str, path: str | None = None) -> None:
        self.upstream = upstream
        self.path = path or os.path.join(
            tempfile.mkdtemp(prefix="gpuws-apicount-", dir="/tmp"), "docker.sock"
        )
        self._counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._server: socket.socket | None = None

    @property
    def docker_host(self) -> str:
        return f"unix://{self.path}"

    def counts(self) -> collections.Counter[str]:
        """A copy of the counts so far."""
        with self._lock:
            return collections.Counter(self._counts)

    def start(self) -> ApiCounter:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(self.path)
        server.listen(256)
        self._server = server
        threading.Thread(target=self._accept, daemon=True, name="apicount").start()
        return self

    def close(self) -> None:
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.close()
            self._server = None
        with contextlib.suppress(OSError):
            os.unlink(self.path)
            os.rmdir(os.path.dirname(self.path))

    def __enter__(self) -> ApiCounter:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    def _accept(self) -> None:
        while self._server is not None:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            engine.connect(self.upstream)
        except OSError:
            client.close()
            return
        replies = threading.Thread(target=_copy_raw, args=(engine, client), daemon=True)
        replies.start()
        reader = client.makefile("rb")
        try:
            self._requests(reader, engine)
        except (OSError, ValueError):
            pass  # a connection cut mid-request: nothing more to count on it
        finally:
            with contextlib.suppress(OSError):
                engine.shutdown(socket.SHUT_WR)
            replies.join()
            for s in (reader, client, engine):
                with contextlib.suppress(OSError):
                    s.close()

    def _requests(self, reader: BinaryIO, engine: socket.socket) -> None:
        """Count and forward each request of one keep-alive connection until it ends."""
        while True:
            request_line = reader.readline()
            if not request_line:
                return
            if not request_line.strip():
                engine.sendall(request_line)
                continue
            head = [request_line]
            headers: dict[str, str] = {}
            while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
                head.append(line)
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            head.append(b"\r\n")
            method, target = request_line.decode("latin-1").split()[:2]
            with self._lock:
                self._counts[classify(method, target)] += 1
            engine.sendall(b"".join(head))
            if "upgrade" in headers.get("connection", "").lower():
                _copy_raw(reader, engine)  # attach / exec: a raw stream from here on
                return
            _copy_body(reader, engine, headers)


def per_interval(
    before: collections.Counter[str], after: collections.Counter[str], intervals: float
) -> dict[str, float]:
    """Calls of each kind between two snapshots, per interval, most frequent first."""
    diff = after - before
    return {kind: round(n / intervals, 2) for kind, n in diff.most_common()}


__all__ = ["STREAMING", "ApiCounter", "classify", "per_interval"]
