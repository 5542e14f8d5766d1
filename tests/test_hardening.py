"""Hardened by default: what a notebook container gets, which names it gets, which images.

Table tests of the pure checks (spawner/core/hardening.py, spawner/core/names.py) and of the
spawner's start-up refusals run anywhere; the ``docker`` tests start a real hub and assert on
``docker inspect`` and on what the kernel shows inside the container (/proc/1/status).
"""

from __future__ import annotations

import os
import re
import string
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import pytest
from dockerspawner import DockerSpawner
from hypothesis import example, given, settings
from hypothesis import strategies as st
from traitlets import TraitError
from traitlets.config import Config

from spawner.backends.docker import GPUDockerSpawner
from spawner.core.builders import make_host_config
from spawner.core.hardening import (
    CAPABILITY_ALLOWLIST,
    NPROC_CEILING_MAX,
    host_path_problem,
    process_ceiling,
    unsafe_capabilities,
    unsafe_create_kwargs,
    unsafe_host_config,
    unsafe_mounts,
    unsafe_volumes,
)
from spawner.core.names import MAX_NAME_PART, escape_name

OPT = "GPUDockerSpawner.x"
NNP = "no-new-privileges:true"  # the hub's own entry, which an admin's list must keep


# -- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "escaped"),
    [
        ("alice", "alice"),
        ("a--b", "a-2d-2db"),
        ("a-b", "a-2db"),
        ("A.B", "-41-2e-42"),
        ("a b", "a-20b"),
        ("müller", "m-c3-bcller"),
        ("..", "-2e-2e"),
        ("用户", "-e7-94-a8-e6-88-b7"),
    ],
)
def test_escape_name_table(name: str, escaped: str) -> None:
    assert escape_name(name) == escaped


def test_long_names_are_cut_at_an_escape_and_hashed() -> None:
    long_ascii = escape_name("x" * 255)
    long_unicode = escape_name("é" * 255)
    almost = escape_name("é" * 254 + "e")
    for name in (long_ascii, long_unicode, almost):
        assert len(name) <= MAX_NAME_PART
        assert re.fullmatch(r"[a-z0-9-]+-x[0-9a-f]{12}", name), name
    assert long_unicode != almost
    assert long_unicode.startswith("-c3-a9")
    assert not re.search(r"-[0-9a-f]?-x", long_unicode), "an escape was cut in half"


_NAME_CHARS = st.text(alphabet="aAb-_. é2d" + string.digits, max_size=30)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300))
@example(text="a--b")
@example(text="x" * 300)
def test_escape_name_is_safe_bounded_and_matches_dockerspawner(text: str) -> None:
    name = escape_name(text)
    assert re.fullmatch(r"[a-z0-9-]*", name)
    assert "--" not in name
    assert not name.endswith("-")
    assert len(name) <= MAX_NAME_PART
    full = DockerSpawner._escape(text)
    if len(full) <= MAX_NAME_PART and not any(ord(c) < 0x10 for c in text):
        assert name == full, "names of existing servers and volumes must not change"


def test_control_characters_no_longer_collide() -> None:
    # DockerSpawner's escape writes byte 0x01 as "-1", so "\x01a" and "\x1a" share a name.
    assert DockerSpawner._escape("\x01a") == DockerSpawner._escape("\x1a")
    assert escape_name("\x01a") == "-01a" != escape_name("\x1a") == "-1a"


@settings(max_examples=500, deadline=None)
@given(a=_NAME_CHARS | st.text(max_size=120), b=_NAME_CHARS | st.text(max_size=120))
def test_escape_name_is_injective(a: str, b: str) -> None:
    if a != b:
        assert escape_name(a) != escape_name(b)


def _container_name(user: str, server: str) -> str:
    """DockerSpawner's default name templates, filled with our escape."""
    if server:
        return f"gpuws-{escape_name(user)}--{escape_name(server)}"
    return f"gpuws-{escape_name(user)}"


@settings(max_examples=500, deadline=None)
@given(
    first=st.tuples(_NAME_CHARS.filter(bool), _NAME_CHARS),
    second=st.tuples(_NAME_CHARS.filter(bool), _NAME_CHARS),
)
@example(first=("a--b", ""), second=("a", "b"))
@example(first=("a-", "b"), second=("a", "-b"))
def test_user_and_server_names_never_share_a_container_name(
    first: tuple[str, str], second: tuple[str, str]
) -> None:
    if first != second:
        assert _container_name(*first) != _container_name(*second)


