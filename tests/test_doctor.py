"""``python -m spawner doctor``: the report's pure parts, then the checks against real engines
(the test engine with the fake NVIDIA hook, and a throwaway engine without it)."""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from harness import REPO, TEST_NETWORK, nvidia_driver_registered, versions

from spawner.__main__ import main as spawner_main
from spawner.hub import doctor
from spawner.hub.doctor import FAIL, OK, WARN, Row

# -- pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("6.1.1", (6, 1, 1)), ("5.2.0b1", (5, 2, 0)), ("v1.41", (1, 41)), ("4.1.dev0", (4, 1))],
)
def test_parse_version(text: str, parsed: tuple[int, ...]) -> None:
    assert doctor.parse_version(text) == parsed


@pytest.mark.parametrize(
    ("image", "hub", "status"),
    [
        ("6.1.1", "6.1.1", OK),
        ("6.1.0", "6.1.1", WARN),
        ("5.3.0", "6.1.1", FAIL),
        ("6.0.0", "6.1.1", FAIL),
        (None, "6.1.1", WARN),
    ],
)
def test_compare_jupyterhub(image: str | None, hub: str, status: str) -> None:
    assert doctor.compare_jupyterhub(image, hub)[0] == status


SELFTEST_OK = {
    "modules": {"numpy": "2.4.6", "torch": "2.13.0+cpu"},
    "import_failures": {},
    "torch": {"torch": "2.13.0+cpu", "torch_cuda_build": None, "step_ok": True},
}


@pytest.mark.parametrize(
    ("code", "output", "status", "words"),
    [
        (0, json.dumps(SELFTEST_OK), OK, "2 modules import; torch 2.13.0+cpu (CPU build) trains"),
        (
            0,
            json.dumps({**SELFTEST_OK, "torch": {"torch": "2.13.0", "torch_cuda_build": "12.8"}}),
            OK,
            "torch 2.13.0 (CUDA 12.8 build)",
        ),
        (0, json.dumps({"modules": {"jupyterlab": "4.6.6"}}), OK, "img: 1 modules import"),
        (
            1,
            json.dumps({**SELFTEST_OK, "import_failures": {"pandas": "ImportError: x"}}),
            FAIL,
            "pandas (ImportError: x)",
        ),
        (1, json.dumps({**SELFTEST_OK, "torch": {"error": "RuntimeError: y"}}), FAIL, "torch step"),
        (3, json.dumps(SELFTEST_OK), FAIL, "gpuws-selftest exited 3"),
        (1, "Traceback (most recent call last):\n  boom", FAIL, "exited 1 and printed Traceback"),
        (0, "", FAIL, "printed nothing"),
        (None, "", "SKIP", "no gpuws-selftest in it"),
    ],
)
def test_selftest_row(code: int | None, output: str, status: str, words: str) -> None:
    row = doctor.selftest_row("img", code, output)
    assert (row.status, row.check) == (status, "image stack")
    assert words in row.detail, row.detail


def test_probe_error_without_the_driver_names_the_toolkit() -> None:
    row = doctor.classify_probe_error(
        'could not select device driver "" with capabilities: [[gpu]]'
    )
    assert row.status == FAIL
    assert "NVIDIA Container Toolkit" in row.fix and "nvidia-ctk" in row.fix


@pytest.mark.parametrize(("api", "status"), [("1.41", OK), ("1.40", OK), ("1.39", FAIL)])
def test_api_version(api: str, status: str) -> None:
    row = doctor.api_version_row({"Version": "x", "ApiVersion": api}, "unix:///x.sock")
    assert row.status == status


def test_render_puts_the_fix_under_failed_rows_and_counts_problems() -> None:
    text = doctor.render(
        [
            Row("docker", OK, "Docker 27"),
            Row("image", FAIL, "x:1 is not on the engine", "make images"),
            Row("network", WARN, "default bridge", "use a network"),
        ]
    )
    lines = text.splitlines()
    assert lines[0].split() == ["CHECK", "STATUS", "DETAIL"]
    assert lines[2].split()[:2] == ["image", "FAIL"]
    assert lines[3].strip() == "fix: make images"
    assert lines[-1] == "1 problem: fix the FAIL rows above."
    assert doctor.render([Row("docker", OK, "fine")]).splitlines()[-1] == "No problems."


