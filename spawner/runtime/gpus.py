"""The one inventory source: a static list from the config, else what NVML discovers."""

from __future__ import annotations

from spawner.core.inventory import Inventory, parse_static_inventory
from spawner.runtime.nvml import discover_nvml


def uses_nvml(value: object) -> bool:
    """Whether a ``gpu_inventory`` setting means "discover the GPUs through NVML" (empty)."""
    return value in ([], "", None)


def resolve_inventory(value: object, *, option: str) -> Inventory:
    """The GPUs a ``gpu_inventory`` setting names, or NVML's (raises InventoryError)."""
    if uses_nvml(value):
        return discover_nvml()
    return parse_static_inventory(value, option=option)


__all__ = ["resolve_inventory", "uses_nvml"]
