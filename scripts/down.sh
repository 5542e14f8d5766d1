#!/usr/bin/env bash
# `make down`: stop and remove the hub (compose down). Volumes are kept: user
# homes, the hub database and secrets survive.
#
# Notebook containers are started by the hub, not by compose. By default they
# keep running (and keep their GPUs); the hub adopts them again on the next
# `make up`. While any is running the gpu-workspaces network stays too.
# GPUWS_STOP_SERVERS=1 (make down STOP_SERVERS=1) stops them as well.
# Extra arguments go to `compose down` (e.g. -v also removes the hub's state
# volume; users' home volumes are never removed here).
set -euo pipefail

# shellcheck source=scripts/lib.sh source-path=SCRIPTDIR/..
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

gpuws_load_config
NETWORK="${GPUWS_NETWORK:-gpu-workspaces}"   # docker-compose.yaml: networks.default.name
compose=("$GPUWS_ROOT/scripts/compose.sh")
project="${COMPOSE_PROJECT_NAME:-gpu-workspaces}"

# Running containers on the network that compose did not start (user servers).
user_servers() {
    docker ps --filter "network=$NETWORK" \
        --format '{{.Names}}|{{.Label "com.docker.compose.project"}}' 2>/dev/null \
        | awk -F'|' -v p="$project" '$2 != p { print $1 }'
}

if [[ "${GPUWS_STOP_SERVERS:-0}" == 1 ]]; then
    "${compose[@]}" stop hub          # first, so the hub does not react to the stops
    mapfile -t servers < <(user_servers)
    if [[ ${#servers[@]} -gt 0 ]]; then
        gpuws_log "stopping ${#servers[@]} notebook server(s): ${servers[*]}"
        docker stop "${servers[@]}" >/dev/null
    fi
    exec "${compose[@]}" down "$@"
fi

if "${compose[@]}" down "$@"; then
    exit 0
fi
mapfile -t servers < <(user_servers)
if [[ ${#servers[@]} -gt 0 ]]; then
    gpuws_log "the hub is stopped; ${#servers[@]} notebook server(s) still run on network" \
        "$NETWORK and keep their GPUs: ${servers[*]}"
    gpuws_log "'make up' adopts them again; 'make down STOP_SERVERS=1' stops them too"
    exit 0
fi
exit 1
