"""The walking skeleton against the real engine: GPUs, /dev/shm, ports, tokens, stop/remove.

Each test starts a real JupyterHub + configurable-http-proxy from jupyterhub_config.py and
asserts on what Docker and the container show, and on HTTP answers through the proxy.
"""

from __future__ import annotations

import requests
from harness import container_env, hook_calls_for, wait_for

pytestmark = __import__("pytest").mark.docker

NO_PROFILES = "c.GPUDockerSpawner.profiles = []\n"
FOUR_FAKE_GPUS = {"GPUWS_GPU_INVENTORY": "4"}


def _container(hub, client, user):
    containers = hub.containers(client, status="running")
    matching = [c for c in containers if c.labels.get("io.gpu-workspaces.user") == user]
    assert len(matching) == 1, [c.name for c in containers]
    matching[0].reload()
    return matching[0]


def _shm_bytes(container) -> int:
    code, out = container.exec_run(["df", "-B1", "--output=size", "/dev/shm"])
    assert code == 0, out
    return int(out.decode().split()[-1])


def test_server_answers_through_proxy_only_with_its_users_token(start_hub, docker_client):
    hub = start_hub(extra_config=NO_PROFILES)
    hub.spawn("alice")
    alice_token = hub.user_token("alice")
    bob_token = hub.user_token("bob")
    status_url = f"{hub.url}/user/alice/api/status"

    ok = requests.get(status_url, headers={"Authorization": f"token {alice_token}"}, timeout=10)
    assert ok.status_code == 200, ok.text
    assert "started" in ok.json()

    anonymous = requests.get(status_url, allow_redirects=False, timeout=10)
    assert anonymous.status_code in (302, 401, 403)
    if anonymous.status_code == 302:
        assert (
            "/hub/login" in anonymous.headers["Location"]
            or "/hub/api/oauth2" in (anonymous.headers["Location"])
        )
    other = requests.get(
        status_url,
        headers={"Authorization": f"token {bob_token}"},
        allow_redirects=False,
        timeout=10,
    )
    assert other.status_code in (403, 404), other.status_code


def test_gpu_device_ids_reach_docker_and_the_container(start_hub, docker_client):
    hub = start_hub(
        env=FOUR_FAKE_GPUS,
        extra_config=NO_PROFILES + 'c.GPUDockerSpawner.gpu_device_ids = ["1", "3"]\n',
    )
    hub.spawn("gina")
    container = _container(hub, docker_client, "gina")

    requests_ = container.attrs["HostConfig"]["DeviceRequests"]
    assert len(requests_) == 1
    assert requests_[0]["Driver"] == "nvidia"
    assert requests_[0]["DeviceIDs"] == ["1", "3"]
    assert requests_[0]["Capabilities"] == [["compute", "utility"]]
    env = container_env(docker_client, container.id)
    assert env["NVIDIA_VISIBLE_DEVICES"] == "1,3"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert hook_calls_for(container.id), "the nvidia hook was not run for the container"
    assert container.labels["io.gpu-workspaces.gpus"] == "1,3"


def test_gpu_count_gets_that_many_distinct_gpus(start_hub, docker_client):
    hub = start_hub(
        env=FOUR_FAKE_GPUS, extra_config=NO_PROFILES + "c.GPUDockerSpawner.gpu_count = 2\n"
    )
    hub.spawn("carl")
    hub.spawn("dana")
    seen = []
    for user in ("carl", "dana"):
        container = _container(hub, docker_client, user)
        visible = container_env(docker_client, container.id)["NVIDIA_VISIBLE_DEVICES"].split(",")
        assert len(visible) == 2
        assert visible == container.attrs["HostConfig"]["DeviceRequests"][0]["DeviceIDs"]
        seen += visible
    assert sorted(seen) == ["0", "1", "2", "3"]


def test_cpu_server_has_no_device_request(start_hub, docker_client):
    hub = start_hub(env=FOUR_FAKE_GPUS, extra_config=NO_PROFILES)
    hub.spawn("cora")
    container = _container(hub, docker_client, "cora")
    assert not container.attrs["HostConfig"].get("DeviceRequests")
    # set to "void" so a host whose default runtime is nvidia hands it no GPU either
    assert container_env(docker_client, container.id).get("NVIDIA_VISIBLE_DEVICES") == "void"
    assert not hook_calls_for(container.id)