# -- the pure checks -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        ("/var/run/docker.sock", True),
        ("/run/docker.sock", True),
        ("/srv/sockets/docker.sock", True),
        ("/", True),
        ("/etc", True),
        ("/etc/passwd", True),
        ("/proc", True),
        ("/sys/fs/cgroup", True),
        ("/dev/nvidia0", True),
        ("/var/run", True),
        ("/boot", True),
        ("/root/.ssh", True),
        ("/var/lib/docker/volumes", True),
        ("/srv/../etc", True),
        ("//etc", True),
        ("/srv/datasets", False),
        ("/etcetera", False),
        ("/home/shared", False),
    ],
)
def test_host_paths(path: str, refused: bool) -> None:
    assert (host_path_problem(path) is not None) is refused


def test_volumes_and_mounts() -> None:
    assert unsafe_volumes({"gpuws-home-{username}": "/home/jovyan"}, OPT) == []
    assert unsafe_volumes({"/srv/homes/{username}": "/home/jovyan"}, OPT) == []
    [problem] = unsafe_volumes({"/var/run/docker.sock": "/var/run/docker.sock"}, OPT)
    assert problem.startswith(OPT) and "engine socket" in problem
    [problem] = unsafe_volumes({"/srv/homes/{raw_username}": "/home/jovyan"}, OPT)
    assert "unescaped" in problem
    assert unsafe_mounts([{"type": "bind", "source": "/etc", "target": "/x"}], OPT)
    assert unsafe_mounts([{"Type": "bind", "Source": "/proc", "Target": "/x"}], OPT)
    assert unsafe_mounts([{"type": "volume", "source": "data", "target": "/x"}], OPT) == []


@pytest.mark.parametrize(
    ("host_config", "word"),
    [
        ({"privileged": True}, "privileged"),
        ({"network_mode": "host"}, "network_mode"),
        ({"pid_mode": "host"}, "pid_mode"),
        ({"ipc_mode": "host"}, "ipc_mode"),
        ({"ipc_mode": "container:hub"}, "ipc_mode"),
        ({"userns_mode": "host"}, "userns_mode"),
        ({"uts_mode": "host"}, "uts_mode"),
        ({"cgroupns": "host"}, "cgroupns"),
        ({"binds": ["/var/run/docker.sock:/var/run/docker.sock"]}, "binds"),
        ({"binds": {"/etc": {"bind": "/host-etc", "mode": "ro"}}}, "binds"),
        ({"mounts": [{"type": "bind", "source": "/", "target": "/host"}]}, "mounts"),
        ({"devices": ["/dev/fuse:/dev/fuse:rwm"]}, "devices"),
        ({"volumes_from": ["hub"]}, "volumes_from"),
        ({"security_opt": [NNP, "seccomp=unconfined"]}, "seccomp"),
        ({"security_opt": [NNP, "seccomp:unconfined"]}, "seccomp"),
        ({"security_opt": [NNP, "apparmor=unconfined"]}, "AppArmor"),
        ({"security_opt": ["no-new-privileges:false"]}, "setuid"),
        ({"security_opt": [NNP, "label=disable"]}, "SELinux"),
        ({"security_opt": [NNP, "systempaths=unconfined"]}, "unmasks"),
        ({"cap_add": ["SYS_ADMIN"]}, "SYS_ADMIN"),
        ({"cap_add": ["ALL"]}, "ALL"),
        ({"cap_drop": ["NET_RAW"]}, "cap_drop"),
        ({"port_bindings": {8888: ("0.0.0.0",)}}, "every interface"),
        ({"port_bindings": {8888: 8888}}, "every interface"),
    ],
)
def test_unsafe_host_config_is_named(host_config: dict[str, Any], word: str) -> None:
    problems = unsafe_host_config(host_config, "GPUDockerSpawner.extra_host_config")
    assert len(problems) == 1, problems
    assert problems[0].startswith("GPUDockerSpawner.extra_host_config[")
    assert word in problems[0]


def test_our_own_host_config_passes() -> None:
    ours = {
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "init": True,
        "pids_limit": 4096,
        "port_bindings": {8888: ("127.0.0.1",)},
        "security_opt_extra": None,
    }
    assert unsafe_host_config(ours, OPT) == []
    assert unsafe_create_kwargs({"user": "1000:100"}, OPT) == []
    assert unsafe_create_kwargs({"user": "root"}, OPT)
    assert unsafe_create_kwargs({"user": "0:0"}, OPT)


def test_capability_allowlist() -> None:
    assert unsafe_capabilities(["CHOWN", "cap_kill", "net_bind_service"], OPT) == []
    assert len(unsafe_capabilities(["NET_RAW", "MKNOD", "SYS_PTRACE", "NET_ADMIN"], OPT)) == 4
    assert "NET_RAW" not in CAPABILITY_ALLOWLIST and "SYS_ADMIN" not in CAPABILITY_ALLOWLIST


