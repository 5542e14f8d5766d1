"""The tests' own Docker engine: a private ``dockerd`` beside, never instead of, the machine's.

The machine's engine may be an admin's, serving real users: the suite never stops, restarts
or changes it. Everything the tests do runs on this engine instead::

    host network namespace                      namespace gpuws-test
    ──────────────────────                      ─────────────────────────────────────────
    gws-t0 10.230.0.1  ──────── veth ────────   gws-t1 10.230.0.2
    build proxy 10.230.0.1:3128 (proxy.py)      dockerd -H unix:///run/gpuws-test-engine/
      image builds only: the namespace has        docker.sock, its own bridges and iptables,
      no route out                                the fake nvidia-container-runtime-hook on
                                                  its PATH, runtime "nvidia" = runc
                                                pytest, the hubs, their proxies, chromium

- own socket, pid file and exec root under ``/run/gpuws-test-engine``;
- own data root ``/var/lib/gpuws-test-engine``, kept between runs so images build once per
  machine (containers, volumes and networks left by an earlier run are removed at start);
- own network namespace: its bridges, NAT rules and published ports are invisible to the
  machine's engine and cannot collide with it; the namespace has no default route, so a test
  that would send traffic off this machine fails at once instead;
- its own cgroup parent, so its containers never sit beside the machine engine's.

Command line (``scripts/run-tests.sh`` uses it)::

    python tests/engine.py up        # idempotent; prints DOCKER_HOST=… and the like
    python tests/engine.py down      # stops it and removes namespace and links; data kept
    python tests/engine.py status
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

NETNS = "gpuws-test"
NETNS_PATH = Path("/run/netns") / NETNS
RUN_DIR = Path("/run/gpuws-test-engine")
DATA_DIR = Path("/var/lib/gpuws-test-engine")
SOCKET = RUN_DIR / "docker.sock"
DOCKER_HOST = f"unix://{SOCKET}"
PIDFILE = RUN_DIR / "docker.pid"
LOG = DATA_DIR / "dockerd.log"
HOST_LINK = "gws-t0"
NETNS_LINK = "gws-t1"
HOST_ADDRESS = "10.230.0.1"
NETNS_ADDRESS = "10.230.0.2"
BUILD_PROXY_PORT = 3128
BUILD_PROXY = f"http://{HOST_ADDRESS}:{BUILD_PROXY_PORT}"
# Outside RUN_DIR: what names RUN_DIR on its command line is the daemon's, and is killed
# with it (Daemon.stop).
BUILD_PROXY_PIDFILE = Path("/run/gpuws-test-build-proxy.pid")
BUILD_PROXY_LOG = DATA_DIR / "build-proxy.log"
CGROUP_PARENT = "/gpuws-test-engine"
REPO = Path(__file__).resolve().parents[1]
FAKE_HOOK_SOURCE = REPO / "tests" / "fakes" / "nvidia-container-runtime-hook"
# A fixed place outside the checkout: dockerd keeps its PATH for its whole life, and a CI
# clone in another folder must find the same hook.
FAKE_HOOK_DIR = Path("/usr/local/libexec/gpu-workspaces-test")
# The machine's own engine, only ever read (tests/host_engine.py).
MACHINE_DOCKER_HOST = "unix:///var/run/docker.sock"


class EngineError(RuntimeError):
    """The private engine could not be brought up; the message says why."""


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise EngineError(f"{' '.join(args)}: {result.stderr.strip() or result.stdout.strip()}")
    return result


def _in_netns(*args: str) -> list[str]:
    """A command run in the engine's network namespace, with the host's mounts (cgroups)."""
    return ["nsenter", f"--net={NETNS_PATH}", *args]


def prerequisites_missing() -> str | None:
    """Why this machine cannot run the private engine, as a sentence, or None."""
    if os.geteuid() != 0:
        return "the tests' private Docker engine needs root (a network namespace, a dockerd)"
    for tool in ("dockerd", "runc", "ip", "nsenter", "iptables"):
        if shutil.which(tool) is None:
            return f"the tests' private Docker engine needs {tool} (Debian: docker.io, iptables)"
    return None


def install_fake_gpu_hook() -> None:
    """Put the test double of nvidia-container-runtime-hook where the test dockerds look."""
    FAKE_HOOK_DIR.mkdir(parents=True, exist_ok=True)
    target = FAKE_HOOK_DIR / FAKE_HOOK_SOURCE.name
    shutil.copy2(FAKE_HOOK_SOURCE, target)
    target.chmod(0o755)


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def pids_naming(fragment: str) -> list[int]:
    """Processes whose command line holds ``fragment``: what a killed dockerd left behind."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if fragment in cmdline:
            found.append(int(entry.name))
    return found