def test_shm_size_configured_and_derived(start_hub, docker_client):
    hub = start_hub(extra_config=NO_PROFILES + "c.GPUDockerSpawner.mem_limit = '1G'\n")
    # derived: half the 1 GiB memory limit
    hub.spawn("derek")
    derived = _container(hub, docker_client, "derek")
    assert derived.attrs["HostConfig"]["ShmSize"] == 512 * 1024**2
    assert _shm_bytes(derived) == 512 * 1024**2

    explicit_hub = start_hub(extra_config=NO_PROFILES + "c.GPUDockerSpawner.shm_size = '256m'\n")
    explicit_hub.spawn("sam")
    explicit = _container(explicit_hub, docker_client, "sam")
    assert _shm_bytes(explicit) == 256 * 1024**2

    default_hub = start_hub(extra_config=NO_PROFILES)
    default_hub.spawn("dora")
    default = _container(default_hub, docker_client, "dora")
    assert _shm_bytes(default) == 1024**3, "no memory limit: the 1 GiB default, not Docker's 64 MB"


def test_container_is_private_non_root_and_token_only_in_env(start_hub, docker_client):
    hub = start_hub(extra_config=NO_PROFILES)
    hub.spawn("tina")
    container = _container(hub, docker_client, "tina")
    attrs = container.attrs

    assert not attrs["HostConfig"].get("PortBindings")
    for bindings in (attrs["NetworkSettings"].get("Ports") or {}).values():
        assert not bindings, "a notebook port is published on the host"
    assert attrs["Config"]["User"] and attrs["Config"]["User"].split(":")[0] not in (
        "",
        "0",
        "root",
    )
    _code, out = container.exec_run(["id", "-u"])
    assert out.decode().strip() == "1000"

    env = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
    token = env["JUPYTERHUB_API_TOKEN"]
    assert len(token) >= 32
    exposed = {
        "labels": attrs["Config"]["Labels"],
        "cmd": attrs["Config"]["Cmd"],
        "entrypoint": attrs["Config"]["Entrypoint"],
        "args": attrs["Args"],
        "hostconfig": attrs["HostConfig"],
    }
    assert token not in repr(exposed)
    assert token not in hub.log_path.read_text(errors="replace")
    assert token not in container.logs().decode(errors="replace")


def test_stop_removes_container_and_revokes_token_then_respawn(start_hub, docker_client):
    hub = start_hub(extra_config=NO_PROFILES)
    hub.spawn("rita")
    container = _container(hub, docker_client, "rita")
    env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
    server_token = env["JUPYTERHUB_API_TOKEN"]
    assert hub.api("GET", "/user", token=server_token).status_code == 200

    hub.stop_server("rita")
    assert not hub.containers(docker_client), "stop did not remove the container"
    assert hub.api("GET", "/user", token=server_token).status_code == 403

    hub.spawn("rita")
    assert _container(hub, docker_client, "rita").id != container.id


def test_keep_stopped_container_when_remove_is_off(start_hub, docker_client):
    hub = start_hub(extra_config=NO_PROFILES + "c.GPUDockerSpawner.remove = False\n")
    hub.spawn("kim")
    first = _container(hub, docker_client, "kim")
    hub.stop_server("kim")
    kept = hub.containers(docker_client)
    assert [c.id for c in kept] == [first.id]
    kept[0].reload()
    assert kept[0].status == "exited"
    hub.spawn("kim")
    assert _container(hub, docker_client, "kim").id == first.id


def test_host_port_mode_binds_loopback_only(start_hub, docker_client):
    hub = start_hub(extra_config=NO_PROFILES + "c.GPUDockerSpawner.host_port_mode = True\n")
    hub.spawn("hank")
    container = _container(hub, docker_client, "hank")
    bindings = [b for v in container.attrs["HostConfig"]["PortBindings"].values() for b in v]
    assert bindings and all(b["HostIp"] == "127.0.0.1" for b in bindings)
    token = hub.user_token("hank")
    r = requests.get(
        f"{hub.url}/user/hank/api/status", headers={"Authorization": f"token {token}"}, timeout=10
    )
    assert r.status_code == 200


def test_host_port_mode_refuses_public_address(start_hub):
    try:
        start_hub(
            extra_config=NO_PROFILES
            + "c.GPUDockerSpawner.host_port_mode = True\nc.GPUDockerSpawner.host_ip = '0.0.0.0'\n"
        )
    except RuntimeError as e:
        assert "GPUDockerSpawner.host_ip" in str(e)
    else:
        raise AssertionError("the hub started with notebook ports on 0.0.0.0")


def test_wait_until_ready_hands_over_an_answering_server(start_hub, docker_client):
    hub = start_hub(extra_config=NO_PROFILES)
    hub.spawn("wendy")
    token = hub.user_token("wendy")
    # The very first request through the proxy after "ready" answers; no retry loop needed.
    r = requests.get(
        f"{hub.url}/user/wendy/api", headers={"Authorization": f"token {token}"}, timeout=10
    )
    assert r.status_code == 200
    wait_for(lambda: hub.containers(docker_client, status="running"))
