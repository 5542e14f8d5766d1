#!/usr/bin/env bash
# `make bundle`: carry the images to a host with no network. Builds what is missing
# (scripts/build-images.sh), then writes every image the stack needs into one compressed
# `docker save` archive, with a copy of images/versions.env and their checksums.
# `make up BUNDLE=DIR` (scripts/up.sh) loads it again with `scripts/bundle.sh --load DIR`.
set -euo pipefail

# shellcheck source=scripts/lib.sh source-path=SCRIPTDIR/..
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ARCHIVE=images.tar.gz
VERSIONS=versions.env
LIST=images.txt
SUMS=SHA256SUMS

usage() {
    cat <<EOF
Usage: $(basename "$0") [--out DIR] [--level N]
       $(basename "$0") --load DIR

Without --load: build the missing images, then write DIR (default
dist/gpu-workspaces-<IMAGE_TAG>.bundle, or BUNDLE_OUT) with
  $ARCHIVE   every image the stack needs, one docker save (shared layers once)
  $VERSIONS     a copy of images/versions.env
  $LIST      the images saved: name and image id
  $SUMS      sha256 of the three files above
and print its path, size and the seconds taken.

--load DIR: check DIR's checksums and that its versions.env is this checkout's,
  then docker load its images (what \`make up BUNDLE=DIR\` does before it starts).

Options:
  --out DIR    where to write the bundle (also BUNDLE_OUT=DIR)
  --level N    gzip level 1-9 (default 1: about as small as 6 here, much faster);
               pigz is used when installed
  -h, --help   show this help
EOF
}

# ---- writing a bundle --------------------------------------------------------------------

# The *_IMAGE variables of images/versions.env, in the file's order (not the *_PUBLIC_BASE
# ones: a public base is saved only when an image was built on it).
image_vars() {
    sed -n 's/^\([A-Z0-9_]*_IMAGE\)=.*/\1/p' "$GPUWS_ROOT/images/versions.env"
}

image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null; }

image_base() { # the base an image of ours was built FROM ("" for the local base itself)
    docker image inspect \
        -f '{{ with .Config.Labels }}{{ index . "org.opencontainers.image.base.name" }}{{ end }}' \
        "$1" 2>/dev/null || true
}

human_size() { # bytes -> "612 MiB"
    awk -v b="$1" 'BEGIN { if (b >= 1073741824) printf "%.2f GiB", b / 1073741824;
                           else printf "%.0f MiB", b / 1048576 }'
}

write_bundle() { # out-dir level
    local out="$1" level="$2" t0=$SECONDS var name base
    "$GPUWS_ROOT/scripts/build-images.sh"
    gpuws_load_config
    local built_s=$((SECONDS - t0))

    # Every *_IMAGE of versions.env (the local base only if an image is built on it, which is
    # what build-images.sh on the offline host then reuses), and the base each one names.
    local names=() bases=()
    for var in $(image_vars); do
        name="${!var:-}"
        [[ -n "$name" ]] || gpuws_die "$var is empty (images/versions.env)"
        if ! image_id "$name" >/dev/null; then
            [[ "$var" == BASE_LOCAL_IMAGE ]] && continue
            gpuws_die "$var=$name is not on this engine after scripts/build-images.sh;" \
                "build it (make images) and run make bundle again"
        fi
        printf '%s\n' "${names[@]+"${names[@]}"}" | grep -qxF "$name" || names+=("$name")
    done
    for name in "${names[@]}"; do
        base="$(image_base "$name")"
        if [[ -n "$base" ]] && ! printf '%s\n' "${names[@]}" "${bases[@]}" | grep -qxF "$base"; then
            image_id "$base" >/dev/null \
                || gpuws_die "$name was built on $base, which is no longer on this engine;" \
                    "rebuild it (make images) and run make bundle again"
            bases+=("$base")
        fi
    done
    names+=("${bases[@]+"${bases[@]}"}")

    local compress=(gzip "-$level") tool=gzip
    if command -v pigz >/dev/null 2>&1; then compress=(pigz "-$level"); tool=pigz; fi

    mkdir -p "$out" || gpuws_die "cannot create $out"
    out="$(cd "$out" && pwd)"
    # The checksums go last: a bundle cut short by a full disk or ^C is refused on load.
    rm -f "$out/$SUMS"
    trap 'rm -f "$out/$ARCHIVE.part" "$out/$LIST.part"' EXIT
    {
        echo "# written by scripts/bundle.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ)" \
            "from $(git -C "$GPUWS_ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
        for name in "${names[@]}"; do echo "$name $(image_id "$name")"; done
    } >"$out/$LIST.part"
    gpuws_log "saving ${#names[@]} images into $out/$ARCHIVE ($tool -$level): ${names[*]}"
    local t1=$SECONDS
    if ! docker save "${names[@]}" | "${compress[@]}" >"$out/$ARCHIVE.part"; then
        gpuws_die "writing $out/$ARCHIVE failed (is the disk full? $(df -h --output=avail "$out" \
            | tail -n 1 | tr -d ' ') free)"
    fi
    mv "$out/$ARCHIVE.part" "$out/$ARCHIVE"
    mv "$out/$LIST.part" "$out/$LIST"
    cp "$GPUWS_ROOT/images/versions.env" "$out/$VERSIONS"
    (cd "$out" && sha256sum "$ARCHIVE" "$VERSIONS" "$LIST" >"$SUMS.part" && mv "$SUMS.part" "$SUMS")
    trap - EXIT

    local bytes
    bytes="$(stat -c %s "$out/$ARCHIVE")"
    cat <<EOF
Bundle: $out
  $ARCHIVE: $(human_size "$bytes") ($bytes bytes), ${#names[@]} images
  $((SECONDS - t0)) s: images ready in ${built_s} s (scripts/build-images.sh), saved in $((SECONDS - t1)) s
Copy the whole folder to the offline host, into a checkout of the same version, and run:
  make up BUNDLE=$out
EOF
}

# ---- loading a bundle --------------------------------------------------------------------

# KEY=value lines of an env file, sorted, for comparing two of them.
env_pairs() { grep -E '^[A-Za-z_][A-Za-z0-9_]*=' "$1" | LC_ALL=C sort; }

check_versions() { # bundle-dir
    local dir="$1" ours="$GPUWS_ROOT/images/versions.env"
    cmp -s "$dir/$VERSIONS" "$ours" && return 0
    # build-images.sh hashes this file: any difference would rebuild every image, which
    # needs the network. An image name that differs is named first.
    local key theirs mine first=""
    while IFS= read -r key; do
        theirs="$(sed -n "s/^$key=//p" "$dir/$VERSIONS")"
        mine="$(sed -n "s/^$key=//p" "$ours")"
        [[ "$theirs" == "$mine" ]] && continue
        local pair="the bundle holds $key=${theirs:-(none)}, this checkout needs $key=${mine:-(none)}"
        if [[ "$key" == *_IMAGE ]]; then first="$pair"; break; fi
        first="${first:-$pair}"
    done < <({ env_pairs "$dir/$VERSIONS"; env_pairs "$ours"; } | cut -d= -f1 | LC_ALL=C sort -u)
    [[ -n "$first" ]] || first="the bundle's versions.env differs from images/versions.env here"
    gpuws_die "$first:" \
        "make the bundle from the same version of gpu-workspaces as this checkout" \
        "(build-images.sh would rebuild every image); nothing was loaded"
}

load_bundle() { # path (the bundle's folder, or a file in it)
    local dir="$1" t0=$SECONDS file
    [[ -e "$dir" ]] || gpuws_die "no bundle at $dir (make bundle writes one; see docs/deploy.md)"
    [[ -d "$dir" ]] || dir="$(dirname "$dir")"
    dir="$(cd "$dir" && pwd)"
    for file in "$SUMS" "$ARCHIVE" "$VERSIONS" "$LIST"; do
        [[ -f "$dir/$file" ]] || gpuws_die "the bundle $dir has no $file: copy the whole folder" \
            "that make bundle wrote; nothing was loaded"
        [[ "$file" == "$SUMS" ]] || grep -qE "^[0-9a-f]{64}  $file\$" "$dir/$SUMS" \
            || gpuws_die "$dir/$SUMS has no checksum for $file; nothing was loaded"
    done
    gpuws_log "checking the checksums of $dir"
    local failed
    if ! failed="$(cd "$dir" && sha256sum -c --quiet "$SUMS" 2>/dev/null)"; then
        failed="$(sed -n 's/: FAILED.*//p' <<<"$failed" | paste -sd' ')"
        gpuws_die "${failed:-a file} in the bundle $dir does not match its checksum in $SUMS" \
            "(a damaged or incomplete copy); nothing was loaded"
    fi
    check_versions "$dir"
    local made here
    made="$(sed -n '1s/.* from //p' "$dir/$LIST")"
    here="$(git -C "$GPUWS_ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
    if [[ -n "$made" && "$made" != "$here" ]]; then
        gpuws_log "note: the bundle was made from $made, this checkout is $here; an image whose" \
            "inputs differ is rebuilt by build-images.sh, which needs the network"
    fi

    gpuws_log "loading the images of $dir (docker load)"
    docker load -i "$dir/$ARCHIVE" >/dev/null || gpuws_die "docker load of $dir/$ARCHIVE failed"
    local name id count=0
    while read -r name id; do
        [[ -z "$name" || "$name" == \#* ]] && continue
        [[ "$(image_id "$name")" == "$id" ]] \
            || gpuws_die "after docker load, $name is not the image $id of the bundle"
        count=$((count + 1))
    done <"$dir/$LIST"
    gpuws_load_config
    local var
    for var in $(image_vars); do
        [[ "$var" == BASE_LOCAL_IMAGE ]] && continue
        image_id "${!var}" >/dev/null \
            || gpuws_die "$var=${!var} is not in the bundle $dir (make bundle on the same version)"
    done
    gpuws_log "loaded $count images from $dir in $((SECONDS - t0)) s"
}

# ---- main ----------------------------------------------------------------------------------

OUT=""
LEVEL=1
LOAD=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) [[ $# -ge 2 ]] || gpuws_die "--out needs a folder"; OUT="$2"; shift ;;
        --out=*) OUT="${1#--out=}" ;;
        --level) [[ $# -ge 2 ]] || gpuws_die "--level needs a number 1-9"; LEVEL="$2"; shift ;;
        --level=*) LEVEL="${1#--level=}" ;;
        --load) [[ $# -ge 2 ]] || gpuws_die "--load needs the bundle's folder"; LOAD="$2"; shift ;;
        --load=*) LOAD="${1#--load=}" ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; gpuws_die "unknown option: $1" ;;
    esac
    shift
done
[[ "$LEVEL" =~ ^[1-9]$ ]] || gpuws_die "--level must be a gzip level from 1 to 9, not '$LEVEL'"
command -v docker >/dev/null 2>&1 || gpuws_die "docker CLI not found (run scripts/install-docker.sh)"
docker info >/dev/null 2>&1 || gpuws_die "cannot reach the Docker engine (run scripts/install-docker.sh)"

if [[ -n "$LOAD" ]]; then
    load_bundle "$LOAD"
    exit 0
fi
gpuws_load_config
write_bundle "${OUT:-${BUNDLE_OUT:-$GPUWS_ROOT/dist/gpu-workspaces-$IMAGE_TAG.bundle}}" "$LEVEL"
