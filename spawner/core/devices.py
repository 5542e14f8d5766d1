"""NVIDIA device requests: what we ask Docker for, and what a running container holds.

Docker hands GPUs to a container through a *device request* (``docker run --gpus``,
``HostConfig.DeviceRequests``). Docker's built-in ``nvidia`` driver turns a request into the
``NVIDIA_VISIBLE_DEVICES`` / ``NVIDIA_DRIVER_CAPABILITIES`` variables that the NVIDIA container
toolkit reads:

- ``DeviceIDs`` given: exactly those devices (indexes, ``GPU-<uuid>`` or ``MIG-…`` ids);
- else ``Count`` N > 0: the first N GPUs, ``"0"`` … ``"N-1"``;
- else ``Count`` -1: every GPU.

``Count`` together with ``DeviceIDs`` is refused by Docker. Containers may also get GPUs in
other ways: a CDI device request (Docker 25+, ``--device nvidia.com/gpu=0``), a device node
(``--device /dev/nvidia0``), or the older ``--runtime nvidia`` with ``NVIDIA_VISIBLE_DEVICES``
in their environment. :func:`claimed_gpus` reads them all, so GPUs held by containers started
by hand count as busy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: What a notebook needs: CUDA (compute) and ``nvidia-smi`` / NVML (utility).
DEFAULT_CAPABILITIES: tuple[str, ...] = ("compute", "utility")
#: The NVIDIA driver capabilities Docker's ``nvidia`` device driver knows.
VALID_CAPABILITIES: tuple[str, ...] = (
    "compute",
    "compat32",
    "graphics",
    "utility",
    "video",
    "display",
)
#: Capabilities that make Docker pick its ``nvidia`` driver when a request names no driver.
_NVIDIA_DRIVER_CAPS = frozenset({"gpu", "nvidia", *VALID_CAPABILITIES})

_HEX_ID = r"[0-9a-fA-F]+(?:-[0-9a-fA-F]+)*"
_DEVICE_ID_RE = re.compile(
    rf"(?:0|[1-9][0-9]{{0,3}})"  # a GPU index, as nvidia-smi numbers them
    rf"|GPU-{_HEX_ID}"  # a GPU UUID, as nvidia-smi -L prints it
    rf"|MIG-{_HEX_ID}"  # a MIG device UUID (driver R470 and later)
    rf"|MIG-GPU-{_HEX_ID}/[0-9]{{1,3}}/[0-9]{{1,3}}",  # legacy MIG-GPU-<uuid>/<gi>/<ci>
    re.ASCII,  # the prefixes are case-sensitive for the NVIDIA toolkit; hex digits are not
)
_MAX_ID_LENGTH = 128
#: CDI kinds that name NVIDIA GPUs and MIG devices (``nvidia-ctk cdi generate`` writes the first).
_NVIDIA_CDI_KINDS = frozenset({"nvidia.com/gpu", "nvidia.com/mig"})
#: ``nvidia-ctk cdi generate --device-name-strategy=type-index`` names: ``gpu0``, ``mig0:1``.
_TYPE_INDEX_RE = re.compile(r"(?:gpu|mig)((?:0|[1-9][0-9]*)(?::(?:0|[1-9][0-9]*))?)", re.ASCII)
#: A GPU's device node; ``/dev/nvidiactl``, ``/dev/nvidia-uvm``, ``/dev/nvidia-caps/…`` are not.
_DEVICE_NODE_RE = re.compile(r"/dev/nvidia(0|[1-9][0-9]*)", re.ASCII)
#: The runtime name ``nvidia-ctk runtime configure`` registers with Docker.
NVIDIA_RUNTIME = "nvidia"
#: Words of ``NVIDIA_VISIBLE_DEVICES`` (and of device ids) that name no device.
_NO_DEVICE = frozenset({"none", "void"})
_ECHO_LIMIT = 64


class DeviceRequestError(ValueError):
    """A GPU request or device id that Docker's nvidia driver cannot use."""


@dataclass(frozen=True)
class ClaimedGPUs:
    """The GPUs a container holds, as Docker will hand them over.

    ``ids`` are the strings the container was given (indexes, UUIDs, MIG UUIDs, ``"0:1"`` MIG
    ids), not yet mapped onto an inventory; ``all`` means every GPU of the host.
    """

    ids: frozenset[str] = frozenset()
    all: bool = False

    def __bool__(self) -> bool:
        return self.all or bool(self.ids)


NO_GPUS = ClaimedGPUs()
ALL_GPUS = ClaimedGPUs(all=True)