@pytest.mark.parametrize(("argv", "code"), [([], 2), (["--help"], 0), (["nonsense"], 2)])
def test_command_line_usage(argv: list[str], code: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert spawner_main(argv) == code
    out = capsys.readouterr()
    assert "python -m spawner doctor" in out.out + out.err


def test_missing_config_file_is_a_failed_row(tmp_path: Path) -> None:
    lines: list[str] = []
    assert doctor.run(["-f", str(tmp_path / "nope.py")], out=lines.append) == 1
    assert "no such file" in " ".join("\n".join(lines).split())


# -- against the test engine -----------------------------------------------------------------


def run_doctor(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The command as an admin runs it, reading the project's jupyterhub_config.py."""
    full_env = dict(os.environ)
    full_env.update(
        {
            "GPUWS_NETWORK": TEST_NETWORK,
            "GPUWS_NOTEBOOK_IMAGE": versions()["NOTEBOOK_CPU_IMAGE"],
            "GPUWS_GPU_IMAGE": versions()["NOTEBOOK_CUDA_IMAGE"],
            "COLUMNS": "200",
        }
    )
    full_env.update(env)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "spawner",
            "doctor",
            "-f",
            str(REPO / "jupyterhub_config.py"),
            *args,
        ],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def rows_of(output: str) -> dict[str, list[str]]:
    """check name -> the status of each of its rows."""
    statuses: dict[str, list[str]] = {}
    for line in output.splitlines():
        for status in (OK, WARN, FAIL, "SKIP"):
            marker = f"  {status}"
            if marker + " " in line and not line.startswith(" "):
                statuses.setdefault(line.split(marker)[0].strip(), []).append(status)
    return statuses


def empty_image(client: docker.DockerClient, tag: str, jupyterhub_version: str) -> None:
    """A tiny image with only the version label (nothing to run; enough for the checks)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w"):
        pass
    client.api.import_image_from_data(
        buffer.getvalue(),
        repository=tag.split(":")[0],
        tag=tag.split(":")[1],
        changes=[f"LABEL io.jupyterhub.version={jupyterhub_version}"],
    )


@pytest.mark.docker
def test_doctor_passes_on_a_healthy_setup(fake_gpu_hook: None) -> None:
    result = run_doctor({"GPUWS_GPU_INVENTORY": "2"})
    assert result.returncode == 0, result.stdout + result.stderr
    statuses = rows_of(result.stdout)
    assert statuses["docker"] == [OK]
    assert statuses["nvidia driver"] == [OK]
    assert statuses["image"] == [OK, OK]
    assert statuses["image stack"] == [OK, OK]
    assert statuses["network"] == [OK]
    assert statuses["profiles"] == [OK]
    assert "No problems" in result.stdout


@pytest.mark.docker
def test_doctor_reports_a_missing_image_with_the_fix(fake_gpu_hook: None) -> None:
    missing = f"gpuws-doctor-test/missing:{secrets.token_hex(3)}"
    result = run_doctor({"GPUWS_GPU_INVENTORY": "2", "GPUWS_GPU_IMAGE": missing})
    assert result.returncode == 1, result.stdout
    row = next(line for line in result.stdout.splitlines() if missing in line)
    assert "FAIL" in row and "gpu-1, gpu-2" in result.stdout
    assert "make images" in result.stdout
    # the GPU probe still runs, with the image that is there
    assert rows_of(result.stdout)["nvidia driver"] == [OK]
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.docker
def test_doctor_checks_the_images_of_a_profiles_choices(
    fake_gpu_hook: None, tmp_path: Path
) -> None:
    missing = f"gpuws-doctor-test/choice:{secrets.token_hex(3)}"
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(
        "- slug: cpu\n"
        "  display_name: CPU\n"
        "  options:\n"
        "    image:\n"
        f"      choices: {{standard: {versions()['NOTEBOOK_CPU_IMAGE']}, variant: {missing}}}\n"
    )
    result = run_doctor({"GPUWS_GPU_INVENTORY": "2", "GPUWS_PROFILES_FILE": str(profiles)})
    assert result.returncode == 1, result.stdout
    row = next(line for line in result.stdout.splitlines() if missing in line)
    assert "FAIL" in row and "cpu:variant" in row, row
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.docker
def test_doctor_reports_an_image_built_for_another_jupyterhub(
    docker_client: docker.DockerClient, fake_gpu_hook: None
) -> None:
    tag = f"gpuws-doctor-test/old:{secrets.token_hex(3)}"
    empty_image(docker_client, tag, "5.0.0")
    try:
        result = run_doctor({"GPUWS_GPU_INVENTORY": "2", "GPUWS_GPU_IMAGE": tag})
    finally:
        docker_client.images.remove(tag, force=True)
    assert result.returncode == 1, result.stdout
    assert "jupyterhub 5.0.0, but the hub runs" in result.stdout
    # An image that is not one of ours has no gpuws-selftest: said, and not a failure.
    (row,) = [line for line in result.stdout.splitlines() if "image stack" in line and tag in line]
    assert "SKIP" in row and "no gpuws-selftest in it" in row, row


@pytest.mark.docker
def test_doctor_runs_each_images_selftest(
    fake_gpu_hook: None, datascience_images: dict[str, str]
) -> None:
    result = run_doctor(
        {
            "GPUWS_GPU_INVENTORY": "2",
            "GPUWS_NOTEBOOK_IMAGE": datascience_images["cpu"],
            "GPUWS_GPU_IMAGE": datascience_images["cuda"],
        }
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("image stack")]
    assert len(rows) == 2 and all(" OK " in row for row in rows), rows
    assert all(re.search(r"torch \S+ \((CPU|CUDA \S+) build\) trains a step", r) for r in rows)


@pytest.fixture
def engine_without_nvidia(notebook_images: dict[str, str]) -> Iterator[str]:
    """A throwaway dockerd on its own socket and folders, with no NVIDIA hook on its PATH.

    It runs in a network namespace of its own: a dockerd started with --bridge=none deletes
    the host's docker0, which the shared engine's default network needs.
    """
    if shutil.which("dockerd") is None or shutil.which("unshare") is None:
        pytest.fail("dockerd and unshare (util-linux) are needed; run scripts/install-docker.sh")
    root = Path(tempfile.mkdtemp(prefix="gpuws-doctor-"))
    socket = f"unix://{root}/docker.sock"
    log = (root / "dockerd.log").open("wb")
    command = ["unshare", "--net", "--", "dockerd", "--host", socket, "--bridge=none"]
    command += ["--iptables=false"]
    command += ["--ip-masq=false", "--pidfile", str(root / "docker.pid")]
    command += ["--data-root", str(root / "data"), "--exec-root", str(root / "exec")]
    process = subprocess.Popen(
        command,
        env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                client = docker.DockerClient(base_url=socket, version="auto", timeout=60)
                break
            except docker.errors.DockerException:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((root / "dockerd.log").read_text()) from None
                time.sleep(0.2)
        hub_version = versions()["JUPYTERHUB_VERSION"]
        for tag in notebook_images.values():  # the images exist there: only the driver lacks
            empty_image(client, tag, hub_version)
        client.close()
        yield socket
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.docker
def test_doctor_reports_a_missing_nvidia_driver(engine_without_nvidia: str) -> None:
    result = run_doctor(
        {
            "DOCKER_HOST": engine_without_nvidia,
            "GPUWS_GPU_INVENTORY": "2",
            # as in compose: the config does not create the network on this engine
            "GPUWS_IN_COMPOSE": "1",
        }
    )
    assert result.returncode == 1, result.stdout
    statuses = rows_of(result.stdout)
    assert statuses["docker"] == [OK]
    assert statuses["image"] == [OK, OK]
    assert statuses["nvidia driver"] == [FAIL]
    assert "could not select device driver" in result.stdout
    assert "NVIDIA Container Toolkit" in result.stdout
    assert statuses["network"] == [FAIL]  # compose would create it
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.docker
def test_failed_gpu_probes_leave_no_container(engine_without_nvidia: str) -> None:
    """The tests' own probe and the doctor's both fail on an engine without the NVIDIA
    driver, and both remove what they created (a failed start leaves a "created" one)."""
    client = docker.DockerClient(base_url=engine_without_nvidia, version="auto", timeout=60)
    try:
        assert nvidia_driver_registered(client, versions()["NOTEBOOK_CPU_IMAGE"]) is False
        row = doctor.probe_nvidia_driver(client.api, versions()["NOTEBOOK_CPU_IMAGE"], "0")
        assert row.status == FAIL, row
        assert client.containers.list(all=True) == []
    finally:
        client.close()


@pytest.mark.parametrize(
    ("info", "driver_ok", "configured", "supported", "status"),
    [
        ({"Runtimes": {"runc": {}}}, True, "device-requests", ["device-requests"], OK),
        ({"Runtimes": {"runc": {}, "nvidia": {}}}, False, "nvidia-runtime", ["nvidia-runtime"], OK),
        ({"Runtimes": {"runc": {}}}, True, "nvidia-runtime", ["device-requests"], FAIL),
        (
            {"Runtimes": {"nvidia": {}}, "CDISpecDirs": ["/etc/cdi", "/var/run/cdi"]},
            True,
            "cdi",
            ["device-requests", "nvidia-runtime", "cdi"],
            OK,
        ),
        ({"Runtimes": {}, "CDISpecDirs": []}, False, "cdi", [], FAIL),
    ],
)
def test_gpu_mechanism_row(
    info: dict[str, object], driver_ok: bool, configured: str, supported: list[str], status: str
) -> None:
    assert doctor.supported_mechanisms(info, driver_ok) == supported
    row = doctor.mechanism_row(configured, supported)
    assert row.status == status
    assert configured in row.detail
    if status == FAIL:
        assert "GPUWS_GPU_MECHANISM" in row.fix
