#!/usr/bin/env bash
# Run a command against the tests' private Docker engine (tests/engine.py): start it (or
# reuse it), run the command in the engine's network namespace with DOCKER_HOST pointing at
# it, then stop the engine (its data root, with the built images, stays for the next run).
# The machine's own engine is never used, stopped or changed.
#
# Usage: scripts/test-engine.sh COMMAND [ARG...]
# Environment: PYTHON (default .venv/bin/python, else python3) runs tests/engine.py;
# GPUWS_TEST_ENGINE_KEEP=1 leaves the engine running afterwards.
set -euo pipefail

# shellcheck source=scripts/lib.sh source-path=SCRIPTDIR/..
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $# -gt 0 ]] || gpuws_die "usage: $0 COMMAND [ARG...]"
python="${PYTHON:-$GPUWS_ROOT/.venv/bin/python}"
[[ -x "$python" ]] || python=python3
engine=("$python" "$GPUWS_ROOT/tests/engine.py")

# One run at a time: a second run (another terminal, a helper) waits here instead of
# stopping the engine under the first one.
exec 9>/run/gpuws-test-engine.lock
flock 9
settings="$("${engine[@]}" up)" || gpuws_die "the tests' private Docker engine did not start"
if [[ "${GPUWS_TEST_ENGINE_KEEP:-0}" != 1 ]]; then
    trap '"${engine[@]}" down' EXIT
fi
setting() { sed -n "s/^$1=//p" <<<"$settings"; }
# The namespace has no route out: image builds reach the package registries through
# GPUWS_BUILD_PROXY (on the host end of its link) and never try a registry (GPUWS_OFFLINE).
set +e
# GPUWS_HOST_NETNS: the machine's own network namespace (this shell's), for tests that put a
# listener on the host end of the link.
DOCKER_HOST="$(setting DOCKER_HOST)" GPUWS_BUILD_PROXY="$(setting GPUWS_BUILD_PROXY)" \
    GPUWS_OFFLINE=1 GPUWS_HOST_NETNS="/proc/$$/ns/net" nsenter --net="$(setting NETNS_PATH)" -- "$@"
rc=$?
set -e
exit "$rc"