@pytest.mark.parametrize(
    ("pid_max", "pids_limit", "ceiling"),
    [
        (32768, 4096, 16384),
        (4194304, 4096, NPROC_CEILING_MAX),
        (None, 4096, NPROC_CEILING_MAX),
        (4096, 4096, 4096),
        (32768, 0, 16384),
    ],
)
def test_process_ceiling(pid_max: int | None, pids_limit: int, ceiling: int) -> None:
    assert process_ceiling(pid_max, pids_limit) == ceiling


# -- the spawner refuses unsafe settings at start-up ------------------------------------


def _spawner(**options: Any) -> GPUDockerSpawner:
    config = Config()
    for key, value in options.items():
        setattr(config.GPUDockerSpawner, key, value)
    user = SimpleNamespace(name="config-check", groups=[], url="/user/config-check/")
    return GPUDockerSpawner(config=config, user=user)


@pytest.mark.parametrize(
    ("options", "option_named"),
    [
        ({"volumes": {"/var/run/docker.sock": "/var/run/docker.sock"}}, "volumes"),
        ({"read_only_volumes": {"/etc": "/host-etc"}}, "read_only_volumes"),
        ({"mounts": [{"type": "bind", "source": "/proc", "target": "/p"}]}, "mounts"),
        ({"extra_host_config": {"privileged": True}}, "extra_host_config"),
        ({"extra_host_config": {"network_mode": "host"}}, "extra_host_config"),
        ({"extra_host_config": {"security_opt": ["seccomp=unconfined"]}}, "extra_host_config"),
        ({"extra_create_kwargs": {"user": "root"}}, "extra_create_kwargs"),
        ({"cap_add": ["SYS_ADMIN"]}, "cap_add"),
        ({"volumes": {"/srv/{raw_username}": "/home/jovyan"}}, "volumes"),
        ({"nproc_limit": 100}, "nproc_limit"),
    ],
)
def test_spawner_refuses_unsafe_settings_and_names_the_option(
    options: dict[str, Any], option_named: str
) -> None:
    with pytest.raises(TraitError) as refused:
        _spawner(**options)
    assert f"GPUDockerSpawner.{option_named}" in str(refused.value)


def test_allow_host_access_accepts_them() -> None:
    spawner = _spawner(
        allow_host_access=True,
        volumes={"/var/run/docker.sock": "/var/run/docker.sock"},
        cap_add=["SYS_ADMIN"],
    )
    assert spawner.cap_add == ["SYS_ADMIN"]


def test_host_config_has_the_hardening_defaults() -> None:
    config = make_host_config(_spawner().plan)
    assert config["cap_drop"] == ["ALL"]
    assert config["security_opt"] == ["no-new-privileges:true"]
    assert config["pids_limit"] == 4096
    limits = {u["name"]: (u["soft"], u["hard"]) for u in config["ulimits"]}
    assert limits["nofile"] == (16384, 16384)
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    nproc = process_ceiling(pid_max, 4096)
    assert limits["nproc"] == (nproc, nproc)
    assert "privileged" not in config and "cap_add" not in config
    assert unsafe_host_config(config, OPT) == []
    explicit = make_host_config(_spawner(nproc_limit=0).plan)
    assert {u["name"] for u in explicit["ulimits"]} == {"nofile"}


def _named_spawner(user: str, server: str = "", registered: str = "") -> GPUDockerSpawner:
    return GPUDockerSpawner(
        config=Config(),
        user=SimpleNamespace(name=user, groups=[], url=f"/user/{user}/"),
        orm_spawner=SimpleNamespace(
            name=server, user_options=None, state=None, server=None, oauth_client_id=registered
        ),
        # what JupyterHub passes: f"jupyterhub-user-{quote(user)}" + f"-{quote(server)}"
        oauth_client_id=f"jupyterhub-user-{user}" + (f"-{server}" if server else ""),
    )


def test_names_of_hostile_users_and_servers() -> None:
    def object_name(user: str, server: str = "") -> str:
        return str(_named_spawner(user, server).object_name)

    assert object_name("a--b") != object_name("a", "b")
    assert object_name("a", "Work") != object_name("a", "work")
    assert object_name("A") != object_name("a")
    assert len(object_name("é" * 255)) <= len("gpuws-") + MAX_NAME_PART


