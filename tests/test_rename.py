"""Renaming a stopped named server (JupyterHub 6, ``PATCH /users/:name/servers/:server``)
never costs its user the home: the shipped home volume is per user, and a volume named after
the server makes the hub refuse the rename with a sentence instead."""

from __future__ import annotations

import contextlib

import docker
import pytest

pytestmark = pytest.mark.docker

NAMED = "c.JupyterHub.allow_named_servers = True\n"
MARK = "/home/jovyan/kept-across-rename.txt"


def _exec(container, command: str) -> str:
    code, out = container.exec_run(["sh", "-c", command])
    assert code == 0, out
    return str(out.decode().strip())


def test_rename_keeps_the_homes_files(start_hub, docker_client):
    hub = start_hub(extra_config=NAMED)
    hub.spawn("ren", {"profile": "cpu"}, server="alpha")
    _exec(hub.server_container(docker_client, "ren", "alpha"), f"echo written > {MARK}")
    hub.stop_server("ren", "alpha")
    r = hub.api("PATCH", "/users/ren/servers/alpha", json={"name": "beta"})
    assert r.status_code == 200, r.text
    assert set(hub.api("GET", "/users/ren").json()["servers"]) <= {"beta"}
    hub.spawn("ren", {"profile": "cpu"}, server="beta")
    assert _exec(hub.server_container(docker_client, "ren", "beta"), f"cat {MARK}") == "written"


def test_rename_is_refused_when_a_volume_is_named_after_the_server(start_hub, docker_client):
    volume = "gpuwsrename-{username}-{servername}"
    hub = start_hub(
        extra_config=NAMED + f"c.GPUDockerSpawner.volumes = {{{volume!r}: '/home/jovyan'}}\n"
    )
    try:
        hub.spawn("rex", {"profile": "cpu"}, server="alpha")
        hub.stop_server("rex", "alpha")
        r = hub.api("PATCH", "/users/rex/servers/alpha", json={"name": "beta"})
        assert r.status_code == 400, r.text
        message = r.json()["message"]
        assert "cannot be renamed" in message and "Nothing was changed" in message
        assert "Traceback" not in r.text
        # nothing changed: the server keeps its name and starts with its own home again
        hub.spawn("rex", {"profile": "cpu"}, server="alpha")
    finally:
        hub.cleanup(docker_client)
        for found in docker_client.volumes.list(filters={"name": "gpuwsrename-"}):
            with contextlib.suppress(docker.errors.APIError):
                found.remove(force=True)
