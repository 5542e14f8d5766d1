#!/usr/bin/env bash
# `make up`: make sure Docker runs, build what is missing, start the compose
# stack, wait for the hub to answer and say how to log in. Re-running it is
# quick: unchanged images are reused and a running hub is left as it is.
#
# Environment (or .env): HUB_BIND, HUB_PORT, GPUWS_ADMIN_USERS,
# GPUWS_AUTHENTICATOR, GPUWS_UP_TIMEOUT (seconds to wait for the hub, default
# 120), and everything docker-compose.yaml reads.
set -euo pipefail

# shellcheck source=scripts/lib.sh source-path=SCRIPTDIR/..
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

t0=$SECONDS
"$GPUWS_ROOT/scripts/install-docker.sh"
"$GPUWS_ROOT/scripts/build-images.sh"
compose=("$GPUWS_ROOT/scripts/compose.sh")
"${compose[@]}" up -d

gpuws_load_config
WAIT_S="${GPUWS_UP_TIMEOUT:-120}"
port="${HUB_PORT:-8000}"
bind="${HUB_BIND:-0.0.0.0}"
host="$bind"
[[ "$host" == 0.0.0.0 || "$host" == "::" || -z "$host" ]] && host=localhost
[[ "$host" == *:* ]] && host="[$host]"   # IPv6 literal
health="http://$host:$port/hub/health"
hub_id="$("${compose[@]}" ps -q hub)"
[[ -n "$hub_id" ]] || gpuws_die "compose started no hub container"

# Whether GET /hub/health answers 200: curl when there is one, else bash's /dev/tcp
# (a fresh Debian has bash but not always curl or python3).
answers() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsS -o /dev/null --max-time 3 "$health"
        return
    fi
    # shellcheck disable=SC2016  # expanded by the inner bash
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        printf "GET /hub/health HTTP/1.0\r\nHost: %s\r\n\r\n" "$1" >&3
        read -r _ code _ <&3
        [[ "$code" == 200 ]]' _ "$(tr -d "[]" <<<"$host")" "$port" 2>/dev/null
}

# The hub's own messages ("[gpu-workspaces] preflight: ...", configuration
# errors) with their indented continuation lines, from its current run.
hub_notes() {
    docker logs --since "$(docker inspect -f '{{.State.StartedAt}}' "$hub_id")" "$hub_id" 2>&1 \
        | awk '/^\[gpu-workspaces\]/ { on = 1; print; next }
               on && /^[[:space:]]/ { print; next }
               { on = 0 }'
}

fail_with_logs() {
    gpuws_log "$1; the hub's last log lines:"
    docker logs --tail 40 "$hub_id" >&2 || true
    exit 1
}

gpuws_log "waiting up to ${WAIT_S}s for $health"
deadline=$((SECONDS + WAIT_S))
until answers 2>/dev/null; do
    # A configuration error ends the hub at once; with `restart: unless-stopped`
    # it would come back and fail again, so don't wait out the timeout.
    state="$(docker inspect -f '{{.State.Status}} {{.RestartCount}}' "$hub_id" 2>/dev/null || echo gone 0)"
    if [[ "$state" != "running 0" ]]; then
        "${compose[@]}" stop hub >/dev/null 2>&1 || true
        fail_with_logs "the hub exited ($state)"
    fi
    [[ $SECONDS -lt $deadline ]] || fail_with_logs "the hub did not answer within ${WAIT_S}s"
    sleep 1
done

notes="$(hub_notes)"
admins="${GPUWS_ADMIN_USERS:-admin}"
cat <<EOF

GPU workspaces are up:  http://$host:$port/   (in $((SECONDS - t0)) s)
EOF
if [[ "$bind" == 0.0.0.0 || "$bind" == "::" ]]; then
    echo "  (from other machines: http://$(hostname -f 2>/dev/null || hostname):$port/)"
fi
if [[ "${GPUWS_AUTHENTICATOR:-native}" == native ]]; then
    cat <<EOF

Log in: open the URL, choose "Sign up" and create the admin account
  ${admins}
(GPUWS_ADMIN_USERS). The first sign-up of an admin name sets its password, so do
it now. Other users sign up the same way; an admin approves them at /hub/authorize.
EOF
else
    echo
    echo "Log in with ${GPUWS_AUTHENTICATOR}; admin users: ${admins} (GPUWS_ADMIN_USERS)."
fi
if [[ -n "$notes" ]]; then
    printf '\nThe hub says:\n%s\n' "$notes"
fi
cat <<EOF

Logs:  scripts/compose.sh logs -f hub      Stop:  make down  (keeps user data)
EOF
