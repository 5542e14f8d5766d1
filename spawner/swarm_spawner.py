"""The old import path of the Swarm spawner (``spawner.swarm_spawner.GPUSwarmSpawner``,
``use_swarm``), kept for existing hub configs; the code lives in :mod:`spawner.backends.swarm`."""

from spawner.backends.swarm import GPUSwarmSpawner
from spawner.hub.config import use_swarm

__all__ = ["GPUSwarmSpawner", "use_swarm"]
