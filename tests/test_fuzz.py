"""Bad input gets a clear 4xx, never a 500, and never a container.

Hypothesis throws junk user options at a running hub, through the REST API and through the
spawn form of a logged-in browser session; an invalid hub configuration must stop the hub
with a message that names the field. The figures (cases tried, 4xx, 5xx, containers) go to
tests/artifacts/fuzz-figures.json.
"""

from __future__ import annotations

import html
import json
import re
from collections import Counter
from typing import Any

import pytest
from faults import record_figures
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.docker

FIGURES = "fuzz-figures.json"
EXAMPLES = 150
PROFILES = """
- {slug: cpu, display_name: CPU, default: true}
- {slug: gpu-1, display_name: 1 GPU, gpus: 1}
- {slug: staff-only, display_name: Staff, gpus: 1, groups: [staff]}
"""
VISIBLE = ("cpu", "gpu-1")  # what a user outside "staff" may pick
CHOICES = "choose one of: cpu, gpu-1"
TEN_KB = "p" * 10_240


def _hub_reading(body: Any) -> tuple[bool, Any]:
    """JupyterHub's own reading of a server request body (apihandlers/users.py):
    (accepted, the user options)."""
    if not body:
        return True, None  # an empty body: no options, the default profile
    if not isinstance(body, dict):
        return False, None
    display_ok = "display_name" not in body or isinstance(body["display_name"], str)
    options_ok = "user_options" not in body or isinstance(body["user_options"], dict | None)
    if not (display_ok and options_ok):
        return False, None
    if "user_options" in body or "display_name" in body:
        return True, body.get("user_options")
    return True, body


def starts_a_server(body: Any) -> bool:
    """Whether the hub would start a server for this JSON body: JupyterHub's reading of it,
    then ours (the only option is ``profile``, the slug of a profile the user can see)."""
    accepted, options = _hub_reading(body)
    if not accepted:
        return False
    options = options or {}
    if set(options) - {"profile"}:
        return False
    return options.get("profile", "cpu") in VISIBLE


# -- what users send -------------------------------------------------------------------

junk = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=40),
    st.just(TEN_KB),
    st.lists(st.integers() | st.text(max_size=4), max_size=4),
    st.dictionaries(st.text(max_size=6), st.integers() | st.text(max_size=4), max_size=3),
)
counts = st.sampled_from([-1, -(10**9), 10**18, 1e308, float("nan"), float("inf"), -0.5, "2"])
device_ids = st.lists(
    st.sampled_from(["0", "1", "7", "all", "GPU-00000000", "MIG-1", "-1", "../0"]) | st.integers(),
    max_size=5,
)
images = st.sampled_from(
    [
        "busybox:latest",
        "docker.io/library/alpine",
        "evil/image",
        "gpu-workspaces/notebook-cpu:6.1.1",
        "ubuntu@sha256:" + "0" * 64,
        "../../etc/passwd",
    ]
)
bad_profiles = st.one_of(
    st.text(max_size=80).filter(lambda s: s not in VISIBLE),
    st.sampled_from(["staff-only", "CPU", "cpu ", " gpu-1", "gpu-1\n", "gpu-2", "", "../cpu"]),
    st.just(TEN_KB),
    junk.filter(lambda v: not isinstance(v, str)),
)
option_names = st.sampled_from(
    [
        "image",
        "gpus",
        "gpu_count",
        "gpu_device_ids",
        "device_ids",
        "mem_limit",
        "cpu_limit",
        "shm_size",
        "cmd",
        "volumes",
        "privileged",
        "environment",
    ]
) | st.text(min_size=1, max_size=20).filter(lambda k: k != "profile")
option_values = st.one_of(counts, device_ids, images, junk)
bad_options = st.one_of(
    st.fixed_dictionaries({"profile": bad_profiles}),
    st.builds(
        lambda profile, extra: ({"profile": profile} if profile is not None else {}) | extra,
        st.none() | st.sampled_from(VISIBLE) | bad_profiles,
        st.dictionaries(option_names, option_values, min_size=1, max_size=3),
    ),
)
bad_bodies = st.one_of(
    bad_options,  # the body is the options (JupyterHub's original schema)
    st.builds(lambda o: {"user_options": o}, bad_options),
    st.builds(
        lambda o: {"user_options": o},
        junk.filter(lambda v: v is not None and not isinstance(v, dict)),
    ),
    st.builds(lambda d: {"display_name": d}, junk.filter(lambda v: not isinstance(v, str))),
    junk.filter(lambda v: bool(v) and not isinstance(v, dict)),  # non-object JSON
)
raw_bodies = st.sampled_from(
    [b"{", b"[1,", b"\xff\xfe\x00", b"{'profile': 'cpu'}", b"profile=cpu", b'{"profile": cpu}']
)
form_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80)
bad_form_profiles = st.one_of(
    form_text.filter(lambda s: s not in VISIBLE),
    st.sampled_from(["staff-only", "CPU", "cpu ", "gpu-1\n", "gpu-2", "", "../cpu", "null"]),
    st.just(TEN_KB),
)