def _shown(value: object) -> str:
    text = str(value)
    if len(text) > _ECHO_LIMIT:
        text = text[:_ECHO_LIMIT] + "…"
    return "".join(c if c.isprintable() else "?" for c in text)


def validate_device_id(s: str, *, option: str = "device id") -> str:
    """Return ``s`` if it names one NVIDIA device, else raise :class:`DeviceRequestError`.

    Accepted: a GPU index (``"0"``, ``"1"``, … without leading zeros), a GPU UUID
    (``"GPU-8e5f…"``) and a MIG device, both as ``"MIG-<uuid>"`` and in the legacy
    ``"MIG-GPU-<uuid>/<gi>/<ci>"`` form. One id only: lists (commas), spaces and empty strings
    are refused, because Docker would pass them on and the container would fail to start.
    """
    if not isinstance(s, str):
        raise DeviceRequestError(f"{option}: a device id must be a string, not {type(s).__name__}")
    if len(s) <= _MAX_ID_LENGTH and _DEVICE_ID_RE.fullmatch(s):
        return s
    if not s.strip():
        problem = "is empty"
    elif "," in s:
        problem = "holds several ids; give each id as its own list item"
    elif any(c.isspace() for c in s):
        problem = "contains spaces"
    else:
        problem = "is not a device id"
    raise DeviceRequestError(
        f"{option}: '{_shown(s)}' {problem}; use a GPU index ('0', '1', …), "
        "a GPU UUID ('GPU-…', see nvidia-smi -L) or a MIG device ('MIG-…')"
    )


def parse_capabilities(value: str | Sequence[str], *, option: str) -> tuple[str, ...]:
    """Normalise NVIDIA driver capabilities: ``"compute,utility"`` → ``("compute", "utility")``.

    Names are lower-cased and de-duplicated in order; at least one is required.
    """
    items: Iterable[object] = value.split(",") if isinstance(value, str) else value
    valid = ", ".join(VALID_CAPABILITIES)
    caps: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise DeviceRequestError(
                f"{option}: a capability must be a string, not {type(item).__name__}; "
                f"choose from: {valid}"
            )
        name = item.strip().lower()
        if not name:
            continue
        if name not in VALID_CAPABILITIES:
            raise DeviceRequestError(
                f"{option}: unknown GPU capability '{_shown(item)}'; choose from: {valid}"
            )
        if name not in caps:
            caps.append(name)
    if not caps:
        raise DeviceRequestError(
            f"{option}: needs at least one GPU capability, e.g. 'compute,utility'; "
            f"choose from: {valid}"
        )
    return tuple(caps)


def build_device_request(
    *,
    count: int | None = None,
    device_ids: Sequence[str] | None = None,
    all_gpus: bool = False,
    capabilities: Sequence[str] = DEFAULT_CAPABILITIES,
    option: str = "gpus",
) -> dict[str, Any] | None:
    """The keyword arguments for ``docker.types.DeviceRequest``, or ``None`` for no GPU.

    Give one of ``count`` (that many GPUs, Docker picks the first ones), ``device_ids`` (exactly
    these, the way this spawner hands out GPUs) or ``all_gpus``. ``count=0``, no ids and not
    ``all_gpus`` means "no GPU" and returns ``None``: no device request at all, so no NVIDIA hook
    runs and the container sees no GPU even if its image sets ``NVIDIA_VISIBLE_DEVICES=all``.
    ``device_ids`` may also be one comma-separated string.
    """
    given = [
        name
        for name, present in (
            ("a GPU count", count is not None),
            ("device ids", device_ids is not None),
            ("all GPUs", all_gpus),
        )
        if present
    ]
    if len(given) > 1:
        raise DeviceRequestError(
            f"{option}: give only one of {', '.join(given)}; Docker refuses a device request "
            "that asks for GPUs in more than one way"
        )
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        raise DeviceRequestError(
            f"{option}: the GPU count must be a whole number ≥ 0, got '{_shown(count)}'"
        )
    caps = list(parse_capabilities(capabilities, option=f"{option} capabilities"))
    request: dict[str, Any] = {
        "driver": "nvidia",
        "count": 0,
        "device_ids": [],
        "capabilities": [caps],
    }
    if all_gpus:
        request["count"] = -1
        return request
    if device_ids is not None:
        if isinstance(device_ids, str):
            raw = [part.strip() for part in device_ids.split(",") if part.strip()]
        else:
            raw = list(device_ids)
        ids: list[str] = []
        for i, item in enumerate(raw):
            ident = validate_device_id(item, option=f"{option} device_ids[{i}]")
            if ident in ids:
                raise DeviceRequestError(f"{option}: device id '{_shown(ident)}' is listed twice")
            ids.append(ident)
        if not ids:
            return None
        request["device_ids"] = ids
        return request
    if count is None or count == 0:
        return None
    request["count"] = count
    return request


