"""Homes and shared data against the real engine: what each notebook container mounts.

- a user's home is a named volume that survives stop, container removal and hub restarts;
- GPUWS_SHARED_DATA mounts are read-only, and a bad value stops the hub with its message;
- user names that look like paths or mount specs never reach Docker as anything but an
  escaped volume name.
"""

from __future__ import annotations

import json
import re
import secrets
from urllib.parse import quote

import pytest
import requests
from dockerspawner import DockerSpawner
from native_auth import log_in, sign_up

pytestmark = pytest.mark.docker

HOME = "/home/jovyan"


def _container(hub, client, user):
    matching = [c for c in hub.containers(client) if c.labels.get("io.gpu-workspaces.user") == user]
    assert len(matching) == 1, [c.name for c in hub.containers(client)]
    return matching[0]


def _mounts(container) -> dict[str, dict]:
    container.reload()
    return {m["Destination"]: m for m in container.attrs["Mounts"]}


def _contents(hub, user, token, path):
    return f"{hub.url}/user/{quote(user, safe='')}/api/contents/{path}", {
        "Authorization": f"token {token}"
    }


def test_home_volume_survives_stop_removal_and_hub_restart(start_hub, docker_client):
    hub = start_hub()
    hub.spawn("alice", {"profile": "cpu"})
    home = _mounts(_container(hub, docker_client, "alice"))[HOME]
    assert home["Type"] == "volume" and home["RW"] is True
    assert home["Name"] == f"{hub.prefix}-home-alice"

    url, headers = _contents(hub, "alice", hub.user_token("alice"), "notes.txt")
    r = requests.put(
        url, json={"type": "file", "format": "text", "content": "kept"}, headers=headers, timeout=30
    )
    assert r.status_code == 201, r.text

    hub.stop_server("alice")
    assert hub.containers(docker_client) == []  # the container is removed on stop
    assert docker_client.volumes.get(home["Name"])
    hub.restart()
    hub.spawn("alice", {"profile": "cpu"})
    url, headers = _contents(hub, "alice", hub.user_token("alice"), "notes.txt")
    r = requests.get(url, headers=headers, timeout=30)
    assert r.status_code == 200 and r.json()["content"] == "kept", r.text


def test_shared_data_is_mounted_read_only(start_hub, docker_client, tmp_path):
    datasets, models = tmp_path / "datasets", tmp_path / "models"
    for folder in (datasets, models):
        folder.mkdir()
        folder.chmod(0o755)
        (folder / "README.txt").write_text(f"{folder.name}\n")
        (folder / "README.txt").chmod(0o644)
    hub = start_hub(
        env={"GPUWS_SHARED_DATA": f"{datasets}:{HOME}/datasets,{models}:/data/models:ro"}
    )
    hub.spawn("dora", {"profile": "cpu"})
    container = _container(hub, docker_client, "dora")
    mounts = _mounts(container)
    for source, target in ((datasets, f"{HOME}/datasets"), (models, "/data/models")):
        assert mounts[target]["Type"] == "bind"
        assert mounts[target]["Source"] == str(source)
        assert mounts[target]["RW"] is False
        code, out = container.exec_run(["cat", f"{target}/README.txt"])
        assert code == 0 and out.decode() == f"{source.name}\n", out
        code, out = container.exec_run(["touch", f"{target}/written-by-dora"])
        assert code != 0 and b"Read-only file system" in out, out
    assert mounts[HOME]["RW"] is True
    assert sorted(p.name for p in datasets.iterdir()) == ["README.txt"]


@pytest.mark.parametrize(
    "value, message",
    [
        ("/srv/data:/data:rw", "always mounted read-only"),
        ("/var/run/docker.sock:/data/sock", "is not a data folder"),
    ],
)
def test_bad_shared_data_stops_the_hub_with_its_message(start_hub, value, message):
    with pytest.raises(RuntimeError) as failed:
        start_hub(env={"GPUWS_SHARED_DATA": value})
    assert "GPUWS_SHARED_DATA" in str(failed.value) and message in str(failed.value)
    assert "Traceback" not in str(failed.value)


def _users(hub) -> set[str]:
    r = hub.api("GET", "/users")
    r.raise_for_status()
    return {u["name"] for u in r.json()}


def test_hostile_usernames_cannot_leave_their_volume(start_hub, docker_client):
    hub = start_hub(env={"GPUWS_AUTHENTICATOR": "native", "GPUWS_OPEN_SIGNUP": "1"})
    password = secrets.token_urlsafe(12)

    # Names with a '/' are refused by the sign-up form and by the REST API: no user, no login.
    for name in ("../../etc", "a/../b"):
        assert "Something went wrong" in sign_up(hub.url, name, password)
        with pytest.raises(AssertionError, match="refused"):
            log_in(hub.url, name, password)
        r = hub.api("POST", "/users", json={"usernames": [name]})
        assert r.status_code == 400, r.text
    assert _users(hub) <= {"admin"}

    # Names JupyterHub accepts that look like paths, URL escapes or volume specs: each gets
    # exactly one named volume, its name built from the escaped user name.
    docker_root = docker_client.info()["DockerRootDir"]
    for raw in ("..%2F..%2Fetc", "Eve:etc:rw", "..\\..\\x"):
        assert "successful" in sign_up(hub.url, raw, password)
        log_in(hub.url, raw, password)
        name = raw.lower()  # JupyterHub's normalisation
        assert name in _users(hub)
        r = hub.api("POST", f"/users/{quote(name, safe='')}/server", json={"profile": "cpu"})
        assert r.status_code in (201, 202), r.text
        hub.wait_ready(quote(name, safe=""))
        container = _container(hub, docker_client, name)
        escaped = DockerSpawner._escape(name)
        assert re.fullmatch(r"[a-z0-9-]+", escaped)
        assert container.name == f"{hub.prefix}-{escaped}"
        mounts = container.attrs["Mounts"]
        assert [(m["Type"], m["Destination"]) for m in mounts] == [("volume", HOME)], mounts
        volume = docker_client.volumes.get(mounts[0]["Name"])
        assert volume.name == f"{hub.prefix}-home-{escaped}"
        assert volume.attrs["Mountpoint"] == f"{docker_root}/volumes/{volume.name}/_data"
    print(json.dumps(sorted(_users(hub))))
