"""The GPUs this hub hands out: discovered through NVML, or listed by the admin.

An :class:`Inventory` is the fixed list of devices the allocator chooses from. Each
:class:`GPU` has one canonical ``id``, the string handed to Docker in a device request: the UUID
for devices found through NVML (stable across reboots, unlike indexes), the given id for a
static inventory. MIG devices are listed instead of the physical GPU they live on, with
``parent`` naming that GPU so the allocator can pack them.

Containers name devices in other ways too (index, UUID in any case, ``"0:1"`` for MIG device 1
of GPU 0); the inventory maps each of those names onto the one canonical id.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spawner.core.devices import ClaimedGPUs, DeviceRequestError, validate_device_id
from spawner.core.sizes import MiB, SizeError, format_size, parse_size

#: More GPUs than this on one host is a typo.
MAX_GPUS = 1024
#: The keys a GPU entry of a static inventory may have.
STATIC_KEYS: tuple[str, ...] = (
    "id",
    "index",
    "name",
    "memory",
    "memory_mib",
    "uuid",
    "parent",
    "group",
    "mig_index",
)
_ECHO_LIMIT = 64
_TIMES = "\N{MULTIPLICATION SIGN}"


class InventoryError(ValueError):
    """The GPU inventory cannot be discovered or the admin's static inventory is invalid."""


@dataclass(frozen=True)
class GPU:
    """One device the hub can hand out: a whole GPU or one MIG device.

    ``index`` is the physical GPU's index (``nvidia-smi`` numbering); MIG devices carry the
    index of the GPU they live on. ``parent`` is set for MIG devices only: the id of that
    physical GPU. ``group`` is an optional admin-given placement group (e.g. the GPUs of one
    NVLink island or NUMA node); the allocator packs requests into one group where it can.
    ``mig_index`` is a MIG device's place among its GPU's MIG devices, as NVML enumerates them;
    the NVIDIA toolkit and CDI name it ``"<index>:<mig_index>"``.
    """

    id: str
    index: int
    name: str = "GPU"
    memory_mib: int | None = None
    uuid: str | None = None
    parent: str | None = None
    group: str | None = None
    # Another name for the device, like its UUID, not part of what it is: left out of ==, so a
    # GPU listed without it (a static inventory, older callers) equals the discovered one.
    mig_index: int | None = field(default=None, compare=False)

    @property
    def is_mig(self) -> bool:
        return self.parent is not None

    @property
    def placement_group(self) -> str:
        """The group the allocator packs by: ``group``, else ``parent``, else the GPU itself."""
        return self.group or self.parent or self.id

    def aliases(self) -> frozenset[str]:
        """Every string that names this device: id, index (MIG: ``"<index>:<mig_index>"``), UUID."""
        names = {self.id}
        if self.parent is None:
            names.add(str(self.index))
        elif self.mig_index is not None:
            names.add(f"{self.index}:{self.mig_index}")
        if self.uuid:
            names.add(self.uuid)
        return frozenset(names)

    def describe(self) -> str:
        """``"NVIDIA A100-SXM4-80GB (80 GiB)"``, or just the name when the memory is unknown."""
        if self.memory_mib is None:
            return self.name
        return f"{self.name} ({format_size(self.memory_mib * MiB)})"


def _key(alias: str) -> str:
    """How an alias is looked up: UUIDs are hex, so ``GPU-5F3C…`` and ``gpu-5f3c…`` are one GPU.

    Indexes and ``"0:1"`` MIG ids have no letters; lower-casing leaves them as they are.
    """
    return alias.lower()


