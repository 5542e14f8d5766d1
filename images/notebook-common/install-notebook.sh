#!/bin/sh
# Shared by images/notebook-cpu and images/notebook-cuda (run as root at build time):
# a Python venv with JupyterHub + JupyterLab in /opt/venv, tini as PID 1 when the base has
# or can install it, and the jovyan user (uid 1000, gid 100) that owns /home/jovyan.
#
# Environment (the Dockerfiles pass their build arguments): JUPYTERHUB_VERSION and
# JUPYTERLAB_VERSION (required), BASE_IMAGE (for messages), PIP_INDEX_URL and
# PIP_EXTRA_INDEX_URL (optional mirror; empty means pip's default index).
# Any base with python3 works; if `python3 -m venv` is missing, python3 + python3-venv are
# installed with apt.
set -eu
: "${JUPYTERHUB_VERSION:?pass --build-arg JUPYTERHUB_VERSION (see images/versions.env)}"
: "${JUPYTERLAB_VERSION:?pass --build-arg JUPYTERLAB_VERSION (see images/versions.env)}"
[ -n "${PIP_INDEX_URL:-}" ] || unset PIP_INDEX_URL
[ -n "${PIP_EXTRA_INDEX_URL:-}" ] || unset PIP_EXTRA_INDEX_URL

need_python=0
apt_pkgs=""
if ! python3 -m venv /opt/venv >/dev/null 2>&1; then
    rm -rf /opt/venv
    need_python=1
    apt_pkgs="python3 python3-venv"
fi
command -v tini >/dev/null 2>&1 || apt_pkgs="${apt_pkgs} tini"
if [ -n "${apt_pkgs}" ]; then
    # shellcheck disable=SC2086  # a list of package names: split on purpose
    if command -v apt-get >/dev/null 2>&1 \
        && apt-get update -q \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ${apt_pkgs}; then
        rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
    elif [ "${need_python}" = 1 ]; then
        echo "ERROR: ${BASE_IMAGE:-the base image} has no working 'python3 -m venv' and apt could not install python3-venv" >&2
        exit 1
    else
        echo "WARNING: could not install tini; the notebook server will run as PID 1" >&2
        rm -rf /var/lib/apt/lists/*
    fi
fi
[ -x /opt/venv/bin/python ] || python3 -m venv /opt/venv
/opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
    "jupyterhub==${JUPYTERHUB_VERSION}" "jupyterlab==${JUPYTERLAB_VERSION}"
/opt/venv/bin/pip check

cat >/usr/local/bin/gpuws-entrypoint <<'SCRIPT'
#!/bin/sh
# PID 1 helper: run the command under tini (reaps zombies, -g signals the whole
# process group) when the image has tini; otherwise run it directly.
if command -v tini >/dev/null 2>&1; then exec tini -g -- "$@"; fi
exec "$@"
SCRIPT
chmod 0755 /usr/local/bin/gpuws-entrypoint

getent group 100 >/dev/null || groupadd --gid 100 users
other="$(getent passwd 1000 | cut -d: -f1)"
if [ -n "${other}" ] && [ "${other}" != jovyan ]; then
    userdel --remove "${other}" 2>/dev/null || userdel "${other}"
fi
id jovyan >/dev/null 2>&1 || useradd --no-log-init --uid 1000 --gid 100 --create-home \
    --home-dir /home/jovyan --shell /bin/bash jovyan
chown 1000:100 /home/jovyan
chmod 0755 /home/jovyan
