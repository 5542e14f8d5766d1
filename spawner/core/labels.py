"""The labels every workspace container and Swarm service carries.

They identify a server on the engine (whose it is, which hub made it) and record what it holds
(its GPUs, its profile), so a restarted hub can read its servers back and two hubs on one engine
can tell theirs apart. Only names live here; :meth:`spawner.core.plan.SpawnPlan.labels` gives
the values.
"""

from __future__ import annotations

LABEL_PREFIX = "io.gpu-workspaces"
LABEL_GPUS = f"{LABEL_PREFIX}.gpus"
LABEL_USER = f"{LABEL_PREFIX}.user"
LABEL_SERVER = f"{LABEL_PREFIX}.server"
LABEL_PROFILE = f"{LABEL_PREFIX}.profile"
LABEL_PREFIX_NAME = f"{LABEL_PREFIX}.prefix"
LABEL_HUB_INSTANCE = f"{LABEL_PREFIX}.hub-instance"
#: The user's groups at spawn, a JSON list (on GPU servers: whose GPU-hours budgets count it).
LABEL_GROUPS = f"{LABEL_PREFIX}.groups"

__all__ = [
    "LABEL_GPUS",
    "LABEL_GROUPS",
    "LABEL_HUB_INSTANCE",
    "LABEL_PREFIX",
    "LABEL_PREFIX_NAME",
    "LABEL_PROFILE",
    "LABEL_SERVER",
    "LABEL_USER",
]