def kill(pids: list[int], timeout: float) -> None:
    """SIGTERM, then SIGKILL for what still runs after ``timeout`` seconds."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def answers(timeout: float = 10) -> bool:
    """Whether the private engine answers on its socket."""
    if not SOCKET.exists():
        return False
    try:
        result = subprocess.run(
            ["docker", "-H", DOCKER_HOST, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            timeout=timeout,
            env=_without_docker_env(),
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _without_docker_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "DOCKER_CONTEXT")}


# -- the network namespace ----------------------------------------------------------------


def _network_up() -> None:
    if not NETNS_PATH.exists():
        _run("ip", "netns", "add", NETNS)
    _run("ip", "netns", "exec", NETNS, "ip", "link", "set", "lo", "up")
    if _run("ip", "link", "show", HOST_LINK, check=False).returncode != 0:
        _run("ip", "link", "add", HOST_LINK, "type", "veth", "peer", "name", NETNS_LINK)
        _run("ip", "link", "set", NETNS_LINK, "netns", NETNS)
        _run("ip", "addr", "add", f"{HOST_ADDRESS}/30", "dev", HOST_LINK)
        _run("ip", "link", "set", HOST_LINK, "up")
        _run("ip", "netns", "exec", NETNS, "ip", "addr", "add", f"{NETNS_ADDRESS}/30",
             "dev", NETNS_LINK)  # fmt: skip
        _run("ip", "netns", "exec", NETNS, "ip", "link", "set", NETNS_LINK, "up")


def _network_down() -> None:
    _run("ip", "link", "del", HOST_LINK, check=False)  # removes its peer too
    _run("ip", "netns", "del", NETNS, check=False)


# -- the build proxy ----------------------------------------------------------------------


def _build_proxy_up() -> None:
    """An HTTP(S) proxy on the host end of the link: image builds in the namespace reach
    the package registries through it, and nothing else in the namespace reaches out."""
    if _read_pid(BUILD_PROXY_PIDFILE):
        return
    log = BUILD_PROXY_LOG.open("ab")
    subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proxy",
            "--hostname",
            HOST_ADDRESS,
            "--port",
            str(BUILD_PROXY_PORT),
            "--num-acceptors",
            "1",
            "--pid-file",
            str(BUILD_PROXY_PIDFILE),
            "--log-level",
            "WARNING",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        probe = subprocess.run(
            _in_netns("bash", "-c", f"exec 3<>/dev/tcp/{HOST_ADDRESS}/{BUILD_PROXY_PORT}"),
            capture_output=True,
        )
        if probe.returncode == 0:
            return
        time.sleep(0.3)
    raise EngineError(f"the build proxy did not listen in 30 s; see {BUILD_PROXY_LOG}")


def _build_proxy_down() -> None:
    pid = _read_pid(BUILD_PROXY_PIDFILE)
    if pid:
        kill([pid], timeout=10)
    BUILD_PROXY_PIDFILE.unlink(missing_ok=True)


# -- dockerd --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Daemon:
    """How the private dockerd is started: the same way each time, restarts included."""

    def command(self) -> list[str]:
        runc = shutil.which("runc") or "runc"
        return _in_netns(
            "dockerd",
            "--host",
            DOCKER_HOST,
            "--data-root",
            str(DATA_DIR / "data"),
            "--exec-root",
            str(RUN_DIR / "exec"),
            "--pidfile",
            str(PIDFILE),
            "--cgroup-parent",
            CGROUP_PARENT,
            # a stand-in for nvidia-docker2's runtime: same runc, registered as "nvidia"
            "--add-runtime",
            f"nvidia={runc}",
            "--shutdown-timeout",
            "10",
        )

    def environment(self) -> dict[str, str]:
        env = _without_docker_env()
        # With the hook on its PATH, dockerd registers its nvidia device driver (--gpus).
        env["PATH"] = f"{FAKE_HOOK_DIR}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        return env

    def start(self, timeout: float = 90) -> int:
        """Start dockerd and wait until it answers; returns its pid."""
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        log = LOG.open("ab")
        process = subprocess.Popen(
            self.command(),
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not answers():
            if process.poll() is not None:
                raise EngineError(
                    f"the tests' dockerd exited with {process.returncode}:\n{log_tail()}"
                )
            if time.monotonic() > deadline:
                raise EngineError(
                    f"the tests' dockerd did not answer in {timeout} s:\n{log_tail()}"
                )
            time.sleep(0.3)
        pid = _read_pid(PIDFILE)
        if pid is None:
            raise EngineError(f"the tests' dockerd answers but {PIDFILE} names no process")
        return pid

    def stop(self, timeout: float = 60) -> None:
        """Stop dockerd (it stops its containers and its containerd first)."""
        pid = _read_pid(PIDFILE)
        if pid:
            kill([pid], timeout=timeout)
        kill(pids_naming(f"{RUN_DIR}/"), timeout=10)  # a containerd or shim a killed daemon left


DAEMON = Daemon()


def pid() -> int | None:
    """The private dockerd's pid, if it runs."""
    return _read_pid(PIDFILE)


