#!/usr/bin/env bash
# Run docker compose for this repository: `docker compose` (v2 plugin) when
# available, else docker-compose (v1). Usage: scripts/compose.sh ARGS...
#
# Before running compose it exports the image names and versions from
# images/versions.env (with .env and the caller's environment taking
# precedence) so that docker-compose.yaml can refer to them.
set -euo pipefail

# shellcheck source=scripts/lib.sh source-path=SCRIPTDIR/..
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

gpuws_load_config
# What the hub starts for CPU-only and GPU sessions: the data-science images we build.
export GPUWS_NOTEBOOK_IMAGE="${GPUWS_NOTEBOOK_IMAGE:-$DATASCIENCE_CPU_IMAGE}"
export GPUWS_GPU_IMAGE="${GPUWS_GPU_IMAGE:-$DATASCIENCE_CUDA_IMAGE}"
# The engine's socket on the Docker host, mounted into the hub: the one DOCKER_HOST names
# when it is a unix socket (e.g. a second engine), else the standard one.
if [[ -z "${GPUWS_DOCKER_SOCKET:-}" ]]; then
    GPUWS_DOCKER_SOCKET=/var/run/docker.sock
    [[ "${DOCKER_HOST:-}" == unix://* ]] && GPUWS_DOCKER_SOCKET="${DOCKER_HOST#unix://}"
fi
export GPUWS_DOCKER_SOCKET
# Stable project name whatever the checkout folder is called.
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-gpu-workspaces}"
# A second stack on the same engine (another project name, e.g. a staging hub) gets its own
# container names, homes, network and hub state by default, never the first stack's.
if [[ "$COMPOSE_PROJECT_NAME" != gpu-workspaces ]]; then
    export GPUWS_CONTAINER_PREFIX="${GPUWS_CONTAINER_PREFIX:-$COMPOSE_PROJECT_NAME}"
    export GPUWS_HOME_VOLUME="${GPUWS_HOME_VOLUME:-$COMPOSE_PROJECT_NAME-home-{username\}}"
    export GPUWS_NETWORK="${GPUWS_NETWORK:-$COMPOSE_PROJECT_NAME}"
    export GPUWS_HUB_STATE_VOLUME="${GPUWS_HUB_STATE_VOLUME:-$COMPOSE_PROJECT_NAME-hub-state}"
fi
cd "$GPUWS_ROOT"
if docker compose version >/dev/null 2>&1; then
    exec docker compose "$@"
elif command -v docker-compose >/dev/null 2>&1; then
    exec docker-compose "$@"
fi
gpuws_die "neither 'docker compose' nor 'docker-compose' is installed (run scripts/install-docker.sh)"
