"""The session endpoint, session limits and stale saved profiles, on a real hub and engine.

What the JupyterLab extension reads (``/hub/api/gpus/servers/...``) with the server's own
token, extensions kept across a hub restart, a session limit stopping a busy server, and a
start that reuses a removed profile starting nothing.
"""

from __future__ import annotations

import html
import json
import re
import secrets
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
from harness import Hub, container_env, visible_gpus
from test_operations import gpus, scrape, start_busy_kernel

pytestmark = pytest.mark.docker
METRICS_TOKEN = secrets.token_hex(16)


def _unix(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _profiles(path: Path, *, limited: dict[str, Any], extra: bool = True) -> Path:
    profiles = [
        {"slug": "cpu", "display_name": "CPU only", "default": True},
        {"slug": "gpu-1", "display_name": "1 GPU", "gpus": 1, **limited},
    ]
    if extra:
        profiles.append({"slug": "old-gpu", "display_name": "Old GPU", "gpus": 1})
    path.write_text(json.dumps(profiles))
    return path


def _server_token(client: docker.DockerClient, hub: Hub, user: str) -> str:
    """The token JupyterHub gave the user's server (what the extension in it uses)."""
    container = hub.server_container(client, user)
    return container_env(client, container.id)["JUPYTERHUB_API_TOKEN"]


def test_a_server_reads_and_extends_its_own_session_and_no_other(
    start_hub: Any, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    limited = {"max_age": "10m", "max_extensions": 1, "extend_by": "5m"}
    hub = start_hub(
        env={
            "GPUWS_GPU_INVENTORY": gpus(2, 60),
            "GPUWS_PROFILES_FILE": str(_profiles(tmp_path / "p.json", limited=limited)),
            "GPUWS_GPU_IDLE_TIMEOUT": "1800",
            "GPUWS_STOP_WARNING": "120",
        }
    )
    hub.spawn("sa-ada", {"profile": "gpu-1"})
    hub.spawn("sa-bo", {"profile": "cpu"})
    token = _server_token(docker_client, hub, "sa-ada")
    (gpu,) = visible_gpus(docker_client, hub.server_container(docker_client, "sa-ada").id)

    r = hub.api("GET", "/gpus/servers/sa-ada", token=token)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert [g["id"] for g in doc["gpus"]] == [gpu]
    assert doc["gpus"][0]["name"] == "Test A100-SXM4-80GB" and doc["gpus"][0]["memory_mib"]
    assert doc["profile"] == {"slug": "gpu-1", "display_name": "1 GPU"}
    since = _unix(doc["since"])
    assert abs(since - time.time()) < 120
    assert doc["session"]["max_age_seconds"] == 600
    assert _unix(doc["session"]["deadline"]) == pytest.approx(since + 600, abs=1)
    assert _unix(doc["idle"]["deadline"]) > time.time() + 1700
    assert (doc["stop_reason"], doc["warn_before_seconds"]) == ("session", 120)
    assert "idle for 30 min are stopped" in doc["idle"]["rule"]

    # the server's token reads its own server only; another user's token neither (JupyterHub
    # answers 404 where a token may not even know the server, 403 where it may)
    assert hub.api("GET", "/gpus/servers/sa-bo", token=token).status_code in (403, 404)
    bo = hub.user_token("sa-bo")
    assert hub.api("GET", "/gpus/servers/sa-ada", token=bo).status_code in (403, 404)
    bo_doc = hub.api("GET", "/gpus/servers/sa-bo", token=bo).json()
    assert bo_doc["gpus"] == [] and bo_doc["stop_at"] is None
    assert hub.api("GET", "/gpus/servers/sa-nobody").status_code == 404

    # one extension (the profile allows one), then a sentence
    r = hub.api("POST", "/gpus/servers/sa-ada", token=token, json={"action": "extend"})
    assert r.status_code == 200, r.text
    assert r.json()["session"]["extensions_used"] == 1
    assert _unix(r.json()["session"]["deadline"]) == pytest.approx(since + 900, abs=1)
    r = hub.api("POST", "/gpus/servers/sa-ada", token=token, json={"action": "extend"})
    assert r.status_code == 409 and "already extended once" in r.json()["message"], r.text
    r = hub.api("POST", "/gpus/servers/sa-ada", token=token, json={"action": "stop"})
    assert r.status_code == 400 and "extend" in r.json()["message"], r.text
    assert hub.api("POST", "/gpus/servers/sa-bo", token=token, json={}).status_code in (403, 404)

    # the extension is in the hub's record of the server: a restart keeps it
    hub.restart()
    doc = hub.api("GET", "/gpus/servers/sa-ada", token=token).json()
    assert doc["session"]["extensions_used"] == 1 and doc["session"]["can_extend"] is False
    assert _unix(doc["session"]["deadline"]) == pytest.approx(since + 900, abs=1)


def test_a_session_limit_stops_a_busy_server_at_its_deadline(
    start_hub: Any, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    hub = start_hub(
        env={
            "GPUWS_GPU_INVENTORY": gpus(1, 62),
            "GPUWS_PROFILES_FILE": str(
                _profiles(tmp_path / "p.json", limited={"max_age": 25}, extra=False)
            ),
            "GPUWS_GPU_IDLE_TIMEOUT": "1800",
            "GPUWS_IDLE_CHECK_INTERVAL": "1",
            "GPUWS_METRICS_TOKEN": METRICS_TOKEN,
        }
    )
    hub.spawn("sl-cy", {"profile": "gpu-1"})
    start_busy_kernel(hub, "sl-cy")
    deadline = _unix(hub.api("GET", "/gpus/servers/sl-cy").json()["session"]["deadline"])
    container = hub.server_container(docker_client, "sl-cy")

    hub.wait_gone("sl-cy", timeout=90)
    gone_at = time.time()
    assert deadline <= gone_at <= deadline + 20, (deadline, gone_at)
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(container.id)
    log = hub.log_path.read_text()
    assert "GPU reclaimer: stopping sl-cy" in log and "its session limit is reached" in log
    # stopped through the REST API as the reclaimer service, and counted apart from idle ones
    assert " DELETE /hub/api/users/sl-cy/server (gpu-reclaimer@" in log
    counted = scrape(hub, METRICS_TOKEN)
    assert counted[("jupyterhub_session_limit_stops_total", ())] == 1
    assert counted[("jupyterhub_gpu_idle_reclaimed_total", ())] == 0


def test_a_start_reusing_a_removed_profile_starts_nothing_and_points_to_the_form(
    start_hub: Any, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    profiles = _profiles(tmp_path / "p.json", limited={})
    hub = start_hub(env={"GPUWS_GPU_INVENTORY": gpus(1, 63), "GPUWS_PROFILES_FILE": str(profiles)})
    hub.spawn("st-dee", {"profile": "old-gpu"})
    hub.stop_server("st-dee")
    _profiles(profiles, limited={}, extra=False)  # the admin removes 'old-gpu'
    hub.restart()

    # a start with no options (the REST API, the admin page's start button) reuses the saved
    # ones: refused with one sentence, nothing started
    r = hub.request_spawn("st-dee")
    assert r.status_code == 409, f"{r.status_code} {r.text}"
    message = r.json()["message"]
    assert "'old-gpu'" in message and "nothing was started" in message, message
    assert "/hub/spawn/st-dee" in message and "'cpu' is preselected" in message, message
    assert "Traceback" not in r.text
    assert not hub.containers(docker_client, status="running")
    assert hub.server_model("st-dee") is None

    # the form: the default preselected, and the sentence
    session = hub.login("st-dee")
    page = session.get(f"{hub.url}/hub/spawn/st-dee", timeout=30)
    assert page.status_code == 200
    text = html.unescape(page.text)
    notes = re.findall(r'<li class="gpuws-note">(.*?)</li>', text, re.S)
    assert any("'old-gpu'" in n and "'cpu' is preselected" in n for n in notes), notes
    checked = re.findall(r'<input[^>]*name="profile"[^>]*value="([^"]+)"[^>]*checked', text)
    assert checked == ["cpu"], checked
    # and a start from the form works
    xsrf = session.cookies.get("_xsrf", "")
    r = session.post(
        f"{hub.url}/hub/spawn/st-dee",
        data={"profile": "cpu", "_xsrf": xsrf},
        allow_redirects=False,
        timeout=60,
    )
    assert r.status_code == 302, r.status_code
    hub.wait_ready("st-dee")


def test_the_extension_api_is_not_reachable_without_a_token(start_hub: Any) -> None:
    hub = start_hub()
    r = requests.get(f"{hub.url}/hub/api/gpus/servers/anyone", timeout=10)
    assert r.status_code == 403, r.status_code
