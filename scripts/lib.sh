# shellcheck shell=bash
# Helpers shared by scripts/*.sh. Source it; it has no side effects of its own.

# Repository root (this file lives in <root>/scripts/).
GPUWS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC2034  # used by the scripts that source this file
GPUWS_STATE_DIR="$GPUWS_ROOT/.state"

gpuws_log() { echo "$(basename "$0"): $*" >&2; }
gpuws_die() { echo "$(basename "$0"): error: $*" >&2; exit 1; }

# Export KEY=value lines of an env file for every KEY that is not already set.
# Blank lines and comments are skipped, an optional "export " prefix and
# matching surrounding quotes are removed; nothing is evaluated.
_gpuws_export_unset_from() {
    local file="$1" line key value
    [[ -f "$file" ]] || return 0
    while IFS= read -r line || [[ -n "$line" ]]; do
        line="${line#"${line%%[![:space:]]*}"}"          # strip leading blanks
        [[ -z "$line" || "$line" == \#* ]] && continue
        line="${line#export }"
        [[ "$line" == *=* ]] || continue
        key="${line%%=*}"
        value="${line#*=}"
        [[ "$key" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
        if [[ "$value" =~ ^\"(.*)\"$ || "$value" =~ ^\'(.*)\'$ ]]; then
            value="${BASH_REMATCH[1]}"
        fi
        [[ -n "${!key+x}" ]] && continue                 # caller's value wins
        export "$key=$value"
    done <"$file"
}

# Load settings with the precedence: caller's environment > .env (site
# settings, optional) > images/versions.env (pinned defaults).
gpuws_load_config() {
    _gpuws_export_unset_from "$GPUWS_ROOT/.env"
    _gpuws_export_unset_from "$GPUWS_ROOT/images/versions.env"
    : "${IMAGE_TAG:?images/versions.env is missing or incomplete}"
}

# The repository's public address for the org.opencontainers.image.source
# label, with any credentials removed; "unknown" when there is no remote.
gpuws_source_url() {
    local url
    url="$(git -C "$GPUWS_ROOT" config --get remote.origin.url 2>/dev/null || true)"
    url="$(printf '%s' "$url" | sed -E 's#^([a-z+]+://)[^/@]*@#\1#')"
    printf '%s\n' "${url:-unknown}"
}