def test_oauth_client_ids_do_not_collide() -> None:
    # JupyterHub would give both "jupyterhub-user-a-b"
    assert _named_spawner("a-b").oauth_client_id == "jupyterhub-user-a-2db"
    assert _named_spawner("a", "b").oauth_client_id == "jupyterhub-user-a--b"
    assert _named_spawner("alice").oauth_client_id == "jupyterhub-user-alice"  # unchanged
    # a running server keeps the client it was started with
    running = _named_spawner("a-b", registered="jupyterhub-user-a-b")
    assert running.oauth_client_id == "jupyterhub-user-a-b"


def test_an_image_set_by_admin_code_is_the_one_the_plan_runs() -> None:
    # a pre-spawn hook or the admin's own code sets the trait: trusted, as in DockerSpawner
    spawner = _spawner(
        image="site/cpu:1",
        profiles=[{"slug": "cpu", "display_name": "CPU"}],
    )
    assert spawner.plan.image == "site/cpu:1"
    spawner.image = "busybox:latest"
    assert spawner.plan.image == "busybox:latest"
    spawner.check_refused_settings()  # no image allow-list for admin code


# -- on the real engine ---------------------------------------------------------------


def _status_fields(container: Any) -> dict[str, str]:
    code, out = container.exec_run(["cat", "/proc/1/status"])
    assert code == 0, out
    return dict(
        (k.strip(), v.strip())
        for k, _, v in (line.partition(":") for line in out.decode().split("\n"))
    )


def _sh(container: Any, command: str) -> str:
    code, out = container.exec_run(["bash", "-c", command])
    assert code == 0, out
    return str(out.decode().strip())


@pytest.mark.docker
def test_notebook_containers_are_hardened(start_hub, docker_client, tmp_path) -> None:
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(
        """
- {slug: small, display_name: Small CPU, mem_limit: 512m, cpu_limit: 0.5, default: true}
- {slug: gpu-1, display_name: 1 GPU, gpus: 1, mem_limit: 1g, cpu_limit: 1}
"""
    )
    hub = start_hub(env={"GPUWS_GPU_INVENTORY": "2", "GPUWS_PROFILES_FILE": str(profiles)})
    hub.spawn("hard-cpu", {"profile": "small"})
    hub.spawn("hard-gpu", {"profile": "gpu-1"})
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    nproc = process_ceiling(pid_max, 4096)
    host_ns = {ns: os.readlink(f"/proc/self/ns/{ns}") for ns in ("pid", "net", "ipc", "uts")}

    for user, memory, cpus in (("hard-cpu", 512 * 1024**2, 0.5), ("hard-gpu", 1024**3, 1.0)):
        container = hub.server_container(docker_client, user)
        host = container.attrs["HostConfig"]
        assert host["Privileged"] is False
        assert host["CapDrop"] == ["ALL"]
        assert not host.get("CapAdd")
        assert "no-new-privileges:true" in host["SecurityOpt"]
        assert not [o for o in host["SecurityOpt"] if "unconfined" in o or "disable" in o]
        assert host["PidMode"] == "" and host["UTSMode"] == "" and host["UsernsMode"] == ""
        assert host["IpcMode"] not in ("host",) and not host["IpcMode"].startswith("container:")
        assert host["NetworkMode"] == "gpuws-test"
        assert host["PidsLimit"] == 4096
        assert {u["Name"]: (u["Soft"], u["Hard"]) for u in host["Ulimits"]} == {
            "nofile": (16384, 16384),
            "nproc": (nproc, nproc),
        }
        assert host["Memory"] == memory
        assert host["CpuQuota"] == int(cpus * host["CpuPeriod"])
        assert not host.get("PortBindings") and not host.get("Devices")
        assert container.attrs["Config"]["User"] == "1000:100"
        for mount in container.attrs["Mounts"]:
            assert mount["Type"] == "volume", mount
        assert [m["Destination"] for m in container.attrs["Mounts"]] == ["/home/jovyan"]

        # what the kernel enforces inside
        status = _status_fields(container)
        assert status["Uid"].split()[:2] == ["1000", "1000"]
        assert status["NoNewPrivs"] == "1"
        assert status["Seccomp"] == "2", "Docker's default seccomp filter is not applied"
        assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0
        assert _sh(container, "ulimit -n; ulimit -u").split() == ["16384", str(nproc)]
        assert (
            _sh(container, "test -e /var/run/docker.sock || test -e /run/docker.sock; echo $?")
            == "1"
        )
        inside_ns = _sh(
            container, "for n in pid net ipc uts; do readlink /proc/1/ns/$n; done"
        ).split()
        assert not set(inside_ns) & set(host_ns.values()), "a host namespace is shared"


