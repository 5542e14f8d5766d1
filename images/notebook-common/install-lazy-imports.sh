#!/bin/sh
# Shared by the notebook images: installs gpuws_lazy_imports.py (next to this script) into the
# venv's site-packages with a .pth hook that calls it in `jupyter*` processes only (kernels and
# other Python processes never import it). GPUWS_LAZY_IMPORTS=0 at run time turns it off.
set -eu
here="$(dirname "$0")"
site="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cp "${here}/gpuws_lazy_imports.py" "${site}/"
echo 'import os, sys; os.path.basename(getattr(sys, "argv", [""])[0]).startswith("jupyter") and __import__("gpuws_lazy_imports").install()' \
    >"${site}/gpuws-lazy-imports.pth"
/opt/venv/bin/python -m compileall -q "${site}/gpuws_lazy_imports.py"
# Fails the build if the module no longer defers what it is meant to (new upstream versions).
/opt/venv/bin/python - <<'PY'
import sys

import gpuws_lazy_imports as lazy

lazy.install("jupyterhub-singleuser")
import jsonschema  # noqa: E402,F401
import jupyter_server.serverapp  # noqa: E402,F401
import jupyterhub.singleuser  # noqa: E402,F401

deferred = sorted(n for n, m in sys.modules.items() if isinstance(m, lazy._Deferred))
# Packages whose whole import is deferred, and the heavy parts of SQLAlchemy (its small
# submodules, such as sqlalchemy.exc, may load alone without the package's __init__).
whole = {"alembic", "mako", "rfc3987_syntax"}
parts = {"sqlalchemy", "sqlalchemy.orm", "sqlalchemy.engine", "jupyterhub.orm"}
loaded = sorted(
    n
    for n, m in sys.modules.items()
    if (n.split(".")[0] in whole or n in parts) and not isinstance(m, lazy._Deferred)
)
print("imports deferred:", deferred)
if loaded:
    sys.exit(f"gpuws_lazy_imports: {', '.join(loaded)} still imported at start-up")
PY
