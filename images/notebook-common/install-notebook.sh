#!/bin/sh
# Shared by images/notebook-cpu and images/notebook-cuda (run as root at build time), in two
# steps, so the final image holds the venv but not the wheels it was installed from:
#
#   install-notebook.sh system   system-step.sh (python3 + venv, tini, the PID 1 helper) and
#                                the jovyan user (uid 1000, gid 100) that owns /home/jovyan.
#   install-notebook.sh venv     /opt/venv with JupyterHub + JupyterLab (requirements.txt next
#                                to this script), the managed-site JupyterLab settings, the
#                                lazy imports and the stack list gpuws-selftest checks.
#
# The venv step installs from /tmp/wheelhouse alone (pip --no-index) when it holds wheels
# (scripts/wheelhouse.sh fills it on the host), else from the index (PIP_INDEX_URL and
# PIP_EXTRA_INDEX_URL: an optional mirror; empty means pip's default index).
# Environment: JUPYTERHUB_VERSION and JUPYTERLAB_VERSION (required), BASE_IMAGE (messages).
set -eu
here="$(dirname "$0")"
step="${1:?usage: install-notebook.sh system|venv}"

system_step() {
    sh "${here}/system-step.sh"

    getent group 100 >/dev/null || groupadd --gid 100 users
    other="$(getent passwd 1000 | cut -d: -f1)"
    if [ -n "${other}" ] && [ "${other}" != jovyan ]; then
        userdel --remove "${other}" 2>/dev/null || userdel "${other}"
    fi
    id jovyan >/dev/null 2>&1 || useradd --no-log-init --uid 1000 --gid 100 --create-home \
        --home-dir /home/jovyan --shell /bin/bash jovyan
    chown 1000:100 /home/jovyan
    chmod 0755 /home/jovyan
}

venv_step() {
    : "${JUPYTERHUB_VERSION:?pass --build-arg JUPYTERHUB_VERSION (see images/versions.env)}"
    : "${JUPYTERLAB_VERSION:?pass --build-arg JUPYTERLAB_VERSION (see images/versions.env)}"
    python3 -m venv /opt/venv
    sh "${here}/pip-install.sh" -r "${here}/requirements.txt"
    sh "${here}/install-lazy-imports.sh"
    # Managed-site JupyterLab settings (docs/images.md): no news prompt, no update checks.
    install -D -m 0644 "${here}/overrides.json" /opt/venv/share/jupyter/lab/settings/overrides.json
    install -D -m 0644 "${here}/managed-server.json" \
        /opt/venv/etc/jupyter/jupyter_server_config.d/gpuws-managed.json
    install -D -m 0755 "${here}/gpuws-selftest" /opt/venv/bin/gpuws-selftest
    install -D -m 0644 "${here}/stack.txt" /opt/venv/share/gpuws/stack.d/00-notebook.txt
    rm -rf /root/.cache
}

case "${step}" in
    system) system_step ;;
    venv) venv_step ;;
    *) echo "install-notebook.sh: unknown step '${step}' (system or venv)" >&2; exit 2 ;;
esac