class Inventory:
    """An ordered, validated set of GPUs; ordered by index, then as given.

    Aliases are matched without regard to case; outputs spell ids as the GPUs do.
    """

    def __init__(self, gpus: Iterable[GPU] = ()) -> None:
        ordered = sorted(enumerate(gpus), key=lambda item: (item[1].index, item[0]))
        self._gpus: tuple[GPU, ...] = tuple(gpu for _, gpu in ordered)
        self._by_alias: dict[str, GPU] = {}
        self._by_physical: dict[str, list[GPU]] = {}
        for gpu in self._gpus:
            if gpu.index < 0:
                raise InventoryError(f"GPU '{gpu.id}': index must be ≥ 0, got {gpu.index}")
            for alias in sorted(gpu.aliases()):
                other = self._by_alias.get(_key(alias))
                if other is not None and other is not gpu:
                    if _key(other.id) == _key(gpu.id):
                        raise InventoryError(f"'{alias}' is listed twice")
                    raise InventoryError(f"'{alias}' names two GPUs: '{other.id}' and '{gpu.id}'")
                self._by_alias[_key(alias)] = gpu
            if gpu.parent is not None:
                for key in {_key(gpu.parent), str(gpu.index)}:
                    self._by_physical.setdefault(key, []).append(gpu)

    def __len__(self) -> int:
        return len(self._gpus)

    def __iter__(self) -> Iterator[GPU]:
        return iter(self._gpus)

    def __contains__(self, alias: object) -> bool:
        return isinstance(alias, str) and _key(alias) in self._by_alias

    def __repr__(self) -> str:
        return f"Inventory({list(self._gpus)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Inventory) and self._gpus == other._gpus

    def resolve(self, alias: str) -> GPU | None:
        """The GPU that ``alias`` (id, index, UUID in any case, MIG id) names, or ``None``."""
        return self._by_alias.get(_key(alias))

    def ids(self) -> tuple[str, ...]:
        """Canonical ids, in inventory order."""
        return tuple(gpu.id for gpu in self._gpus)

    def canonical(self, aliases: Iterable[str]) -> frozenset[str]:
        """Canonical ids of the GPUs ``aliases`` name; unknown names are ignored."""
        return self.resolve_claim(ClaimedGPUs(ids=frozenset(aliases)))

    def resolve_claim(self, claimed: ClaimedGPUs) -> frozenset[str]:
        """Canonical ids of the devices a container's claim covers.

        ``all`` covers every device. Each claimed id covers the device it names (index, UUID in
        any case, MIG UUID, ``"0:1"`` MIG id); a claim on a physical GPU that is in MIG mode (by
        index or UUID) covers all of its MIG devices. Ids this inventory does not know are
        ignored.
        """
        if claimed.all:
            return frozenset(self.ids())
        covered: set[str] = set()
        for alias in claimed.ids:
            key = _key(alias)
            gpu = self._by_alias.get(key)
            if gpu is not None:
                covered.add(gpu.id)
            covered.update(child.id for child in self._by_physical.get(key, ()))
        return frozenset(covered)

    def describe(self) -> str:
        """A one-line summary for people: ``"4 × NVIDIA A100-SXM4-80GB (80 GiB)"``.

        Devices of different kinds are listed in inventory order:
        ``"2 × A100 (80 GiB), 1 × T4 (15 GiB)"``.
        """  # noqa: RUF002 - the multiplication sign is what people read
        if not self._gpus:
            return "no GPUs"
        counts: dict[str, int] = {}
        for gpu in self._gpus:
            label = gpu.describe()
            counts[label] = counts.get(label, 0) + 1
        return ", ".join(f"{n} {_TIMES} {label}" for label, n in counts.items())


# -- static inventories --------------------------------------------------------------------


def _shown(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) > _ECHO_LIMIT:
        text = text[:_ECHO_LIMIT] + "…"
    return "".join(c if c.isprintable() else "?" for c in text)


def _is_index(ident: str) -> bool:
    return ident.isascii() and ident.isdigit()


def _count(n: int, option: str) -> list[GPU]:
    if not 0 <= n <= MAX_GPUS:
        raise InventoryError(f"{option}: a GPU count must be between 0 and {MAX_GPUS}, got {n}")
    return [GPU(id=str(i), index=i) for i in range(n)]


