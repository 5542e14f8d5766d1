"""What the hub process does once its config is read: check the reclaim settings, create the
hub's runtime from the config, attach the reclaimer, and prepare the GPU source (pool and
engine observer, or the swarm's nodes), so /hub/metrics and the dashboard show the GPUs
before the first spawn."""

from __future__ import annotations

import asyncio
import logging
import sys

from traitlets import TraitError
from traitlets.config import Config

from spawner.core.errors import ConfigError
from spawner.hub.accounting import GPUAccounting, accounting_for
from spawner.hub.config import configured_spawner_class, stand_in_user
from spawner.hub.reclaim import GPUReclaimer, reclaimer_for
from spawner.runtime.runtime import RuntimeSettings, create_runtime

log = logging.getLogger("gpu-workspaces")


def runtime_settings(config: Config) -> RuntimeSettings:
    """The shared parts' settings, as the hub's spawner class reads them from ``config``."""
    probe = configured_spawner_class(config)(config=config, user=stand_in_user("runtime"))
    return RuntimeSettings(
        docker_threads=probe.docker_threads, start_concurrency=probe.start_concurrency
    )


def start_with_hub(config: Config) -> None:
    """In the hub process (called from jupyterhub_config.py): check the reclaim settings,
    then, once the config files are read, make the runtime and prepare the GPU source.
    Anywhere else (e.g. ``python -m spawner doctor`` loading the same config) it only checks
    the settings."""
    try:
        GPUReclaimer(config=config)
        GPUAccounting(None, config)
    except TraitError as e:
        raise ConfigError(str(e)) from None
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    if "jupyterhub.app" not in sys.modules:
        return
    # Runs once the config files are read: settings made after start_with_hub() count too.
    loop.call_soon(lambda: create_runtime(runtime_settings(config)).spawn(_prepare(config)))


async def _prepare(config: Config) -> None:
    reclaimer_for(config)  # attached to the runtime; its loop starts with the first server
    try:
        probe = configured_spawner_class(config)(config=config, user=stand_in_user("gpu-pool"))
        source = await probe.prepare_gpu_source()
        if source is not None:
            await source.refresh()
    except Exception as e:
        log.warning("GPU source not prepared at start-up (%s); it is made at the first spawn", e)
    accounting = accounting_for(config)  # GPU-hours records from the engine's view
    if accounting is not None:
        accounting.start()


__all__ = ["runtime_settings", "start_with_hub"]
