#!/usr/bin/env bash
# `make up`: make sure Docker runs, build what is missing, start the compose
# stack, wait for the hub to answer and say how to log in.
set -euo pipefail

# shellcheck source=scripts/lib.sh source-path=SCRIPTDIR/..
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WAIT_S="${GPUWS_UP_TIMEOUT:-120}"

"$GPUWS_ROOT/scripts/install-docker.sh"
"$GPUWS_ROOT/scripts/build-images.sh"
"$GPUWS_ROOT/scripts/compose.sh" up -d

gpuws_load_config
port="${HUB_PORT:-8000}"
bind="${HUB_BIND:-0.0.0.0}"
host="$bind"
[[ "$host" == 0.0.0.0 || "$host" == "::" || -z "$host" ]] && host=localhost
[[ "$host" == *:* ]] && host="[$host]"   # IPv6 literal
health="http://$host:$port/hub/health"

answers() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsS -o /dev/null --max-time 3 "$1"
    else
        python3 - "$1" <<'EOF' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=3)
EOF
    fi
}

gpuws_log "waiting up to ${WAIT_S}s for $health"
deadline=$((SECONDS + WAIT_S))
until answers "$health" 2>/dev/null; do
    if [[ $SECONDS -ge $deadline ]]; then
        gpuws_log "the hub did not answer within ${WAIT_S}s; its last log lines:"
        "$GPUWS_ROOT/scripts/compose.sh" logs --tail 40 hub >&2 || true
        exit 1
    fi
    sleep 2
done

admins="${GPUWS_ADMIN_USERS:-admin}"
cat <<EOF

GPU workspaces are up:  http://$host:$port/
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
cat <<EOF

Logs:  scripts/compose.sh logs -f hub      Stop:  make down  (keeps user data)
EOF
