#!/usr/bin/env bash
# Make sure a Docker engine is reachable; on Debian (as root) install and start one.
#
# Idempotent: exits 0 at once when `docker info` works. Otherwise installs
# Debian's docker.io (and docker-compose v1 when no compose is available),
# starts dockerd in the background and waits up to 60 s for it.
#
# Environment:
#   DOCKERD_EXTRA_PATH  folders prepended to dockerd's PATH when this script
#                       starts it (tests use it to put a fake
#                       nvidia-container-runtime-hook where dockerd finds it)
set -euo pipefail

LOG=/var/log/gpuws-dockerd.log
APT_LOG=/var/log/gpuws-install-docker.log
me="$(basename "$0")"

say() { echo "$me: $*" >&2; }

if docker info >/dev/null 2>&1; then
    if [[ -n "${DOCKERD_EXTRA_PATH:-}" ]]; then
        pid="$(pidof dockerd 2>/dev/null | awk '{print $1}' || true)"
        if [[ -n "$pid" && -r "/proc/$pid/environ" ]] \
            && ! tr '\0' '\n' <"/proc/$pid/environ" | grep -q "^PATH=${DOCKERD_EXTRA_PATH}"; then
            say "note: Docker is already running, so DOCKERD_EXTRA_PATH is not on dockerd's" \
                "PATH; restart dockerd yourself if you need it"
        fi
    fi
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    if command -v docker >/dev/null 2>&1; then
        say "the docker CLI is installed but cannot reach the engine as $(id -un)."
        say "Start the Docker engine (e.g. 'sudo systemctl start docker') and make sure"
        say "this user may use it (e.g. 'sudo usermod -aG docker $(id -un)', then log in again),"
        say "or run this script as root on Debian to install and start docker.io."
    else
        say "Docker is not installed. Install Docker Engine with the compose plugin"
        say "(https://docs.docker.com/engine/install/), or on Debian run this script as root"
        say "to install Debian's docker.io and docker-compose."
    fi
    exit 1
fi

if [[ ! -r /etc/debian_version ]] || ! command -v apt-get >/dev/null 2>&1; then
    say "this is not a Debian system; install Docker Engine with the compose plugin yourself"
    say "(https://docs.docker.com/engine/install/) and start it, then run this again."
    exit 1
fi

pkgs=()
if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    pkgs+=(docker.io)
fi
if ! { command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; } \
    && ! command -v docker-compose >/dev/null 2>&1; then
    pkgs+=(docker-compose)
fi
if [[ ${#pkgs[@]} -gt 0 ]]; then
    say "installing ${pkgs[*]} with apt-get (log: $APT_LOG)"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update && apt-get install -y --no-install-recommends "${pkgs[@]}"; } \
            >"$APT_LOG" 2>&1; then
        tail -n 20 "$APT_LOG" >&2
        say "apt-get failed; see $APT_LOG"
        exit 1
    fi
fi

if pidof dockerd >/dev/null 2>&1; then
    say "dockerd is running but not answering yet; waiting"
elif [[ -z "${DOCKERD_EXTRA_PATH:-}" ]] && [[ -d /run/systemd/system ]] \
        && command -v systemctl >/dev/null 2>&1; then
    say "starting docker with systemctl"
    systemctl start docker
else
    dockerd_path="$PATH"
    [[ -n "${DOCKERD_EXTRA_PATH:-}" ]] && dockerd_path="$DOCKERD_EXTRA_PATH:$PATH"
    say "starting dockerd in the background (log: $LOG)"
    PATH="$dockerd_path" nohup dockerd >>"$LOG" 2>&1 </dev/null &
    disown || true
fi

for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then
        say "Docker is ready"
        exit 0
    fi
    sleep 1
done
say "Docker did not answer within 60 s; see $LOG (or 'journalctl -u docker')"
exit 1