def _clear_4xx(status: int, message: str) -> str | None:
    """Why an answer is not a clear 4xx, or None if it is."""
    if not 400 <= status < 500:
        return f"status {status}"
    if not message.strip():
        return "no message"
    if "Traceback" in message or len(message) > 600:
        return f"unclear message: {message[:200]!r}"
    return None


def _hub(start_hub: Any, tmp_path: Any) -> Any:
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(PROFILES)
    return start_hub(
        env={
            "GPUWS_GPU_INVENTORY": "2",
            "GPUWS_PROFILES_FILE": str(profiles),
            "GPUWS_GPU_WAIT_TIMEOUT": "0",
        }
    )


def _tally(statuses: list[int]) -> dict[str, int]:
    classes = Counter(f"{s // 100}xx" for s in statuses)
    return {
        "cases": len(statuses),
        "4xx": classes["4xx"],
        "5xx": classes["5xx"],
        "other": len(statuses) - classes["4xx"] - classes["5xx"],
    }


def _aftermath(hub: Any, client: Any, user: str, statuses: list[int], name: str) -> dict[str, int]:
    """What a fuzz run left behind (containers, a server) and its answers, recorded as figures."""
    figures = _tally(statuses) | {
        "containers_created": len(hub.containers(client)),
        "servers_started": int(bool(hub.server_model(user))),
    }
    record_figures(FIGURES, name, figures)
    return figures


def test_fuzz_user_options_through_the_rest_api(start_hub, docker_client, tmp_path) -> None:
    hub = _hub(start_hub, tmp_path)
    user = "fuzz-rest"
    hub.ensure_user(user)
    statuses: list[int] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(body=bad_bodies | raw_bodies)
    @example(body={"profile": "no-such-profile"})
    @example(body={"profile": 5})
    @example(body={"profile": "cpu", "gpus": -1})
    @example(body={"profile": "gpu-1", "gpu_count": 10**18})
    @example(body={"profile": "gpu-1", "gpus": float("nan")})
    @example(body={"profile": "gpu-1", "gpu_device_ids": ["0", "1"]})
    @example(body={"profile": "cpu", "image": "busybox:latest"})
    @example(body={"image": "busybox:latest"})
    @example(body={"profile": TEN_KB})
    @example(body={"user_options": {"profile": "staff-only"}})
    @example(body={"user_options": [1, 2]})
    @example(body=[{"profile": "cpu"}])
    @example(body="cpu")
    @example(body=42)
    @example(body=True)
    @example(body=b"\xff\xfe\x00")
    def case(body: Any) -> None:
        if isinstance(body, bytes):
            data = body
        else:
            assume(not starts_a_server(body))
            data = json.dumps(body).encode()
        r = hub.api("POST", f"/users/{user}/server", data=data)
        statuses.append(r.status_code)
        try:
            message = str(r.json().get("message", ""))
        except ValueError:
            message = ""
        problem = _clear_4xx(r.status_code, message)
        assert problem is None, (problem, r.text[:300])

    try:
        case()
    finally:
        figures = _aftermath(hub, docker_client, user, statuses, "rest_api")
    assert figures["5xx"] == 0 and figures["other"] == 0
    assert figures["containers_created"] == 0 and figures["servers_started"] == 0


def test_fuzz_the_spawn_form(start_hub, docker_client, tmp_path) -> None:
    hub = _hub(start_hub, tmp_path)
    user = "fuzz-form"
    browser = hub.login(user)
    xsrf = browser.cookies.get("_xsrf", "")
    assert xsrf
    statuses: list[int] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(
        profiles=st.lists(bad_form_profiles, min_size=1, max_size=2).map(
            lambda first: [*first, "cpu"] if len(first) == 1 else first
        ),
        extra=st.dictionaries(
            st.sampled_from(["image", "gpus", "gpu_device_ids", "mem_limit", "cmd"])
            | st.text(alphabet="abcdefghij_", min_size=1, max_size=10),
            form_text | images,
            max_size=3,
        ),
    )
    @example(profiles=["no-such-profile"], extra={})
    @example(profiles=["staff-only"], extra={})
    @example(profiles=[TEN_KB], extra={})
    @example(profiles=[""], extra={"image": "busybox:latest"})
    @example(profiles=["gpu-9"], extra={"gpus": "-1", "gpu_device_ids": "0,1"})
    def case(profiles: list[str], extra: dict[str, str]) -> None:
        fields: dict[str, Any] = {k: v for k, v in extra.items() if k not in ("profile", "_xsrf")}
        fields["profile"] = profiles  # the first value counts, and it is always a bad one
        fields["_xsrf"] = xsrf
        r = browser.post(
            f"{hub.url}/hub/spawn/{user}", data=fields, allow_redirects=False, timeout=60
        )
        statuses.append(r.status_code)
        shown = re.search(r'class="spawn-error-msg[^"]*">(.*?)</p>', r.text, re.DOTALL)
        message = html.unescape(shown.group(1)) if shown else ""
        problem = _clear_4xx(r.status_code, message)
        assert problem is None, (problem, r.status_code, profiles[0][:80])
        assert CHOICES in message, message[:300]

    try:
        case()
    finally:
        figures = _aftermath(hub, docker_client, user, statuses, "spawn_form")
    assert figures["5xx"] == 0 and figures["other"] == 0
    assert figures["containers_created"] == 0 and figures["servers_started"] == 0


