#!/bin/sh
# Installs the data-science stack into the lean image's /opt/venv (run as root at build time)
# and copies every file the install added or changed into LAYER, which the image's second
# stage copies onto the lean image as one layer without the wheels.
#
# Usage: install-datascience.sh cpu|cuda LAYER
# The lean image's packages stay as they are: its own `pip freeze` constrains the install.
set -eu
here="$(dirname "$0")"
flavor="${1:?usage: install-datascience.sh cpu|cuda LAYER}"
layer="${2:?usage: install-datascience.sh cpu|cuda LAYER}"
case "${flavor}" in
    cpu) set -- -r "${here}/requirements.txt" ;;
    cuda) set -- -r "${here}/requirements.txt" -r "${here}/requirements-cuda.txt" ;;
    *) echo "install-datascience.sh: unknown flavour '${flavor}' (cpu or cuda)" >&2; exit 2 ;;
esac

# pip itself may differ between the lean image and the host that filled the wheelhouse.
/opt/venv/bin/pip freeze --all --exclude-editable | grep -v '^pip==' >/tmp/lean-constraints.txt
find /opt/venv | LC_ALL=C sort >/tmp/before.txt
touch /tmp/stamp
sh "${here}/pip-install.sh" -c /tmp/lean-constraints.txt "$@"
install -D -m 0644 "${here}/stack.txt" /opt/venv/share/gpuws/stack.d/10-datascience.txt
if [ "${flavor}" = cuda ]; then
    install -D -m 0644 "${here}/stack-cuda.txt" /opt/venv/share/gpuws/stack.d/20-gpu.txt
fi
# The same check the tests and the doctor run, so a broken stack fails the build.
/opt/venv/bin/gpuws-selftest

# New paths, and existing files written since the stamp (none expected: the constraints
# keep the lean packages; a changed file would still be carried). A removed path cannot be
# carried by a layer that is copied on top: that would leave the lean files behind.
find /opt/venv | LC_ALL=C sort >/tmp/after.txt
removed="$(LC_ALL=C comm -23 /tmp/before.txt /tmp/after.txt | head -n 5)"
if [ -n "${removed}" ]; then
    echo "ERROR: the data-science install removed files of the lean image, e.g.:" >&2
    echo "${removed}" >&2
    echo "pin the package in images/notebook-common/requirements.txt instead" >&2
    exit 1
fi
{
    LC_ALL=C comm -13 /tmp/before.txt /tmp/after.txt
    find /opt/venv -newer /tmp/stamp ! -type d
} | LC_ALL=C sort -u >/tmp/added.txt
mkdir -p "${layer}"
# tar keeps owners, modes and links; --no-recursion: exactly the listed paths.
sed 's|^/||' /tmp/added.txt | tar -C / --no-recursion -cf - -T - | tar -C "${layer}" -xf -
echo "install-datascience: $(wc -l </tmp/added.txt) paths, $(du -sm "${layer}" | cut -f1) MiB"
