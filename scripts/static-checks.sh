#!/usr/bin/env bash
# The static checks `make test` runs before the tests (also `make lint`): ruff's lint and
# format check on all Python, mypy --strict on the spawner package (pyproject.toml), and
# ShellCheck on every shell script. Each one that fails is named; any failure fails the run.
# Expects ruff and mypy on PATH (scripts/run-tests.sh puts .venv/bin there).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1

failed=()
check() { # name command...
    local name="$1" t0=$SECONDS
    shift
    if "$@"; then
        echo "static-checks: $name passed ($((SECONDS - t0)) s)"
    else
        echo "static-checks: $name FAILED" >&2
        failed+=("$name")
    fi
}

mapfile -t shell_scripts < <(find scripts images -name '*.sh' -type f | sort)
check "ruff check" ruff check --quiet .
check "ruff format --check" ruff format --check --quiet .
check "mypy --strict spawner" mypy --no-error-summary
check "shellcheck" shellcheck -x "${shell_scripts[@]}" .ci/run

if ((${#failed[@]})); then
    echo "static-checks: failed: ${failed[*]}" >&2
    exit 1
fi
