"""Benchmarks: spawn speed and scale against stock DockerSpawner and the raw engine.

Run with ``python -m bench`` (see ``bench/__main__.py``); results go to bench/results/.
"""

import sys
from pathlib import Path

# The hubs are started with the test harness (tests/harness.py), from the project's config.
_TESTS = str(Path(__file__).resolve().parents[1] / "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
