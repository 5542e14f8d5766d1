#!/bin/sh
# The system part of every image's build (run as root; shared by the notebook images and the
# hub): python3 with venv, tini, and with the argument "iptables" also iptables (the hub's
# network guard), each installed with apt only when the base lacks it; and the PID 1 helper
# /usr/local/bin/gpuws-entrypoint. On the local base nothing needs apt (no network).
# Environment: BASE_IMAGE (for messages).
set -eu
need=0
apt_pkgs=""
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    need=1
    apt_pkgs="python3 python3-venv"
fi
command -v tini >/dev/null 2>&1 || apt_pkgs="${apt_pkgs} tini"
if [ "${1:-}" = iptables ] && ! command -v iptables-restore >/dev/null 2>&1; then
    need=1
    apt_pkgs="${apt_pkgs} iptables"
fi
if [ -n "${apt_pkgs}" ]; then
    # shellcheck disable=SC2086  # a list of package names: split on purpose
    if command -v apt-get >/dev/null 2>&1 \
        && apt-get update -q \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ${apt_pkgs}; then
        rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
    elif [ "${need}" = 1 ]; then
        echo "ERROR: ${BASE_IMAGE:-the base image} lacks${apt_pkgs} and apt could not install them" >&2
        exit 1
    else
        echo "WARNING: could not install tini; the server will run as PID 1" >&2
        rm -rf /var/lib/apt/lists/*
    fi
fi

cat >/usr/local/bin/gpuws-entrypoint <<'SCRIPT'
#!/bin/sh
# PID 1 helper: run the command under tini (reaps zombies, -g signals the whole
# process group) when the image has tini; otherwise run it directly.
if command -v tini >/dev/null 2>&1; then exec tini -g -- "$@"; fi
exec "$@"
SCRIPT
chmod 0755 /usr/local/bin/gpuws-entrypoint
