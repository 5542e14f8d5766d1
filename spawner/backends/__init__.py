"""The spawners: one lifecycle (``base``) and the hooks of each backend (``docker``, ``swarm``)."""
