"""The hub process's shared state and its links to the engine and the GPUs (one owner)."""
