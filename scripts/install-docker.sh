#!/usr/bin/env bash
# Make sure a Docker engine is reachable and the offline image build can run; on Debian
# (as root) install what is missing and start the engine.
#
# Idempotent: exits 0 at once when `docker info` works and debootstrap is there.
# Otherwise installs Debian's docker.io (and docker-compose v1 when no compose is
# available) and debootstrap (the local base image when no registry is reachable),
# starts dockerd in the background and waits up to 60 s for it.
set -euo pipefail

LOG=/var/log/gpuws-dockerd.log
APT_LOG=/var/log/gpuws-install-docker.log
me="$(basename "$0")"

say() { echo "$me: $*" >&2; }

if docker info >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1; then
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    if docker info >/dev/null 2>&1; then
        say "note: debootstrap is not installed; without a reachable registry the images"
        say "need it for their local Debian base (as root: apt-get install debootstrap)"
        exit 0
    fi
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
# The local Debian base (images/base/make-base-image.sh) when no registry answers.
command -v debootstrap >/dev/null 2>&1 || pkgs+=(debootstrap)
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

if docker info >/dev/null 2>&1; then
    exit 0
elif [[ -r /var/run/docker.pid ]] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    say "dockerd is running but not answering yet; waiting"
elif [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
    say "starting docker with systemctl"
    systemctl start docker
else
    say "starting dockerd in the background (log: $LOG)"
    nohup dockerd >>"$LOG" 2>&1 </dev/null &
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
