"""The one error type a person sees when their workspace cannot start, and the one table
that turns Docker's failures into its sentences, for both backends and the hub's pages.

JupyterHub shows ``jupyterhub_message`` verbatim on the spawn page, the progress page and in
REST API answers, and an error below 500 becomes a clean 4xx instead of a traceback.
"""

from __future__ import annotations

import docker
import requests
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


def engine_unreachable(error: BaseException) -> bool:
    """Whether ``error`` means the Docker engine did not answer (down, restarting, hung)."""
    if isinstance(error, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return True
    return isinstance(error, docker.errors.DockerException) and not isinstance(
        error, docker.errors.APIError
    )


def docker_trouble(
    error: BaseException, *, cannot: str, asked: str = "", engine: str = "Docker engine"
) -> WorkspaceError | None:
    """The 503 a page or a spawn answers when the engine (``engine``: "Docker engine", "Swarm
    manager") does not answer, or answers with an API error: ``cannot`` says what cannot be
    done then, ``asked`` what the engine was asked for. None for any other error, which is
    raised as it is (a bug still shows as one)."""
    if engine_unreachable(error):
        return WorkspaceError(
            f"The {engine} of this hub is not answering, so {cannot} right now. Running "
            "servers are kept; try again in a minute or tell an admin.",
            reason="docker-unreachable",
            status_code=503,
        )
    if isinstance(error, docker.errors.APIError):
        detail = str(error.explanation or error)[:200]
        return WorkspaceError(
            f"The {engine} of this hub answered{' ' + asked if asked else ''} with an "
            f"error ({detail}), so {cannot} right now; try again in a minute or tell an admin.",
            reason="docker-error",
            status_code=503,
        )
    return None


def start_failure(error: BaseException, *, engine: str) -> WorkspaceError | None:
    """What a user hears when their start failed in the engine: one table for both backends.
    None: raise the error as it is (JupyterHub shows its own message)."""
    if isinstance(error, WorkspaceError):
        return error
    if engine_unreachable(error):
        return WorkspaceError(
            f"The {engine} of this hub is not answering, so no server can start right now. "
            "Running servers are kept; try again in a minute or tell an admin.",
            reason="docker-unreachable",
            status_code=503,
        )
    if isinstance(error, docker.errors.APIError) and "error setting rlimit" in str(error):
        return WorkspaceError(
            "Docker refused this hub's process or open-file limit (nproc_limit / nofile_limit "
            "is above dockerd's own limit); tell an admin.",
            reason="config",
            status_code=500,
        )
    if isinstance(error, docker.errors.APIError) and engine == "Swarm manager":
        return WorkspaceError(
            f"Swarm refused to start the server: {error.explanation}. Tell an admin.",
            reason="swarm",
            status_code=500,
        )
    return None


__all__ = ["WorkspaceError", "docker_trouble", "engine_unreachable", "start_failure"]