#: How a GPU server gets its GPUs from Docker (``GPUDockerSpawner.gpu_mechanism``).
GPU_MECHANISMS = ("device-requests", "nvidia-runtime", "cdi")


def cdi_device_name(gpu_id: str) -> str:
    """The CDI name of an inventory GPU, as ``nvidia-ctk cdi generate`` writes it."""
    return f"nvidia.com/gpu={gpu_id}"


def mechanism_host_config(mechanism: str, gpu_ids: Sequence[str]) -> dict[str, Any]:
    """Host-config keys (docker-py's snake_case) that hand ``gpu_ids`` over by ``mechanism``.

    ``device-requests`` adds nothing here (:func:`build_device_request` makes its request);
    ``nvidia-runtime`` selects the runtime, which reads ``NVIDIA_VISIBLE_DEVICES`` (the
    spawner always sets it to the ids); ``cdi`` asks Docker's CDI driver for the devices.
    """
    if mechanism not in GPU_MECHANISMS:
        raise ValueError(f"unknown GPU mechanism {mechanism!r}; use one of {GPU_MECHANISMS}")
    if not gpu_ids or mechanism == "device-requests":
        return {}
    if mechanism == "nvidia-runtime":
        return {"runtime": NVIDIA_RUNTIME}
    return {
        "device_requests": [{"driver": "cdi", "device_ids": [cdi_device_name(i) for i in gpu_ids]}]
    }


def _get(mapping: Mapping[str, Any], camel: str, snake: str) -> Any:
    """A field of a device request, as ``docker inspect`` (CamelCase) or docker-py writes it."""
    value = mapping.get(camel)
    return mapping.get(snake) if value is None else value


def _request_driver(request: Mapping[str, Any]) -> str | None:
    """``"nvidia"`` or ``"cdi"`` for a request that can hand out NVIDIA GPUs, else ``None``."""
    driver = str(_get(request, "Driver", "driver") or "").lower()
    if driver in ("nvidia", "cdi"):
        return driver
    cap_sets = _get(request, "Capabilities", "capabilities") or []
    for caps in cap_sets:
        names = {str(c).lower() for c in caps or ()}
        if "gpu" in names:
            return "nvidia"
        # With no driver named, Docker picks the first driver that offers every capability
        # of one set; only the nvidia driver offers these.
        if not driver and names and names <= _NVIDIA_DRIVER_CAPS:
            return "nvidia"
    return None


def _split_ids(values: Iterable[object]) -> frozenset[str]:
    ids: set[str] = set()
    for value in values:
        ids.update(part.strip() for part in str(value).split(",") if part.strip())
    return frozenset(ids)


def _cdi_device(name: str) -> str | None:
    """The device part of a CDI name ``vendor.com/class=device`` if it is an NVIDIA GPU."""
    kind, _, device = name.partition("=")
    if kind not in _NVIDIA_CDI_KINDS or not device:
        return None  # another vendor's device (or not a CDI name at all)
    match = _TYPE_INDEX_RE.fullmatch(device)
    return match.group(1) if match else device


def _device_names(values: Iterable[object], *, cdi_only: bool = False) -> set[str]:
    """The device ids in ``values``: comma lists split, NVIDIA CDI names cut to their device.

    ``cdi_only`` drops plain ids: Docker's CDI driver resolves qualified names only.
    """
    names: set[str] = set()
    for part in _split_ids(values):
        if "=" in part:
            device = _cdi_device(part)
            if device is not None:
                names.add(device)
        elif not cdi_only:
            names.add(part)
    return names


def _device_node_index(device: object) -> str | None:
    """The GPU a ``HostConfig.Devices`` entry maps in: ``/dev/nvidia3`` gives ``"3"``.

    The node's number is the driver's minor number, which is the nvidia-smi index on the usual
    hosts (both follow PCI order). The control, UVM and MIG capability nodes serve every GPU and
    hold none by themselves.
    """
    if isinstance(device, Mapping):
        path = device.get("PathOnHost")
    else:
        path = str(device).partition(":")[0]  # the "host:container:perms" string docker-py takes
    match = _DEVICE_NODE_RE.fullmatch(str(path or ""))
    return match.group(1) if match else None


