"""The error that ends a hub's start with a message for the admin (no traceback)."""

from __future__ import annotations


class ConfigError(SystemExit):
    """Ends the hub's start with a message for the admin that names the setting at fault."""

    def __init__(self, message: str) -> None:
        super().__init__(f"\n[gpu-workspaces] configuration error:\n{message}\n")


__all__ = ["ConfigError"]
