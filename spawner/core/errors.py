"""The one error type a person sees when their workspace cannot start.

JupyterHub shows ``jupyterhub_message`` verbatim on the spawn page, the progress page and in
REST API answers, and an error below 500 becomes a clean 4xx instead of a traceback.
"""

from __future__ import annotations

from tornado import web

try:  # JupyterHub >= 6: its own spawn-failure type, which also feeds its spawn metrics
    from jupyterhub.spawner import SpawnException as _Base
except ImportError:  # pragma: no cover - JupyterHub 5
    _Base = web.HTTPError


class WorkspaceError(_Base):  # type: ignore[misc]  # _Base is Any: jupyterhub ships no types
    """A spawn refused for a reason the user can act on (bad option, quota, no GPU free)."""

    def __init__(self, message: str, *, reason: str = "workspace", status_code: int = 400):
        if _Base is web.HTTPError:  # pragma: no cover - JupyterHub 5
            web.HTTPError.__init__(self, status_code, "%s", message, reason=reason)
            self.message = message
        else:
            super().__init__(message, reason=reason, status_code=status_code)
        self.jupyterhub_message = message

    def get_message(self) -> str:
        return self.message

    def __str__(self) -> str:
        return self.message


__all__ = ["WorkspaceError"]