# -- invalid hub configuration -----------------------------------------------------------


def _profile_file(tmp_path: Any, text: str) -> str:
    path = tmp_path / "bad-profiles.yaml"
    path.write_text(text)
    return str(path)


INVALID_CONFIGS = [
    pytest.param(
        {"GPUWS_PROFILES_FILE": "- {slug: cpu, display_name: CPU, colour: red}\n"},
        "",
        ["profiles[0]", "colour"],
        id="profile-unknown-key",
    ),
    pytest.param(
        {
            "GPUWS_PROFILES_FILE": "- {slug: big, display_name: Big, gpus: 8}\n",
            "GPUWS_GPU_INVENTORY": "2",
        },
        "",
        ["profiles[0]", "field 'gpus'"],
        id="profile-more-gpus-than-the-host",
    ),
    pytest.param(
        {"GPUWS_PROFILES_FILE": "- {slug: cpu, display_name: CPU, mem_limit: lots}\n"},
        "",
        ["profiles[0]", "field 'mem_limit'"],
        id="profile-bad-size",
    ),
    pytest.param({"GPUWS_MEM_LIMIT": "12qq"}, "", ["GPUWS_MEM_LIMIT"], id="env-bad-size"),
    pytest.param(
        {"GPUWS_GPU_INVENTORY": '[{"name": "A100"}]'},
        "",
        ["GPUWS_GPU_INVENTORY"],
        id="inventory-without-id",
    ),
    pytest.param(
        {"GPUWS_GPU_WAIT_TIMEOUT": "-1"}, "", ["GPUWS_GPU_WAIT_TIMEOUT"], id="negative-timeout"
    ),
    pytest.param(
        {},
        "c.GPUDockerSpawner.shm_size = 'lots'\n",
        ["GPUDockerSpawner.shm_size"],
        id="shm-size",
    ),
    pytest.param(
        {},
        "c.GPUDockerSpawner.volumes = {'/var/run/docker.sock': '/var/run/docker.sock'}\n",
        ["GPUDockerSpawner.volumes", "engine socket", "allow_host_access"],
        id="docker-socket",
    ),
    pytest.param(
        {},
        "c.GPUDockerSpawner.read_only_volumes = {'/etc': '/host/etc'}\n",
        ["GPUDockerSpawner.read_only_volumes", "/etc"],
        id="host-etc",
    ),
    pytest.param(
        {},
        "c.GPUDockerSpawner.extra_host_config = {'privileged': True}\n",
        ["GPUDockerSpawner.extra_host_config['privileged']"],
        id="privileged",
    ),
    pytest.param(
        {},
        "c.GPUDockerSpawner.extra_host_config = {'pid_mode': 'host'}\n",
        ["GPUDockerSpawner.extra_host_config['pid_mode']"],
        id="host-pid-namespace",
    ),
    pytest.param(
        {}, "c.GPUDockerSpawner.cap_add = ['SYS_ADMIN']\n", ["GPUDockerSpawner.cap_add"], id="cap"
    ),
    pytest.param(
        {}, "c.GPUDockerSpawner.nproc_limit = 10\n", ["GPUDockerSpawner.nproc_limit"], id="nproc"
    ),
]


@pytest.mark.parametrize(("env", "extra_config", "named"), INVALID_CONFIGS)
def test_invalid_hub_config_stops_the_hub_and_names_the_field(
    start_hub, tmp_path, env: dict[str, str], extra_config: str, named: list[str]
) -> None:
    env = dict(env)
    if "GPUWS_PROFILES_FILE" in env:
        env["GPUWS_PROFILES_FILE"] = _profile_file(tmp_path, env["GPUWS_PROFILES_FILE"])
    with pytest.raises(RuntimeError) as stopped:
        start_hub(env=env, extra_config=extra_config)
    output = str(stopped.value)
    assert "hub exited" in output, output[-2000:]
    assert "configuration error" in output, output[-2000:]
    for word in named:
        assert word in output, (word, output[-2000:])
    assert "Traceback" not in output, output[-3000:]


def test_allow_host_access_is_the_explicit_override(start_hub) -> None:
    hub = start_hub(
        extra_config="c.GPUDockerSpawner.allow_host_access = True\n"
        "c.GPUDockerSpawner.read_only_volumes = {'/etc/hostname': '/host/hostname'}\n"
    )
    assert hub.api("GET", "/users").status_code == 200
