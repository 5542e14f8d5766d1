"""GPU workspaces for JupyterHub: a DockerSpawner that gives each user their own GPUs."""

from spawner.backends.docker import GPUDockerSpawner

__version__ = "0.1.0"
__all__ = ["GPUDockerSpawner", "__version__"]
