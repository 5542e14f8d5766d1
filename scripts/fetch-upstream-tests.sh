#!/usr/bin/env bash
# Fetch DockerSpawner 14.0.0's source distribution from the package index (it holds the
# project's own tests), for tests/test_dockerspawner_suite.py. Kept in .cache/upstream/; an
# existing file with the right checksum is reused, so this runs once per machine.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.cache/upstream
file="$dir/dockerspawner-14.0.0.tar.gz"
sha256=5641d4763ecc78c1b1c3c7621bfe88c055596893e43be7f66ee0dccac06c1d2a
python="${PYTHON:-.venv/bin/python}"
if [[ -f "$file" ]] && sha256sum "$file" | grep -q "^$sha256 "; then
    exit 0
fi
mkdir -p "$dir"
rm -f "$file"
"$python" -m pip download -q --no-deps --no-binary :all: -d "$dir" "dockerspawner==14.0.0"
if ! sha256sum "$file" | grep -q "^$sha256 "; then
    echo "fetch-upstream-tests: $file does not have the expected sha256 $sha256" >&2
    rm -f "$file"
    exit 1
fi
