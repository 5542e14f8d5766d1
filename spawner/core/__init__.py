"""The pure core: plain values in, plain values out; no Docker, JupyterHub or NVML import."""
