"""gpu-workspaces' jupyter-server extension: the GPU session status for @gpu-workspaces/lab.

Shipped as files in the notebook images (not as a distribution), enabled by
jupyter_server_config.d/gpuws-lab.json.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """The extension point jupyter_server discovers (this module)."""
    return [{"module": "gpuws_lab"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Add the gpuws/* handlers under the server's base_url."""
    from .handlers import setup_handlers

    setup_handlers(serverapp.web_app)
    serverapp.log.info("gpuws_lab: GPU session status at %sgpuws/status", serverapp.base_url)


# jupyter_server < 2 looked for this name.
load_jupyter_server_extension = _load_jupyter_server_extension
