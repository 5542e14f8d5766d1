"""The old import path of the single-host spawner (``spawner.docker_spawner.GPUDockerSpawner``),
kept for existing hub configs; the code lives in :mod:`spawner.backends.docker`."""

from spawner.backends.docker import GPUDockerSpawner

__all__ = ["GPUDockerSpawner"]
