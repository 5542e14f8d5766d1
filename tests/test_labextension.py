"""The JupyterLab extension @gpu-workspaces/lab and its server extension gpuws_lab
(images/labextension), for real in the built notebook images: installed and enabled, built
without node or node_modules left behind, and gpuws/status answering the contract's document
without counting as user activity."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import docker
import pytest
from docker.models.containers import Container

pytestmark = pytest.mark.docker

TOKEN = "gpuws-test-token"
STATUS_KEYS = {"hub", "hub_error", "nvml", "nvml_error", "visible_devices"}
ANSI = re.compile(r"\x1b\[[0-9;]*m")

# A stand-in hub on 127.0.0.1:8081 inside the container: a plain file server, so the GPU
# session endpoint is missing (404) and POSTs are refused (501), as on a hub without it.
SERVER = (
    "python -m http.server 8081 --bind 127.0.0.1 --directory /tmp >/dev/null 2>&1 & "
    "exec jupyter server --ip=127.0.0.1 --port=8888 --no-browser "
    f"--IdentityProvider.token={TOKEN} --ServerApp.root_dir=/home/jovyan"
)

# Runs in the container: every request the tests look at, answered as one JSON line.
PROBE = f"""
import json, time, urllib.error, urllib.request

def call(path, method="GET"):
    request = urllib.request.Request(
        "http://127.0.0.1:8888" + path, method=method,
        data=b"" if method == "POST" else None,
        headers={{"Authorization": "token {TOKEN}"}},
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            body = response.read().decode()
            is_json = path.startswith(("/api", "/gpuws"))
            return response.status, (json.loads(body) if is_json else body)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read().decode() or "null")

for _ in range(60):
    try:
        call("/api/status")
        break
    except OSError:
        time.sleep(0.5)
before = call("/api/status")[1]["last_activity"]
time.sleep(1.1)
polls = []
for _ in range(3):
    polls.append(call("/gpuws/status"))
    time.sleep(0.3)
