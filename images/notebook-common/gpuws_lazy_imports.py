"""Start Jupyter servers without importing what they never use.

Two imports make every notebook server slow to start and heavy at rest:

- ``jsonschema`` imports ``rfc3987_syntax``, which compiles ~35 Lark parsers at import time
  (1.5 s of CPU on a small server, in every ``jupyter`` process) for the ``iri`` format that
  no Jupyter schema uses. Its ``is_valid_syntax`` becomes a function that imports the real
  module on its first call.
- ``jupyterhub-singleuser`` imports modules only the hub uses: ``jupyterhub.log`` pulls in the
  hub's request handlers (its ORM, SQLAlchemy, Alembic + Mako, cryptography), and
  ``jupyterhub.scopes`` imports the ORM for group lookups a notebook server never makes:
  ~35 MiB of every idle server. Those modules become empty stand-ins that load the real
  module the first time anything reads one of their attributes, and
  ``jupyterhub.handlers.pages.HealthCheckHandler`` (used by ``log_request`` only for an
  ``isinstance`` check; no hub handler runs in a notebook server) is a placeholder class.

Nothing changes for code that does use these modules: it gets the real ones, only later (and
a submodule of a deferred package loads the real package first, as without this module). A
``.pth`` file calls :func:`install` in processes started as ``jupyter*`` (kernels and other
Python processes never import this module); ``GPUWS_LAZY_IMPORTS=0`` turns it off.

Shared by both notebook images (images/notebook-common, installed by install-lazy-imports.sh).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

# Attributes the import system probes on a module: never a reason to load it.
_IMPORT_ATTRS = frozenset(
    {"__path__", "__file__", "__cached__", "__loader__", "__package__", "__spec__", "__name__"}
)
_lock = threading.RLock()


class _Deferred(types.ModuleType):
    """A module whose real code runs on first use of one of its attributes."""

    def __getattr__(self, attr: str) -> Any:
        if attr in _IMPORT_ATTRS or attr.startswith("_gpuws_"):
            raise AttributeError(attr)
        submodule = sys.modules.get(f"{self.__name__}.{attr}")
        if submodule is not None:
            return submodule
        path = self.__dict__.get("__path__")
        if (
            path is not None
            and "_gpuws_real" not in self.__dict__
            and importlib.machinery.PathFinder.find_spec(f"{self.__name__}.{attr}", path)
        ):
            # `from package import submodule`: the import system imports it (see _Finder).
            raise AttributeError(attr)
        return getattr(_load(self), attr)


def _load(stub: _Deferred) -> types.ModuleType:
    with _lock:
        real = stub.__dict__.get("_gpuws_real")
        if real is None:
            spec = stub.__dict__["_gpuws_spec"]
            real = importlib.util.module_from_spec(spec)
            stub.__dict__["_gpuws_real"] = real
            sys.modules[stub.__name__] = real
            try:
                spec.loader.exec_module(real)
            except BaseException:
                del stub.__dict__["_gpuws_real"]
                sys.modules[stub.__name__] = stub
                raise
        return real  # type: ignore[no-any-return]


def _on_first_call(module: str, name: str) -> Callable[..., Any]:
    """A function that imports ``module`` when first called and calls its ``name``."""

    def call(*args: Any, **kwargs: Any) -> Any:
        loaded = sys.modules[module]
        if isinstance(loaded, _Deferred):
            loaded = _load(loaded)
        return getattr(loaded, name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


class _HubOnlyHandler:
    """Placeholder for a hub request handler; no instance exists in a notebook server."""


# module -> attributes its stand-in provides without loading it
EVERY_JUPYTER: dict[str, dict[str, Any]] = {
    "rfc3987_syntax": {"is_valid_syntax": _on_first_call("rfc3987_syntax", "is_valid_syntax")},
}
SINGLEUSER: dict[str, dict[str, Any]] = {
    "alembic": {},
    "sqlalchemy": {},
    "jupyterhub.crypto": {},
    "jupyterhub.handlers": {},
    "jupyterhub.orm": {},
    "jupyterhub.roles": {},
    "jupyterhub.handlers.pages": {"HealthCheckHandler": _HubOnlyHandler},
}
# Submodules of a deferred package that may load without the package's __init__: they import
# nothing of it but each other (jupyterhub.utils imports sqlalchemy.exc at start-up). Any other
# submodule of a deferred package loads the real package first, as Python always does: a
# package's __init__ may fix the order in which its submodules import one another.
LOADS_ALONE = frozenset({"sqlalchemy.exc", "sqlalchemy.util"})


class _Loader(importlib.abc.Loader):
    def __init__(self, real_spec: importlib.machinery.ModuleSpec, provided: dict[str, Any]):
        self.real_spec = real_spec
        self.provided = provided

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _Deferred(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__dict__["_gpuws_spec"] = self.real_spec
        if self.real_spec.submodule_search_locations is not None:
            module.__path__ = list(self.real_spec.submodule_search_locations)
        module.__file__ = self.real_spec.origin
        module.__dict__.update(self.provided)


class _AlreadyLoaded(importlib.abc.Loader):
    """Gives the import system a module that loading its real package has just imported."""

    def __init__(self, module: types.ModuleType, real_spec: Any) -> None:
        self.module = module
        self.real_spec = real_spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return self.module

    def exec_module(self, module: types.ModuleType) -> None:
        module.__spec__ = self.real_spec  # the import system set it to this loader's spec


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, deferred: dict[str, dict[str, Any]]) -> None:
        self.deferred = deferred
        self._looking: set[str] = set()

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        parent = sys.modules.get(name.rpartition(".")[0])
        if isinstance(parent, _Deferred) and name not in self.deferred:
            return self._in_real_package(name, parent)
        if name in self._looking or name not in self.deferred:
            return None
        self._looking.add(name)
        try:
            real = importlib.util.find_spec(name)
        finally:
            self._looking.discard(name)
        if real is None or real.loader is None:
            return None
        is_package = real.submodule_search_locations is not None
        spec = importlib.machinery.ModuleSpec(
            name, _Loader(real, self.deferred[name]), origin=real.origin, is_package=is_package
        )
        if is_package:
            spec.submodule_search_locations = list(real.submodule_search_locations or [])
        return spec

    @staticmethod
    def _in_real_package(name: str, package: _Deferred) -> Any:
        if any(name == alone or name.startswith(alone + ".") for alone in LOADS_ALONE):
            return None
        _load(package)
        module = sys.modules.get(name)
        if module is None:
            return None  # the path finders import it now, inside the real package
        # The package's __init__ imported it. Returned as is: importing it again would make a
        # second copy. (A module whose __spec__ is None makes the import system use this spec.)
        real_spec, module.__spec__ = module.__spec__, None
        return importlib.machinery.ModuleSpec(name, _AlreadyLoaded(module, real_spec))


def install(program: str | None = None) -> None:
    """Defer the imports ``program`` (default: this process's ``argv[0]``) never needs."""
    if os.environ.get("GPUWS_LAZY_IMPORTS", "1") == "0":
        return
    if any(isinstance(finder, _Finder) for finder in sys.meta_path):
        return
    if program is None:
        program = os.path.basename(getattr(sys, "argv", [""])[0])
    deferred = dict(EVERY_JUPYTER)
    if program == "jupyterhub-singleuser":
        deferred.update(SINGLEUSER)
    sys.meta_path.insert(0, _Finder(deferred))