def _env_map(env: Sequence[str] | None) -> dict[str, str]:
    values: dict[str, str] = {}
    for entry in env or ():
        name, sep, value = str(entry).partition("=")
        if sep:
            values[name] = value  # the last one wins, as in the container
    return values


@dataclass
class _Claim:
    """A claim being collected; ``"all"`` among the names means every GPU."""

    ids: set[str] = field(default_factory=set)
    all: bool = False

    def add(self, names: Iterable[str]) -> None:
        for name in names:
            if name == "all":
                self.all = True
            elif name not in _NO_DEVICE:
                self.ids.add(name)

    def result(self) -> ClaimedGPUs:
        # every GPU covers the named ones: one spelling per claim, so equal claims compare equal
        return ALL_GPUS if self.all else ClaimedGPUs(ids=frozenset(self.ids))


def _add_request(claim: _Claim, request: Mapping[str, Any]) -> None:
    driver = _request_driver(request)
    if driver is None:
        return
    device_ids = _get(request, "DeviceIDs", "device_ids") or ()
    if driver == "cdi":  # the CDI driver reads DeviceIDs only
        claim.add(_device_names(device_ids, cdi_only=True))
        return
    count = _get(request, "Count", "count") or 0
    if device_ids:
        claim.add(_device_names(device_ids))
    elif count < 0:
        claim.all = True
    elif count > 0:
        claim.add(str(i) for i in range(count))


def _add_visible_devices(claim: _Claim, variables: Mapping[str, str]) -> None:
    """What the nvidia runtime hands a container with these environment variables."""
    visible = variables.get("NVIDIA_VISIBLE_DEVICES")
    if visible is None:
        # the toolkit's rule for legacy CUDA images: no NVIDIA_REQUIRE_CUDA means every GPU
        if "CUDA_VERSION" in variables and "NVIDIA_REQUIRE_CUDA" not in variables:
            claim.all = True
        return
    # the runtime in CDI mode also takes qualified names, e.g. nvidia.com/gpu=0
    claim.add(_device_names([visible]))


def claimed_gpus(
    host_config: Mapping[str, Any],
    env: Sequence[str] | None = None,
    *,
    default_runtime: str = "runc",
) -> ClaimedGPUs:
    """What a container holds, from ``docker inspect``'s ``HostConfig`` and ``Config.Env``.

    Every way Docker hands over an NVIDIA GPU counts:

    - a device request whose ``Driver`` is ``"nvidia"`` or whose capabilities select the nvidia
      driver (``--gpus`` sends ``[["gpu"]]``): its ``DeviceIDs``, else ``Count`` N > 0 claims
      indexes ``"0"`` … ``"N-1"`` and ``Count`` -1 claims every GPU;
    - a CDI device request (``Driver`` ``"cdi"``, ``--device nvidia.com/gpu=0``): the devices
      of its ``nvidia.com/gpu`` and ``nvidia.com/mig`` names (``…=all`` is every GPU); other
      vendors' devices are not ours;
    - a device node in ``HostConfig.Devices``: ``/dev/nvidia3`` claims index ``"3"``;
    - the nvidia runtime (``HostConfig.Runtime``, or ``default_runtime``, the engine's
      ``docker info`` DefaultRuntime, when that is empty): what ``NVIDIA_VISIBLE_DEVICES``
      names (``"all"`` is every GPU; ``"none"``, ``"void"`` or empty is none). As in the
      NVIDIA container toolkit, a *legacy* CUDA image (``CUDA_VERSION`` set,
      ``NVIDIA_REQUIRE_CUDA`` not) without ``NVIDIA_VISIBLE_DEVICES`` gets every GPU.
    """
    claim = _Claim()
    for request in host_config.get("DeviceRequests") or ():
        if isinstance(request, Mapping):
            _add_request(claim, request)
    for device in host_config.get("Devices") or ():
        index = _device_node_index(device)
        if index is not None:
            claim.ids.add(index)
    # Docker records its default runtime at create; an empty one means the default at start
    runtime = str(host_config.get("Runtime") or "") or default_runtime
    if runtime == NVIDIA_RUNTIME:
        _add_visible_devices(claim, _env_map(env))
    return claim.result()


__all__ = [
    "ALL_GPUS",
    "DEFAULT_CAPABILITIES",
    "GPU_MECHANISMS",
    "NO_GPUS",
    "NVIDIA_RUNTIME",
    "VALID_CAPABILITIES",
    "ClaimedGPUs",
    "DeviceRequestError",
    "build_device_request",
    "cdi_device_name",
    "claimed_gpus",
    "mechanism_host_config",
    "parse_capabilities",
    "validate_device_id",
]
