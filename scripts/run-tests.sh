#!/usr/bin/env bash
# The project's test command (`make test`, .ci/run). Extra arguments go to pytest.
#
# On a fresh Debian machine, as root, it installs what the tests drive for real (dockerd
# from docker.io, iptables, debootstrap, configurable-http-proxy, chromium, shellcheck,
# socat, postgresql), the package with its test extras in .venv, runs the static checks, then runs pytest on the
# tests' private Docker engine (scripts/test-engine.sh, tests/engine.py), in that engine's
# network namespace. The machine's own Docker engine is only read: a snapshot now, and the
# run's last test proves it is unchanged (tests/test_host_engine.py).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=images/versions.env
. images/versions.env
APT_LOG=/var/log/gpuws-install-test-tools.log

missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v npm >/dev/null || missing+=(nodejs npm)
command -v chromium >/dev/null || missing+=(chromium)
command -v dockerd >/dev/null || missing+=(docker.io)
command -v iptables >/dev/null || missing+=(iptables)
command -v shellcheck >/dev/null || missing+=(shellcheck)
command -v socat >/dev/null || missing+=(socat)
# the GPU-hours suite runs on a PostgreSQL of its own too (tests/postgres.py)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
    missing+=(docker-compose)
fi
if ((${#missing[@]})); then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "run-tests: please install: ${missing[*]} (needs root on Debian/Ubuntu)" >&2
        exit 1
    fi
    echo "run-tests: installing ${missing[*]} with apt-get (log: $APT_LOG)" >&2
    if ! { apt-get update && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y --no-install-recommends "${missing[@]}"; } >"$APT_LOG" 2>&1; then
        tail -n 20 "$APT_LOG" >&2
        echo "run-tests: apt-get failed; see $APT_LOG" >&2
        exit 1
    fi
fi
if ! command -v configurable-http-proxy >/dev/null; then
    npm install -g --silent "configurable-http-proxy@${CHP_VERSION}"
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/pip install -q -e ".[test]" "jupyterhub==${JUPYTERHUB_VERSION}"
# DockerSpawner's own test suite, run against our class (tests/test_dockerspawner_suite.py)
PYTHON=.venv/bin/python bash scripts/fetch-upstream-tests.sh
export PATH="$PWD/.venv/bin:$PATH"

bash scripts/static-checks.sh

# What the machine's own engine holds before anything of the run starts.
snapshot="$(mktemp /tmp/gpuws-host-engine.XXXXXX.json)"
trap 'rm -f "$snapshot"' EXIT
python tests/host_engine.py snapshot "$snapshot"
export GPUWS_HOST_ENGINE_SNAPSHOT="$snapshot"

set +e
# Integration tests drive real engines, hubs and browsers on small, shared machines: a test
# that fails is run once more before it counts (the report lists every rerun).
PYTHON="$PWD/.venv/bin/python" bash scripts/test-engine.sh \
    python -m pytest --reruns 1 --reruns-delay 2 "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
    echo "run-tests: pytest collected no tests; that is a failure here" >&2
    exit 1
fi
exit "$rc"
