#!/usr/bin/env bash
# Build a minimal Debian base image WITHOUT a container registry.
#
# This is the supported path for offline, air-gapped or mirror-only sites: the
# root file system comes from a Debian mirror via debootstrap and is loaded into
# the local Docker engine with `docker import`. The notebook and hub images are
# then built FROM it (scripts/build-images.sh does that automatically when the
# public base images cannot be pulled).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VERSIONS_ENV="${SCRIPT_DIR}/../versions.env"

usage() {
    cat <<EOF
Usage: $(basename "$0") [options]

Build a minimal Debian image with debootstrap and load it into Docker with
'docker import'. Needs root, debootstrap and a running Docker engine; needs no
container registry. The image contains python3 + python3-venv, ca-certificates,
tini and iptables, with apt lists, caches and documentation removed.

Options:
  --tag NAME            image name (default: BASE_LOCAL_IMAGE from images/versions.env,
                        currently: ${DEFAULT_TAG:-unset})
  --suite NAME          Debian suite (default: bookworm)
  --mirror URL          Debian mirror (default: http://deb.debian.org/debian)
  --security-mirror URL security mirror for the suite's security updates
                        (default: http://deb.debian.org/debian-security);
                        'none' skips security updates (e.g. a mirror-only site
                        that has no security mirror)
  --ca-cert FILE        extra CA certificate (PEM) to trust inside the image, e.g.
                        a site's TLS-intercepting proxy CA; repeatable
  --include PKGS        extra comma-separated Debian packages to install
  --force               rebuild even if the tag already exists
  -h, --help            show this help

Examples:
  $(basename "$0")
  $(basename "$0") --mirror http://mirror.example.org/debian --security-mirror none \\
      --ca-cert /usr/local/share/ca-certificates/corp-proxy.crt
EOF
}

die() { echo "make-base-image: error: $*" >&2; exit 1; }
log() { echo "make-base-image: $*" >&2; }

DEFAULT_TAG=""
if [[ -r "$VERSIONS_ENV" ]]; then
    DEFAULT_TAG="$(sed -n 's/^BASE_LOCAL_IMAGE=//p' "$VERSIONS_ENV" | tail -n 1)"
fi

TAG="$DEFAULT_TAG"
SUITE="bookworm"
MIRROR="http://deb.debian.org/debian"
SECURITY_MIRROR="http://deb.debian.org/debian-security"
EXTRA_INCLUDE=""
FORCE=0
CA_CERTS=()

while [[ $# -gt 0 ]]; do
    case "$1" in
        --tag) [[ $# -ge 2 ]] || die "--tag needs a value"; TAG="$2"; shift 2 ;;
        --suite) [[ $# -ge 2 ]] || die "--suite needs a value"; SUITE="$2"; shift 2 ;;
        --mirror) [[ $# -ge 2 ]] || die "--mirror needs a value"; MIRROR="$2"; shift 2 ;;
        --security-mirror)
            [[ $# -ge 2 ]] || die "--security-mirror needs a value"; SECURITY_MIRROR="$2"; shift 2 ;;
        --ca-cert) [[ $# -ge 2 ]] || die "--ca-cert needs a file"; CA_CERTS+=("$2"); shift 2 ;;
        --include) [[ $# -ge 2 ]] || die "--include needs a value"; EXTRA_INCLUDE="$2"; shift 2 ;;
        --force) FORCE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

[[ -n "$TAG" ]] || die "no --tag given and BASE_LOCAL_IMAGE not found in $VERSIONS_ENV"
command -v docker >/dev/null 2>&1 || die "docker CLI not found (run scripts/install-docker.sh)"
docker info >/dev/null 2>&1 || die "cannot talk to the Docker engine (is dockerd running?)"

if [[ "$FORCE" -eq 0 ]] && docker image inspect "$TAG" >/dev/null 2>&1; then
    log "$TAG already exists; nothing to do (use --force to rebuild)"
    exit 0
fi

[[ "$(id -u)" -eq 0 ]] || die "debootstrap needs root; run as root (sudo $0 ...)"
command -v debootstrap >/dev/null 2>&1 \
    || die "debootstrap not found; install it (Debian/Ubuntu: apt-get install debootstrap)"
for cert in "${CA_CERTS[@]+"${CA_CERTS[@]}"}"; do
    [[ -f "$cert" && -r "$cert" ]] || die "CA certificate not readable: $cert"
    grep -q -- '-----BEGIN CERTIFICATE-----' "$cert" || die "not a PEM certificate: $cert"
done

WORKDIR="$(mktemp -d "${TMPDIR:-/var/tmp}/gpuws-base.XXXXXX")"
ROOTFS="$WORKDIR/rootfs"
BOOTSTRAP_LOG="$WORKDIR/debootstrap.log"
cleanup() {
    # Nothing is mounted into the chroot on purpose; unmount defensively anyway
    # so that removing the folder can never descend into a host file system.
    local m
    for m in proc sys dev/pts dev; do
        if mountpoint -q "$ROOTFS/$m" 2>/dev/null; then umount -l "$ROOTFS/$m" || true; fi
    done
    rm -rf --one-file-system "$WORKDIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start=$SECONDS
# iptables: the hub's network guard; with it, every image builds on this base offline.
include="ca-certificates,python3,python3-venv,tini,iptables"
[[ -n "$EXTRA_INCLUDE" ]] && include="$include,$EXTRA_INCLUDE"

log "debootstrap $SUITE from $MIRROR into $ROOTFS (packages: $include)"
debootstrap --variant=minbase --include="$include" "$SUITE" "$ROOTFS" "$MIRROR" \
    >"$BOOTSTRAP_LOG" 2>&1 || {
    tail -n 30 "$BOOTSTRAP_LOG" >&2
    die "debootstrap failed (last lines of its log above)"
}

in_chroot() { LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive chroot "$ROOTFS" "$@"; }
# Run a step with its chatter in a log; show the log only if the step fails.
quietly() {
    local step_log="$WORKDIR/step.log"
    "$@" >"$step_log" 2>&1 || {
        tail -n 30 "$step_log" >&2
        die "step failed: $*"
    }
}

# apt configuration for the image and everything built FROM it:
# no recommends, no docs/man pages (copyright files are kept), clean caches.
cat >"$ROOTFS/etc/apt/apt.conf.d/90gpuws" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
EOF
mkdir -p "$ROOTFS/etc/dpkg/dpkg.cfg.d"
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/90gpuws-nodoc" <<'EOF'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
EOF
# never start services while installing packages in the chroot
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"
chmod 0755 "$ROOTFS/usr/sbin/policy-rc.d"

{
    echo "deb $MIRROR $SUITE main"
    echo "deb $MIRROR $SUITE-updates main"
    if [[ "$SECURITY_MIRROR" != "none" ]]; then
        echo "deb $SECURITY_MIRROR $SUITE-security main"
    fi
} >"$ROOTFS/etc/apt/sources.list"

if [[ "${#CA_CERTS[@]}" -gt 0 ]]; then
    mkdir -p "$ROOTFS/usr/local/share/ca-certificates"
    for cert in "${CA_CERTS[@]}"; do
        name="$(basename "$cert")"
        name="gpuws-${name%.*}.crt"   # update-ca-certificates only reads *.crt
        install -m 0644 "$cert" "$ROOTFS/usr/local/share/ca-certificates/$name"
        log "trusting extra CA: $cert"
    done
fi
quietly in_chroot update-ca-certificates

if [[ "$SECURITY_MIRROR" == "none" ]]; then
    log "applying $SUITE-updates (security updates skipped: --security-mirror none)"
else
    log "applying $SUITE-updates and $SUITE-security updates"
fi
quietly in_chroot apt-get update
quietly in_chroot apt-get -y -o Dpkg::Options::=--force-confold dist-upgrade
quietly in_chroot apt-get clean

log "cleaning caches and documentation"
rm -f "$ROOTFS/usr/sbin/policy-rc.d"
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/cache/debconf/*-old \
    "$ROOTFS"/var/lib/dpkg/*-old "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/* \
    "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/*
find "$ROOTFS/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete
find "$ROOTFS/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
find "$ROOTFS/var/log" -type f -exec truncate -s 0 {} +
# Docker provides these at run time; don't bake the build host's values in.
: >"$ROOTFS/etc/resolv.conf"
: >"$ROOTFS/etc/hostname"
[[ -e "$ROOTFS/etc/machine-id" ]] && : >"$ROOTFS/etc/machine-id"

ca_bundle=/etc/ssl/certs/ca-certificates.crt
[[ -s "$ROOTFS$ca_bundle" ]] || die "no CA bundle at $ca_bundle in the image"
ca_sum="none"
if [[ "${#CA_CERTS[@]}" -gt 0 ]]; then
    ca_sum="$(cat "${CA_CERTS[@]}" | sha256sum | cut -c1-16)"
fi

log "importing as $TAG"
tar --numeric-owner -C "$ROOTFS" -c . | docker import \
    --message "gpu-workspaces base: debootstrap $SUITE from $MIRROR" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "ENV PIP_CERT=$ca_bundle" \
    --change "ENV REQUESTS_CA_BUNDLE=$ca_bundle" \
    --change "ENV SSL_CERT_FILE=$ca_bundle" \
    --change "LABEL org.opencontainers.image.title=gpu-workspaces-debian-base" \
    --change "LABEL io.gpu-workspaces.base.suite=$SUITE" \
    --change "LABEL io.gpu-workspaces.base.mirror=$MIRROR" \
    --change "LABEL io.gpu-workspaces.base.extra-ca-sha256=$ca_sum" \
    --change 'CMD ["/bin/bash"]' \
    - "$TAG" >/dev/null

size="$(docker image inspect -f '{{.Size}}' "$TAG")"
log "built $TAG ($((size / 1024 / 1024)) MiB) in $((SECONDS - start)) s"