@pytest.mark.docker
def test_hostile_user_names_get_safe_unique_names(start_hub, docker_client) -> None:
    hub = start_hub(extra_config="c.JupyterHub.allow_named_servers = True\n")
    candidates = [
        "a--b",
        "a",
        "a-b",
        "A.b",
        "Ab",
        "a b",
        "müller",
        "用户",
        "x" * 255,
        "é" * 255,
        "é" * 254 + "e",
        "..",
        ".",
        "a/b",
        " lead",
    ]
    accepted, refused = [], []
    for name in candidates:
        # JupyterHub normalises (lower-cases) and validates names here, as at login
        r = hub.api("POST", "/users", json={"usernames": [name]})
        if r.status_code == 201:
            accepted += [user["name"] for user in r.json()]
        else:
            assert r.status_code == 400, (name, r.status_code, r.text)
            assert "Traceback" not in r.text
            refused.append(name)
    assert set(refused) == {"..", ".", "a/b", " lead"}, "JupyterHub's own name rules"
    assert "ab" in accepted and "A.b" in candidates

    servers = [(name, "") for name in accepted] + [("a", "b")]
    for name, server in servers:
        path = (
            f"/users/{quote(name, safe='')}/servers/{server}"
            if server
            else (f"/users/{quote(name, safe='')}/server")
        )
        r = hub.api("POST", path, json={})
        assert r.status_code in (201, 202), (name, r.text)
    for name, server in servers:
        hub.wait_ready(name, server)
    # JupyterHub's own OAuth client ids for "a-b" and "a"/"b" collide; each still logs in
    for name, path in (("a-b", "/user/a-b/lab"), ("a", "/user/a/b/lab")):
        browser = hub.login(name)
        r = browser.get(f"{hub.url}{path}", timeout=30)  # through the server's OAuth login
        assert r.status_code == 200 and r.url == f"{hub.url}{path}", (name, r.status_code, r.url)

    prefix = hub.prefix
    containers = hub.containers(docker_client, status="running")
    assert len(containers) == len(servers)
    names = [c.name for c in containers]
    assert len(set(names)) == len(names)
    for container in containers:
        assert re.fullmatch(rf"{prefix}-[a-z0-9-]+", container.name), container.name
        assert len(container.name) <= len(prefix) + 1 + MAX_NAME_PART + 2 + MAX_NAME_PART
    by_user = {
        (c.labels["io.gpu-workspaces.user"], c.labels["io.gpu-workspaces.server"]): c
        for c in containers
    }
    assert by_user[("a--b", "")].name != by_user[("a", "b")].name
    volumes = {}
    for (user, _server), container in by_user.items():
        [mount] = container.attrs["Mounts"]
        assert mount["Type"] == "volume"
        assert re.fullmatch(rf"{prefix}-home-[a-z0-9-]+", mount["Name"]), mount["Name"]
        assert re.fullmatch(r"[a-z0-9/_.-]+", mount["Source"]), mount["Source"]
        volumes.setdefault(user, set()).add(mount["Name"])
    assert all(len(v) == 1 for v in volumes.values()), "one home per user, for all servers"
    homes = [next(iter(v)) for v in volumes.values()]
    assert len(set(homes)) == len(homes), "two users share a home volume"


@pytest.mark.docker
def test_users_cannot_choose_an_image(start_hub, docker_client, notebook_images) -> None:
    hooked_image = notebook_images["cuda"]
    hub = start_hub(
        extra_config=f"""
def _hook(spawner):
    if spawner.user.name == "hooked":
        spawner.image = {hooked_image!r}
c.Spawner.pre_spawn_hook = _hook
"""
    )
    refused = hub.request_spawn("imgapi", {"profile": "cpu", "image": "busybox:latest"})
    assert refused.status_code == 400, refused.text
    assert "only 'profile' is accepted" in refused.json()["message"]

    # the form: an extra "image" field is ignored, the profile's image runs
    browser = hub.login("imgform")
    xsrf = browser.cookies.get("_xsrf", "")
    r = browser.post(
        f"{hub.url}/hub/spawn/imgform",
        data={"profile": "cpu", "image": "busybox:latest", "_xsrf": xsrf},
        timeout=60,
    )
    assert r.status_code < 400, r.status_code
    hub.wait_ready("imgform")
    container = hub.server_container(docker_client, "imgform")
    assert container.attrs["Config"]["Image"] == notebook_images["cpu"]

    # an image set by admin code (a pre-spawn hook) runs: admin code is trusted (issue 19)
    hooked = hub.request_spawn("hooked", {"profile": "cpu"})
    assert hooked.status_code in (201, 202), hooked.text
    hub.wait_ready("hooked")
    container = hub.server_container(docker_client, "hooked")
    assert container.attrs["Config"]["Image"] == notebook_images["cuda"]
