#!/usr/bin/env bash
# The project's test command (README "Quick start", `make test`, .ci/run).
# On a fresh Debian machine, as root, it installs what the tests drive for real: Docker (via
# the tests' harness), configurable-http-proxy, chromium, debootstrap; then the package with
# its test extras in .venv, then runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=../images/versions.env
. images/versions.env

missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v npm >/dev/null || missing+=(nodejs npm)
command -v chromium >/dev/null || missing+=(chromium)
command -v dockerd >/dev/null || missing+=(docker.io iptables)
if ((${#missing[@]})); then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "run-tests: please install: ${missing[*]} (needs root on Debian/Ubuntu)" >&2
        exit 1
    fi
    echo "run-tests: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v configurable-http-proxy >/dev/null; then
    npm install -g --silent "configurable-http-proxy@${CHP_VERSION}"
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/pip install -q -e ".[test]" "jupyterhub==${JUPYTERHUB_VERSION}"
export PATH="$PWD/.venv/bin:$PATH"

set +e
# Integration tests drive real engines, hubs and browsers on small, shared machines: a test
# that fails is run once more before it counts (the report lists every rerun).
python -m pytest --reruns 1 --reruns-delay 2 "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
    echo "run-tests: pytest collected no tests; that is a failure here" >&2
    exit 1
fi
exit "$rc"
