"""The one NVML adapter of the package: discover the GPUs, sample their utilisation.

``pynvml`` (nvidia-ml-py) is imported on first use, so a hub with a static inventory never
needs it. Discovery raises :class:`~spawner.core.inventory.InventoryError` with a sentence;
sampling never raises (a GPU NVML cannot read gives an empty sample).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from types import ModuleType

from spawner.core.inventory import GPU, Inventory, InventoryError
from spawner.core.sizes import MiB

# -- NVML discovery ------------------------------------------------------------------------


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml_error(reason: str) -> InventoryError:
    return InventoryError(
        f"NVML: {reason} — is the NVIDIA driver installed and is the hub started with GPU "
        "access (docker run --gpus all, or a compose service with a GPU reservation)? "
        "If the hub cannot see the GPUs, set a static gpu_inventory instead"
    )


def _mig_name(nvml: ModuleType, handle: object, parent_name: str) -> str:
    name = _text(nvml.nvmlDeviceGetName(handle))
    if "MIG" in name:  # drivers name MIG devices "NVIDIA A100-SXM4-80GB MIG 1g.10gb"
        return name
    try:
        attrs = nvml.nvmlDeviceGetAttributes(handle)
        # NVIDIA's profile names round the memory up: 40192 MiB is "3g.40gb"
        profile = f" {attrs.gpuInstanceSliceCount}g.{math.ceil(attrs.memorySizeMB / 1024)}gb"
    except nvml.NVMLError:
        profile = ""
    return f"{parent_name} MIG{profile}"


def _mig_devices(nvml: ModuleType, handle: object, parent: GPU) -> list[GPU]:
    devices: list[GPU] = []
    not_found = getattr(nvml, "NVML_ERROR_NOT_FOUND", 6)
    # MIG indexes count the devices found, as go-nvlib (nvidia-ctk's CDI names) numbers them
    for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except nvml.NVMLError as e:
            if getattr(e, "value", None) == not_found:
                continue  # an empty slot
            raise
        uuid = _text(nvml.nvmlDeviceGetUUID(mig))
        devices.append(
            GPU(
                id=uuid,
                index=parent.index,
                name=_mig_name(nvml, mig, parent.name),
                memory_mib=int(nvml.nvmlDeviceGetMemoryInfo(mig).total) // MiB,
                uuid=uuid,
                parent=parent.id,
                mig_index=len(devices),
            )
        )
    return devices


def _mig_enabled(nvml: ModuleType, handle: object) -> bool:
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except nvml.NVMLError:  # not a MIG-capable GPU, or a driver without MIG
        return False
    return bool(current == getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1))


def discover_nvml() -> Inventory:
    """Ask the NVIDIA driver (NVML) for every GPU this process can see.

    Each GPU is listed by UUID with its index, name and memory; a GPU in MIG mode is replaced
    by its MIG devices (id = MIG UUID, ``parent`` = the GPU's UUID). A host without GPUs gives
    an empty inventory. Any NVML failure raises :class:`InventoryError`.
    """
    try:
        nvml = importlib.import_module("pynvml")  # imported late: a static inventory needs none
    except ImportError:
        raise _nvml_error("the nvidia-ml-py package (module pynvml) is not installed") from None
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as e:
        raise _nvml_error(str(e)) from None
    try:
        gpus: list[GPU] = []
        for position in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(position)
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            gpu = GPU(
                id=uuid,
                index=int(nvml.nvmlDeviceGetIndex(handle)),
                name=_text(nvml.nvmlDeviceGetName(handle)),
                memory_mib=int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // MiB,
                uuid=uuid,
            )
            if _mig_enabled(nvml, handle):
                gpus.extend(_mig_devices(nvml, handle, gpu))
            else:
                gpus.append(gpu)
        return Inventory(gpus)
    except nvml.NVMLError as e:
        raise _nvml_error(str(e)) from None
    finally:
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()


# -- GPU utilisation through NVML -----------------------------------------------------------


@dataclass(frozen=True)
class GPUSample:
    """One GPU as NVML sees it right now; None where NVML cannot tell."""

    utilization: int | None = None
    memory_used_mib: int | None = None


def _load_nvml() -> ModuleType | None:
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


def sample_gpus(ids: Collection[str], nvml: ModuleType | None = None) -> dict[str, GPUSample]:
    """Utilisation and memory in use of GPUs named by UUID or index (MIG devices: unknown).

    Never raises: a host without NVML, or a GPU NVML does not know, gives empty samples.
    """
    samples = {gpu_id: GPUSample() for gpu_id in ids}
    nvml = nvml if nvml is not None else _load_nvml()
    if nvml is None or not samples:
        return samples
    try:
        nvml.nvmlInit()
    except Exception:
        return samples
    try:
        for gpu_id in samples:
            try:
                if gpu_id.isdigit():
                    handle = nvml.nvmlDeviceGetHandleByIndex(int(gpu_id))
                elif gpu_id.startswith("GPU-"):
                    handle = nvml.nvmlDeviceGetHandleByUUID(gpu_id)
                else:
                    continue  # MIG devices have no utilisation counter of their own
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                samples[gpu_id] = GPUSample(int(rates.gpu), int(memory.used) // (1024 * 1024))
            except Exception:
                continue
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
    return samples


class GPUSampler:
    """NVML samples, cached for ``ttl`` seconds (the dashboard refreshes every few seconds)."""

    def __init__(self, ttl: float = 2.0, sample: Callable[..., dict[str, GPUSample]] = sample_gpus):
        self.ttl = ttl
        self._sample = sample
        self._cache: dict[str, tuple[float, GPUSample]] = {}

    async def sample(self, ids: Collection[str]) -> dict[str, GPUSample]:
        now = time.monotonic()
        stale = [i for i in ids if i not in self._cache or now - self._cache[i][0] > self.ttl]
        if stale:
            loop = asyncio.get_running_loop()
            fresh = await loop.run_in_executor(None, self._sample, stale)
            for gpu_id, sample in fresh.items():
                self._cache[gpu_id] = (now, sample)
        return {i: self._cache[i][1] for i in ids if i in self._cache}
