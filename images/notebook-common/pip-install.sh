#!/bin/sh
# pip install into /opt/venv from /tmp/wheelhouse alone when it holds wheels (no network
# needed), else from the index (PIP_INDEX_URL / PIP_EXTRA_INDEX_URL, empty: pip's default).
# Arguments go to pip install (requirement files, constraints). Shared by every image.
set -eu
[ -n "${PIP_INDEX_URL:-}" ] || unset PIP_INDEX_URL
[ -n "${PIP_EXTRA_INDEX_URL:-}" ] || unset PIP_EXTRA_INDEX_URL
set -- --no-cache-dir --disable-pip-version-check --no-warn-script-location "$@"
if ls /tmp/wheelhouse/*.whl >/dev/null 2>&1; then
    echo "pip-install: from the wheelhouse only ($(find /tmp/wheelhouse -name '*.whl' | wc -l) wheels)"
    /opt/venv/bin/pip install --no-index --find-links /tmp/wheelhouse "$@"
else
    echo "pip-install: no wheelhouse; from the package index"
    /opt/venv/bin/pip install "$@"
fi
/opt/venv/bin/pip check
