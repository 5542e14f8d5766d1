"""GPU workspaces for JupyterHub: a DockerSpawner that gives each user their own GPUs.

The map, bottom up; imports only point down (tests/test_layers.py reads them):

- ``core/`` is pure: plain values in, plain values out, no Docker, JupyterHub or NVML. Sizes,
  device requests, names, the hardening allow-list, profiles, the inventory, the allocator and
  the pool, the spawn form, the resolved spawn ``plan`` and the ``builders`` that turn it into
  Docker's create arguments or a Swarm service spec, the idle decision, what Swarm reports.
- ``runtime/`` is the hub process's shared state, owned by one ``HubRuntime`` (executor, start
  slots, pools, the engine observer fed by Docker's events, the NVML sampler, the running
  servers, the metrics collector), made once from the hub's config and reset in one place.
- ``backends/`` are the spawners: ``base`` writes the lifecycle once (start, poll, stop, the
  error table); ``docker`` (one host) and ``swarm`` supply only their hooks.
- ``hub/`` is what runs beside them in the hub: config helpers, start-up, idle reclaim through
  the REST API, the GPU dashboard, the doctor, the authenticator and the network guard.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["GPUDockerSpawner", "__version__"]


def __getattr__(name: str) -> Any:
    # Imported on first use (the gpu-docker entry point names spawner:GPUDockerSpawner), so
    # the pure core imports without Docker or JupyterHub.
    if name == "GPUDockerSpawner":
        from spawner.backends.docker import GPUDockerSpawner

        return GPUDockerSpawner
    raise AttributeError(f"module 'spawner' has no attribute {name!r}")
