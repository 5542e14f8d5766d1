"""A pytest plugin that runs DockerSpawner 14.0.0's own tests with our class in its place.

Loaded with ``-p gpuws_substitute`` (tests/test_dockerspawner_suite.py), before upstream's
test modules import ``dockerspawner``, it:

- puts :class:`spawner.backends.docker.GPUDockerSpawner` where upstream looks the class up
  (``GPUWS_SUBSTITUTE=0``: leaves the stock class, for the baseline run);
- provides the fixtures upstream's tests ask for (the PyPI sdist ships the tests without their
  conftest.py): JupyterHub's own test hub (``app``, ``user``, ``io_loop``) configured as
  upstream describes — the prefix ``dockerspawner-test``, named servers, our class as the
  spawner — and a ``username`` counter;
- gives back, for both runs alike, JupyterHub 5's implicit creation of a named server by
  ``user.spawners[name]``, which upstream's tests (written for JupyterHub 5) assume and
  JupyterHub 6 removed ("orm_spawner not found");
- writes the classes the tests' spawners actually were to ``$GPUWS_SUBSTITUTE_PROOF``, so a
  run against the stock class cannot pass for ours.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from typing import Any
from unittest import mock

import docker
import dockerspawner
import pytest
import pytest_asyncio
from jupyterhub.tests.conftest import app as jupyterhub_app  # noqa: F401 - a fixture
from jupyterhub.tests.conftest import (
    io_loop,  # noqa: F401 - a fixture
    ssl_tmpdir,  # noqa: F401 - a fixture
    user,  # noqa: F401 - a fixture
)
from jupyterhub.tests.mocking import MockHub
from jupyterhub.user import _SpawnerDict

from spawner.backends.docker import GPUDockerSpawner

PREFIX = "dockerspawner-test"
#: GPUWS_SUBSTITUTE=0 runs the same tests on stock DockerSpawner: the baseline to compare with.
SPAWNER_CLASS: Any = (
    dockerspawner.DockerSpawner if os.environ.get("GPUWS_SUBSTITUTE") == "0" else GPUDockerSpawner
)
dockerspawner.DockerSpawner = SPAWNER_CLASS
# The containers reach the test hub on the engine's bridge (HUB_CONNECT_IP).
MockHub.hub_ip = "0.0.0.0"
MockHub.hub_connect_ip = os.environ.get("HUB_CONNECT_IP", "172.17.0.1")

_seen: set[str] = set()
_original_init = SPAWNER_CLASS.__init__
_names = itertools.count(1)


def _recording_init(self: Any, *args: Any, **kwargs: Any) -> None:
    _seen.add(f"{type(self).__module__}.{type(self).__qualname__}")
    _original_init(self, *args, **kwargs)


SPAWNER_CLASS.__init__ = _recording_init
_original_getitem = _SpawnerDict.__getitem__


def _getitem_creating(self: Any, key: str) -> Any:
    owner = getattr(self.spawner_factory, "__self__", None)
    if key and key not in self and owner is not None and not owner.orm_spawners.get(key):
        owner._new_orm_spawner(key, key)  # what JupyterHub 5 did here
    return _original_getitem(self, key)


_SpawnerDict.__getitem__ = _getitem_creating


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # upstream's async tests share one event loop per module, as its pyproject says
    marker = pytest.mark.asyncio(loop_scope="module")
    for item in items:
        if pytest_asyncio.is_async_test(item):
            existing = item.get_closest_marker("asyncio")
            if not existing or not existing.kwargs:
                item.add_marker(marker, append=False)


@pytest.fixture
def app(jupyterhub_app: Any) -> Any:  # noqa: F811 - wraps JupyterHub's fixture
    jupyterhub_app.config.DockerSpawner.prefix = PREFIX
    return jupyterhub_app


@pytest.fixture
def named_servers(app: Any) -> Iterator[None]:
    settings = {"allow_named_servers": True, "named_server_limit_per_user": 2}
    with mock.patch.dict(app.tornado_settings, settings):
        yield


@pytest.fixture
def dockerspawner_configured_app(app: Any, named_servers: None) -> Iterator[Any]:
    with mock.patch.dict(app.tornado_settings, {"spawner_class": SPAWNER_CLASS}):
        yield app


@pytest.fixture
def username() -> str:
    return f"test-user-{next(_names)}"


@pytest.fixture(autouse=True, scope="session")
def _clean_up_and_prove() -> Iterator[None]:
    yield
    client = docker.from_env()
    for container in client.containers.list(all=True):
        if container.name.startswith(PREFIX):
            container.remove(force=True)
    path = os.environ.get("GPUWS_SUBSTITUTE_PROOF")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"spawner_classes": sorted(_seen)}, f)