def _device_id(value: object, where: str, errors: list[str]) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        errors.append(f"{where}: a GPU id must be a string, got {type(value).__name__}")
        return None
    try:
        return validate_device_id(value, option=where)
    except DeviceRequestError as e:
        errors.append(str(e))
        return None


def _positive_int(value: object, where: str, errors: list[str], *, minimum: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        errors.append(f"{where}: must be a whole number ≥ {minimum}, got '{_shown(value)}'")
        return None
    return value


def _name(value: object, where: str, errors: list[str]) -> str | None:
    if not isinstance(value, str) or not value.strip():
        errors.append(f"{where}: must be a non-empty string, got '{_shown(value)}'")
        return None
    return value.strip()


def _entry(item: Mapping[Any, Any], where: str, position: int, errors: list[str]) -> GPU | None:
    before = len(errors)
    unknown = [str(key) for key in item if key not in STATIC_KEYS]
    if unknown:
        errors.append(
            f"{where}: unknown key(s) {', '.join(repr(_shown(k)) for k in unknown)}; "
            f"allowed keys: {', '.join(STATIC_KEYS)}"
        )
    if "id" not in item:
        errors.append(f"{where}: field 'id' is required")
        return None
    ident = _device_id(item["id"], f"{where}: field 'id'", errors)
    index: int | None = position
    if "index" in item:
        index = _positive_int(item["index"], f"{where}: field 'index'", errors, minimum=0)
    if ident is not None and _is_index(ident):
        if "index" in item and index is not None and index != int(ident):
            errors.append(
                f"{where}: field 'index': id '{ident}' is a GPU index, so its index is "
                f"{ident}, not {index}"
            )
        index = int(ident)
    memory_mib: int | None = None
    if "memory" in item and "memory_mib" in item:
        errors.append(f"{where}: give 'memory' or 'memory_mib', not both")
    elif "memory" in item:
        try:
            memory_mib = parse_size(item["memory"], option=f"{where}: field 'memory'") // MiB
        except SizeError as e:
            errors.append(str(e))
        else:
            if memory_mib == 0:
                errors.append(f"{where}: field 'memory': must be at least 1 MiB")
    elif "memory_mib" in item:
        memory_mib = _positive_int(
            item["memory_mib"], f"{where}: field 'memory_mib'", errors, minimum=1
        )
    fields: dict[str, str | None] = {}
    for key in ("name", "parent", "group"):
        if key in item:
            fields[key] = _name(item[key], f"{where}: field '{key}'", errors)
    uuid: str | None = None
    if "uuid" in item:
        uuid = _device_id(item["uuid"], f"{where}: field 'uuid'", errors)
        if uuid is not None and _is_index(uuid):
            errors.append(f"{where}: field 'uuid': must be a 'GPU-…' or 'MIG-…' UUID")
    if "parent" in item and ident is not None and _is_index(ident):
        errors.append(
            f"{where}: field 'parent': only MIG devices (ids 'MIG-…') live on a parent GPU"
        )
    mig_index: int | None = None
    if "mig_index" in item:
        mig_index = _positive_int(
            item["mig_index"], f"{where}: field 'mig_index'", errors, minimum=0
        )
        if "parent" not in item:
            errors.append(f"{where}: field 'mig_index': only MIG devices (with 'parent') have one")
    if len(errors) > before or ident is None or index is None:
        return None
    return GPU(
        id=ident,
        index=index,
        name=fields.get("name") or "GPU",
        memory_mib=memory_mib,
        uuid=uuid,
        parent=fields.get("parent"),
        group=fields.get("group"),
        mig_index=mig_index,
    )


def _from_list(items: Sequence[object], option: str) -> list[GPU]:
    errors: list[str] = []
    gpus: list[GPU] = []
    first_by_id: dict[str, int] = {}
    first_by_index: dict[int, int] = {}
    for position, item in enumerate(items):
        where = f"{option}[{position}]"
        gpu: GPU | None
        if isinstance(item, Mapping):
            gpu = _entry(item, where, position, errors)
        elif isinstance(item, str | int) and not isinstance(item, bool):
            ident = _device_id(item, where, errors)
            gpu = None
            if ident is not None:
                gpu = GPU(id=ident, index=int(ident) if _is_index(ident) else position)
        else:
            errors.append(
                f"{where}: must be a GPU id or a mapping with 'id', got {type(item).__name__}"
            )
            gpu = None
        if gpu is None:
            continue
        if gpu.id in first_by_id:
            errors.append(f"{where}: GPU '{gpu.id}' is already {option}[{first_by_id[gpu.id]}]")
            continue
        if gpu.parent is None and gpu.index in first_by_index:
            errors.append(
                f"{where}: index {gpu.index} is already taken by "
                f"{option}[{first_by_index[gpu.index]}]; give each GPU its own 'index'"
            )
            continue
        first_by_id[gpu.id] = position
        if gpu.parent is None:
            first_by_index[gpu.index] = position
        gpus.append(gpu)
    if errors:
        raise InventoryError("\n".join(errors))
    return gpus


def _from_text(text: str, option: str, *, json_ok: bool = True) -> list[GPU]:
    stripped = text.strip()
    if not stripped:
        raise InventoryError(
            f"{option}: is empty; give a GPU count ('4'), GPU ids ('0,1' or 'GPU-…,GPU-…') "
            "or a JSON list"
        )
    if json_ok and stripped[0] in '[{"':
        try:
            decoded = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise InventoryError(f"{option}: is not valid JSON: {e}") from None
        if isinstance(decoded, str):  # a JSON string holds a count or ids, not more JSON
            return _from_text(decoded, option, json_ok=False)
        return _parse(decoded, option)
    if _is_index(stripped) and "," not in stripped:
        count = int(stripped)
        if count == 0:
            raise InventoryError(
                f"{option}: '0' would mean no GPUs; to list GPU 0 alone write '0,' or ['0']"
            )
        return _count(count, option)
    return _from_list([part.strip() for part in stripped.split(",") if part.strip()], option)


def _parse(value: object, option: str) -> list[GPU]:
    if isinstance(value, bool):
        raise InventoryError(f"{option}: must be a GPU count or a list of GPUs, not true/false")
    if isinstance(value, int):
        return _count(value, option)
    if isinstance(value, str):
        return _from_text(value, option)
    if isinstance(value, list | tuple):
        return _from_list(value, option)
    raise InventoryError(
        f"{option}: must be a GPU count, a list of GPU ids or of mappings with 'id', "
        f"got {type(value).__name__}"
    )


def parse_static_inventory(value: object, *, option: str) -> Inventory:
    """Build an inventory from the admin's ``option`` instead of asking NVML.

    Accepted:

    - an int N: GPUs ``"0"`` … ``"N-1"`` (for demo and test hosts);
    - a list of ids: ``["0", "1"]``, ``["GPU-…", "GPU-…"]`` (ints are taken as indexes);
    - a list of mappings with the keys of :data:`STATIC_KEYS`, e.g.
      ``{"id": "GPU-…", "name": "A100", "memory": "80g", "group": "nvlink-0"}``
      (``memory_mib`` instead of ``memory`` also works; a MIG device, with ``parent``, may give
      its ``mig_index`` so that ``"<index>:<mig_index>"`` claims find it);
    - a string: a count (``"4"``), ids (``"0,1,2,3"``, ``"GPU-aaa,GPU-bbb"``) or JSON text of
      any of the above.

    A GPU whose id is an index has that index; any other's ``index`` defaults to its position.
    Duplicate ids or indexes are refused. Every error names ``option`` and the position, and
    all of them are reported at once, one per line.
    """
    gpus = _parse(value, option)
    try:
        return Inventory(gpus)
    except InventoryError as e:
        raise InventoryError(f"{option}: {e}") from None


__all__ = [
    "GPU",
    "MAX_GPUS",
    "STATIC_KEYS",
    "Inventory",
    "InventoryError",
    "parse_static_inventory",
]