after_polls = call("/api/status")[1]["last_activity"]
keep = call("/gpuws/keep", "POST")
extend = call("/gpuws/extend", "POST")
after_actions = call("/api/status")[1]["last_activity"]
lab = call("/lab")
call("/api/contents")
after_contents = call("/api/status")[1]["last_activity"]
print(json.dumps({{
    "before": before, "after_polls": after_polls, "after_actions": after_actions,
    "after_contents": after_contents, "polls": polls, "keep": keep, "extend": extend,
    "lab_status": lab[0], "lab_has_extension": "@gpu-workspaces/lab" in lab[1],
}}))
"""


def _sh(container: Container, command: str) -> str:
    code, output = container.exec_run(["sh", "-c", command], user="1000", demux=False)
    text = ANSI.sub("", output.decode(errors="replace"))
    assert code == 0, f"{command!r} failed ({code}):\n{text}"
    return text


@pytest.fixture
def server(
    docker_client: docker.DockerClient, notebook_images: dict[str, str]
) -> Iterator[Container]:
    """A jupyter server in the notebook-cpu image, given two GPUs' ids and a hub without
    the session endpoint."""
    container = docker_client.containers.run(
        notebook_images["cpu"],
        ["sh", "-c", SERVER],
        entrypoint=[],
        environment={
            "NVIDIA_VISIBLE_DEVICES": "0,1",
            "JUPYTERHUB_API_URL": "http://127.0.0.1:8081/hub/api",
            "JUPYTERHUB_API_TOKEN": "not-a-hub-token",
            "JUPYTERHUB_USER": "alice",
            "JUPYTERHUB_SERVER_NAME": "",
        },
        network_mode="none",
        detach=True,
    )
    try:
        yield container
    finally:
        container.remove(force=True)


def _probe(container: Container) -> dict:
    output = _sh(container, f"cat > /tmp/probe.py <<'EOF'\n{PROBE}\nEOF\npython /tmp/probe.py")
    return json.loads(output.strip().splitlines()[-1])


def _assert_sentence(text: object) -> None:
    assert isinstance(text, str) and len(text) > 10, text
    assert text[0].isupper() and text.endswith("."), text
    assert "\n" not in text, text


def test_extension_is_installed_and_enabled(server: Container) -> None:
    labext = _sh(server, "jupyter labextension list 2>&1")
    assert re.search(r"@gpu-workspaces/lab v\S+ enabled\s+OK", labext), labext
    serverext = _sh(server, "jupyter server extension list 2>&1")
    assert re.search(r"gpuws_lab enabled", serverext), serverext
    assert re.search(r"gpuws_lab\s+\S*\s*OK", serverext), serverext
    files = _sh(server, "ls /opt/venv/share/jupyter/labextensions/@gpu-workspaces/lab/static")
    assert re.search(r"remoteEntry\.[0-9a-f]+\.js", files), files


def test_no_build_tools_in_the_image(server: Container) -> None:
    # node_modules, Node.js and the wheelhouse stay in the build stages (Debian's own
    # ensurepip wheels in /usr/share/python-wheels are the base's, not ours).
    found = _sh(
        server,
        "find / -xdev \\( -name node_modules -o -name 'nodejs*' -o -name '*.whl' \\) "
        "! -path '/usr/share/python-wheels/*' -print 2>/dev/null; command -v node npm || true",
    )
    assert found.strip() == "", found
    freeze = _sh(server, "pip freeze --all")
    assert "nodejs" not in freeze.lower(), freeze


def test_status_without_hub_or_driver_and_no_activity(server: Container) -> None:
    seen = _probe(server)
    for code, status in seen["polls"]:
        assert code == 200, status
        assert set(status) == STATUS_KEYS, status
        assert status["hub"] is None
        _assert_sentence(status["hub_error"])
        assert "404" in status["hub_error"], status["hub_error"]
        assert status["nvml"] is None
        _assert_sentence(status["nvml_error"])
        assert status["visible_devices"] == "0,1"
    # The hub refuses both actions: a sentence, not a traceback.
    code, answer = seen["keep"]
    assert code == 502, answer
    _assert_sentence(answer["message"])
    code, answer = seen["extend"]
    assert code == 502, answer
    _assert_sentence(answer["message"])
    # Polling (and the refused actions) left the server's last activity where it was...
    assert seen["after_polls"] == seen["before"], seen
    assert seen["after_actions"] == seen["before"], seen
    # ...while an ordinary API call does move it: the check above can fail.
    assert seen["after_contents"] != seen["before"], seen
    assert seen["lab_status"] == 200 and seen["lab_has_extension"], seen


def _status_once(client: docker.DockerClient, image: str) -> dict:
    """gpuws/status of a server started in image with no hub environment at all."""
    container = client.containers.run(
        image, ["sh", "-c", SERVER], entrypoint=[], network_mode="none", detach=True
    )
    fetch = (
        "import urllib.request; print(urllib.request.urlopen(urllib.request.Request("
        "'http://127.0.0.1:8888/gpuws/status', headers={'Authorization': "
        f"'token {TOKEN}'}}), timeout=20).read().decode())"
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            code, output = container.exec_run(["python", "-c", fetch], user="1000")
            if code == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert code == 0, output.decode()
        return json.loads(output.decode().strip().splitlines()[-1])
    finally:
        container.remove(force=True)


def test_status_without_hub_environment(
    docker_client: docker.DockerClient, notebook_images: dict[str, str]
) -> None:
    # Not started by JupyterHub and no GPUs: still the whole document, with its reasons.
    status = _status_once(docker_client, notebook_images["cuda"])
    assert set(status) == STATUS_KEYS, status
    assert status["hub"] is None
    _assert_sentence(status["hub_error"])
    assert "JupyterHub" in status["hub_error"], status["hub_error"]
    assert status["nvml"] is None
    _assert_sentence(status["nvml_error"])
    assert "not installed" in status["nvml_error"], status["nvml_error"]
    # The CUDA base may set NVIDIA_VISIBLE_DEVICES=all (Dockerfile note); ours does not.
    assert status["visible_devices"] in (None, "all"), status


def test_status_with_nvml_but_no_driver(
    docker_client: docker.DockerClient, datascience_images: dict[str, str]
) -> None:
    # datascience-cuda has nvidia-ml-py: NVML itself says why there is nothing to show.
    status = _status_once(docker_client, datascience_images["cuda"])
    assert set(status) == STATUS_KEYS, status
    assert status["nvml"] is None
    _assert_sentence(status["nvml_error"])
    assert "NVIDIA driver" in status["nvml_error"], status["nvml_error"]