def log_tail(lines: int = 30) -> str:
    try:
        return "\n".join(LOG.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _forget_earlier_runs() -> None:
    """Containers, volumes and networks an earlier run left; images stay (the cache)."""
    docker = ["docker", "-H", DOCKER_HOST]
    env = _without_docker_env()
    for args in (
        ["swarm", "leave", "--force"],
        ["container", "prune", "--force"],
        ["volume", "prune", "--force"],
        ["network", "prune", "--force"],
    ):
        subprocess.run([*docker, *args], capture_output=True, env=env, timeout=120)
    left = subprocess.run(
        [*docker, "ps", "-aq"], capture_output=True, text=True, env=env, timeout=60
    ).stdout.split()
    if left:  # restarting ones, which prune skips
        subprocess.run([*docker, "rm", "-f", *left], capture_output=True, env=env)
        subprocess.run([*docker, "volume", "prune", "--force"], capture_output=True, env=env)


def up() -> str:
    """Bring the private engine up (or reuse the one that runs); returns its DOCKER_HOST."""
    if problem := prerequisites_missing():
        raise EngineError(problem)
    install_fake_gpu_hook()
    _network_up()
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    if not answers():
        DAEMON.stop(timeout=20)  # a half-dead one from a crashed run
        DAEMON.start()
        _forget_earlier_runs()
    _build_proxy_up()
    return DOCKER_HOST


def down() -> None:
    """Stop the private engine and remove its namespace and link; the data root stays."""
    DAEMON.stop()
    _build_proxy_down()
    _network_down()


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "status"
    try:
        if command == "up":
            # for scripts/test-engine.sh: what a command run on this engine needs
            print(f"DOCKER_HOST={up()}")
            print(f"GPUWS_BUILD_PROXY={BUILD_PROXY}")
            print(f"NETNS_PATH={NETNS_PATH}")
        elif command == "down":
            down()
        elif command == "status":
            print(f"{DOCKER_HOST} {'answers' if answers() else 'does not answer'}")
        else:
            print(f"usage: {argv[0]} up|down|status", file=sys.stderr)
            return 2
    except EngineError as e:
        print(f"engine: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
