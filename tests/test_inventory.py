import sys
import types
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest

from spawner.core.devices import ClaimedGPUs, claimed_gpus
from spawner.core.inventory import (
    GPU,
    Inventory,
    InventoryError,
    parse_static_inventory,
)
from spawner.runtime.nvml import discover_nvml

MiB = 1024**2
GiB = 1024**3
U0 = "GPU-00000000-0000-4000-8000-000000000000"
U1 = "GPU-11111111-1111-4111-8111-111111111111"
M0 = "MIG-aaaaaaaa-0000-5000-8000-000000000000"
M1 = "MIG-bbbbbbbb-0000-5000-8000-000000000000"
X = "\N{MULTIPLICATION SIGN}"
# UUIDs with hex letters, as NVML reports them (lower case)
UA = "GPU-5f3c9a7e-1b2d-4c3e-8f4a-6b7c8d9e0f1a"
UB = "GPU-a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
MA = "MIG-c0ffee00-aaaa-5bbb-8ccc-dddddddddddd"
MB = "MIG-deadbeef-aaaa-5bbb-8ccc-eeeeeeeeeeee"


# -- a fake pynvml module: NVML as seen by the hub ----------------------------------------


class FakeNVMLError(Exception):
    NAMES: ClassVar[dict[int, str]] = {
        3: "Not Supported",
        6: "Not Found",
        9: "Driver Not Loaded",
        15: "GPU is lost",
    }

    def __init__(self, value: int) -> None:
        self.value = value

    def __str__(self) -> str:
        return self.NAMES.get(self.value, f"NVML Error with code {self.value}")


@dataclass
class FakeDevice:
    uuid: str
    name: str | bytes
    memory: int
    index: int = 0
    mig_mode: int | None = None  # None: not MIG-capable (NVML says Not Supported)
    mig_slots: list["FakeDevice | None"] = field(default_factory=list)
    slices: int = 1
    lost: bool = False


def fake_pynvml(devices: list[FakeDevice], *, init_error: int | None = None) -> Any:
    nvml: Any = types.ModuleType("pynvml")
    nvml.NVMLError = FakeNVMLError
    nvml.NVML_ERROR_NOT_FOUND = 6
    nvml.NVML_DEVICE_MIG_ENABLE = 1
    nvml.calls = []

    def nvmlInit() -> None:
        nvml.calls.append("init")
        if init_error is not None:
            raise FakeNVMLError(init_error)

    def nvmlShutdown() -> None:
        nvml.calls.append("shutdown")

    def memory(device: FakeDevice) -> Any:
        if device.lost:
            raise FakeNVMLError(15)
        return types.SimpleNamespace(total=device.memory, free=device.memory, used=0)

    def mig_mode(device: FakeDevice) -> list[int]:
        if device.mig_mode is None:
            raise FakeNVMLError(3)
        return [device.mig_mode, device.mig_mode]

    def mig_handle(device: FakeDevice, slot: int) -> FakeDevice:
        mig = device.mig_slots[slot]
        if mig is None:
            raise FakeNVMLError(6)
        return mig

    def attributes(device: FakeDevice) -> Any:
        return types.SimpleNamespace(
            gpuInstanceSliceCount=device.slices, memorySizeMB=device.memory // MiB
        )

    nvml.nvmlInit = nvmlInit
    nvml.nvmlShutdown = nvmlShutdown
    nvml.nvmlDeviceGetCount = lambda: len(devices)
    nvml.nvmlDeviceGetHandleByIndex = lambda i: devices[i]
    nvml.nvmlDeviceGetIndex = lambda d: d.index
    nvml.nvmlDeviceGetUUID = lambda d: d.uuid
    nvml.nvmlDeviceGetName = lambda d: d.name
    nvml.nvmlDeviceGetMemoryInfo = memory
    nvml.nvmlDeviceGetMigMode = mig_mode
    nvml.nvmlDeviceGetMaxMigDeviceCount = lambda d: len(d.mig_slots)
    nvml.nvmlDeviceGetMigDeviceHandleByIndex = mig_handle
    nvml.nvmlDeviceGetAttributes = attributes
    return nvml


def with_fake_nvml(monkeypatch: pytest.MonkeyPatch, nvml: Any) -> Any:
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    return nvml


def test_discover_nvml_plain_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = with_fake_nvml(
        monkeypatch,
        fake_pynvml(
            [
                FakeDevice(U0, b"NVIDIA A100-SXM4-80GB", 80 * GiB, index=0),
                FakeDevice(U1, "NVIDIA A100-SXM4-80GB", 80 * GiB, index=1, mig_mode=0),
            ]
        ),
    )
    inventory = discover_nvml()
    assert list(inventory) == [
        GPU(id=U0, index=0, name="NVIDIA A100-SXM4-80GB", memory_mib=81920, uuid=U0),
        GPU(id=U1, index=1, name="NVIDIA A100-SXM4-80GB", memory_mib=81920, uuid=U1),
    ]
    assert inventory.describe() == f"2 {X} NVIDIA A100-SXM4-80GB (80 GiB)"
    assert nvml.calls == ["init", "shutdown"]


def test_discover_nvml_lists_mig_devices_instead_of_their_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mig_a = FakeDevice(M0, "NVIDIA A100-SXM4-80GB MIG 1g.10gb", 9856 * MiB)
    mig_b = FakeDevice(M1, "NVIDIA A100-SXM4-80GB", 40192 * MiB, slices=3)  # old drivers
    with_fake_nvml(
        monkeypatch,
        fake_pynvml(
            [
                FakeDevice(
                    U0,
                    "NVIDIA A100-SXM4-80GB",
                    80 * GiB,
                    mig_mode=1,
                    mig_slots=[mig_a, None, mig_b],
                ),
                FakeDevice(U1, "Tesla T4", 15360 * MiB, index=1),
            ]
        ),
    )
    inventory = discover_nvml()
    assert list(inventory) == [
        GPU(
            id=M0,
            index=0,
            name="NVIDIA A100-SXM4-80GB MIG 1g.10gb",
            memory_mib=9856,
            uuid=M0,
            parent=U0,
        ),
        GPU(
            id=M1,
            index=0,
            name="NVIDIA A100-SXM4-80GB MIG 3g.40gb",
            memory_mib=40192,
            uuid=M1,
            parent=U0,
        ),
        GPU(id=U1, index=1, name="Tesla T4", memory_mib=15360, uuid=U1),
    ]
    assert inventory.resolve("0") is None  # GPU 0 itself is not handed out in MIG mode
    assert inventory.resolve_claim(ClaimedGPUs(frozenset({"0"}))) == {M0, M1}
    assert inventory.resolve_claim(ClaimedGPUs(frozenset({U0}))) == {M0, M1}


def test_discover_nvml_numbers_mig_devices_as_the_toolkit_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    migs: list[FakeDevice | None] = [FakeDevice(M0, "MIG 1g.10gb", 9856 * MiB), None]
    migs.append(FakeDevice(M1, "MIG 1g.10gb", 9856 * MiB))
    gpus = [
        FakeDevice(U0, "A100", 80 * GiB, index=0),
        FakeDevice(U1, "A100", 80 * GiB, index=1, mig_mode=1, mig_slots=migs),
    ]
    with_fake_nvml(monkeypatch, fake_pynvml(gpus))
    inventory = discover_nvml()
    # counted over the devices found, so a hole in the slots does not shift the names
    assert [gpu.mig_index for gpu in inventory] == [None, 0, 1]
    assert inventory.resolve_claim(ClaimedGPUs(frozenset({"1:1"}))) == {M1}
    assert inventory.resolve_claim(ClaimedGPUs(frozenset({"1:0", "0"}))) == {M0, U0}


def test_discover_nvml_without_gpus_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    with_fake_nvml(monkeypatch, fake_pynvml([]))
    assert len(discover_nvml()) == 0


def test_discover_nvml_init_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = with_fake_nvml(monkeypatch, fake_pynvml([], init_error=9))
    with pytest.raises(InventoryError) as info:
        discover_nvml()
    message = str(info.value)
    assert message.startswith("NVML: Driver Not Loaded — is the NVIDIA driver installed")
    assert "GPU access" in message and "static gpu_inventory" in message
    assert nvml.calls == ["init"]  # nothing to shut down


def test_discover_nvml_failure_midway_still_shuts_down(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = with_fake_nvml(monkeypatch, fake_pynvml([FakeDevice(U0, "H100", 80 * GiB, lost=True)]))
    with pytest.raises(InventoryError, match=r"^NVML: GPU is lost — "):
        discover_nvml()
    assert nvml.calls == ["init", "shutdown"]


def test_discover_nvml_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes the import fail
    with pytest.raises(InventoryError, match="nvidia-ml-py package"):
        discover_nvml()


# -- GPU and Inventory ----------------------------------------------------------------------

WHOLE = GPU(id=U0, index=0, uuid=U0)
STATIC = GPU(id="3", index=3)
MIG = GPU(id=M0, index=1, uuid=M0, parent=U1)


@pytest.mark.parametrize(
    ("gpu", "aliases"),
    [
        (WHOLE, {U0, "0"}),
        (STATIC, {"3"}),
        (GPU(id="GPU-aaa", index=2), {"GPU-aaa", "2"}),
        (MIG, {M0}),
        (GPU(id=M0, index=1, uuid=M0, parent=U1, mig_index=2), {M0, "1:2"}),
        (GPU(id="0", index=0, mig_index=3), {"0"}),  # a whole GPU has no MIG index
    ],
)
def test_gpu_aliases(gpu: GPU, aliases: set[str]) -> None:
    assert gpu.aliases() == aliases


@pytest.mark.parametrize(
    ("gpu", "group"),
    [(WHOLE, U0), (MIG, U1), (GPU(id="0", index=0, group="nvlink-0"), "nvlink-0")],
)
def test_gpu_placement_group(gpu: GPU, group: str) -> None:
    assert gpu.placement_group == group


# a whole GPU, and a GPU in MIG mode as NVML lists it: its MIG devices only
MIXED = [
    GPU(id=UA, index=0, uuid=UA),
    GPU(id=MA, index=1, uuid=MA, parent=UB, mig_index=0),
    GPU(id=MB, index=1, uuid=MB, parent=UB, mig_index=1),
]


@pytest.mark.parametrize(
    ("aliases", "covered"),
    [
        # a UUID in any case is the same GPU as its index
        ({UA}, {UA}),
        ({UA.upper()}, {UA}),
        ({"Gpu-" + UA[4:].upper()}, {UA}),
        ({"gpu-5F3C9A7E-1B2D-4C3E-8F4A-6B7C8D9E0F1A"}, {UA}),
        ({"0", UA.upper()}, {UA}),
        # MIG devices by UUID (any case) and by index:mig-index
        ({MA.upper()}, {MA}),
        ({"1:1"}, {MB}),
        ({"1:0", MB.upper()}, {MA, MB}),
        # the physical GPU of MIG devices, by index or UUID in any case
        ({"1"}, {MA, MB}),
        ({UB.upper()}, {MA, MB}),
        # unknown to this inventory: ignored
        ({"1:2"}, set()),
        ({"0:0"}, set()),  # GPU 0 is not in MIG mode
        ({"GPU-ffffffff", "MIG-GPU-" + UB[4:] + "/1/0", "2"}, set()),
    ],
)
def test_inventory_resolve_claim_any_spelling(aliases: set[str], covered: set[str]) -> None:
    inventory = Inventory(MIXED)
    assert inventory.resolve_claim(ClaimedGPUs(frozenset(aliases))) == covered


def test_inventory_looks_up_uuids_in_any_case_and_keeps_their_spelling() -> None:
    inventory = Inventory([GPU(id="GPU-AAA", index=0), *MIXED[1:]])
    assert inventory.resolve("gpu-aaa") is not None
    assert inventory.resolve("GPU-aaa") == GPU(id="GPU-AAA", index=0)
    assert MA.upper() in inventory and "1:0" in inventory and "1:9" not in inventory
    assert inventory.ids() == ("GPU-AAA", MA, MB)
    assert inventory.canonical(["GPU-aaa", MB.upper()]) == {"GPU-AAA", MB}


def test_inventory_orders_by_index_and_resolves_aliases() -> None:
    inventory = Inventory([GPU(id=U1, index=1, uuid=U1), WHOLE, STATIC])
    assert inventory.ids() == (U0, U1, "3")
    assert len(inventory) == 3
    assert inventory.resolve("1") == GPU(id=U1, index=1, uuid=U1)
    assert inventory.resolve(U0) is WHOLE
    assert inventory.resolve("2") is None
    assert "3" in inventory and "9" not in inventory


@pytest.mark.parametrize(
    ("claim", "covered"),
    [
        (ClaimedGPUs(), set()),
        (ClaimedGPUs(all=True), {U0, "GPU-aaa", M0}),
        (ClaimedGPUs(frozenset({"0"})), {U0}),
        (ClaimedGPUs(frozenset({"0", U0})), {U0}),
        (ClaimedGPUs(frozenset({"1"})), {"GPU-aaa"}),
        (ClaimedGPUs(frozenset({"7", "GPU-zzz"})), set()),  # unknown ids are ignored
        (ClaimedGPUs(frozenset({M0})), {M0}),
        (ClaimedGPUs(frozenset({"2"})), {M0}),  # the physical GPU of a MIG device
        (ClaimedGPUs(frozenset({U1})), {M0}),
    ],
)
def test_inventory_resolve_claim(claim: ClaimedGPUs, covered: set[str]) -> None:
    inventory = Inventory(
        [WHOLE, GPU(id="GPU-aaa", index=1), GPU(id=M0, index=2, uuid=M0, parent=U1)]
    )
    assert inventory.resolve_claim(claim) == covered


@pytest.mark.parametrize(
    ("gpus", "text"),
    [
        ([], "no GPUs"),
        ([GPU(id=str(i), index=i) for i in range(2)], f"2 {X} GPU"),
        (
            [
                GPU(id=str(i), index=i, name="NVIDIA A100-SXM4-80GB", memory_mib=81920)
                for i in range(4)
            ],
            f"4 {X} NVIDIA A100-SXM4-80GB (80 GiB)",
        ),
        (
            [
                GPU(id="0", index=0, name="A100", memory_mib=81920),
                GPU(id="1", index=1, name="T4", memory_mib=15360),
                GPU(id="2", index=2, name="A100", memory_mib=81920),
            ],
            f"2 {X} A100 (80 GiB), 1 {X} T4 (15 GiB)",
        ),
    ],
)
def test_inventory_describe(gpus: list[GPU], text: str) -> None:
    assert Inventory(gpus).describe() == text


@pytest.mark.parametrize(
    ("gpus", "problem"),
    [
        ([GPU(id="0", index=0), GPU(id="0", index=0)], "'0' is listed twice"),
        (
            [GPU(id="GPU-aaa", index=1), GPU(id="1", index=1)],
            "'1' names two GPUs: 'GPU-aaa' and '1'",
        ),
        (
            [GPU(id="GPU-aaa", index=0), GPU(id="GPU-bbb", index=1, uuid="GPU-aaa")],
            "'GPU-aaa' names two GPUs",
        ),
        ([GPU(id="GPU-aaa", index=-1)], "index must be ≥ 0"),
        # UUIDs are hex: two spellings of one are one GPU
        ([GPU(id="GPU-aaa", index=0), GPU(id="GPU-AAA", index=1)], "'GPU-AAA' is listed twice"),
        (
            [GPU(id="GPU-aaa", index=0), GPU(id="GPU-bbb", index=1, uuid="GPU-AAA")],
            "'GPU-AAA' names two GPUs: 'GPU-aaa' and 'GPU-bbb'",
        ),
        (
            [
                GPU(id=M0, index=1, parent=U1, mig_index=0),
                GPU(id=M1, index=1, parent=U1, mig_index=0),
            ],
            f"'1:0' names two GPUs: '{M0}' and '{M1}'",
        ),
    ],
)
def test_inventory_rejects_ambiguous_gpus(gpus: list[GPU], problem: str) -> None:
    with pytest.raises(InventoryError, match=problem):
        Inventory(gpus)


# -- static inventories ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, []),
        (2, [GPU(id="0", index=0), GPU(id="1", index=1)]),
        ("4", [GPU(id=str(i), index=i) for i in range(4)]),
        (" 2 ", [GPU(id="0", index=0), GPU(id="1", index=1)]),
        ("0,1,2,3", [GPU(id=str(i), index=i) for i in range(4)]),
        ("0,", [GPU(id="0", index=0)]),
        ("1, 3", [GPU(id="1", index=1), GPU(id="3", index=3)]),
        ("GPU-aaa,GPU-bbb", [GPU(id="GPU-aaa", index=0), GPU(id="GPU-bbb", index=1)]),
        (["1", "0"], [GPU(id="0", index=0), GPU(id="1", index=1)]),
        ([0, 2], [GPU(id="0", index=0), GPU(id="2", index=2)]),
        ([U0, U1], [GPU(id=U0, index=0), GPU(id=U1, index=1)]),
        ("[]", []),
        ('["0", "1"]', [GPU(id="0", index=0), GPU(id="1", index=1)]),
        ("3", [GPU(id=str(i), index=i) for i in range(3)]),
        ('"2"', [GPU(id="0", index=0), GPU(id="1", index=1)]),
        ('"0,1"', [GPU(id="0", index=0), GPU(id="1", index=1)]),
        (
            [
                {"id": U0, "name": "NVIDIA A100-SXM4-80GB", "memory": "80g", "group": "nvlink-0"},
                {"id": U1, "name": "Tesla T4", "memory_mib": 15360, "index": 4, "uuid": U1},
            ],
            [
                GPU(
                    id=U0, index=0, name="NVIDIA A100-SXM4-80GB", memory_mib=81920, group="nvlink-0"
                ),
                GPU(id=U1, index=4, name="Tesla T4", memory_mib=15360, uuid=U1),
            ],
        ),
        (
            '[{"id": "2", "memory": "16GiB"}, {"id": "'
            + M0
            + '", "parent": "'
            + U1
            + '", "index": 1}]',
            [GPU(id=M0, index=1, parent=U1), GPU(id="2", index=2, memory_mib=16384)],
        ),
        (({"id": "1"},), [GPU(id="1", index=1)]),
    ],
)
def test_parse_static_inventory(value: object, expected: list[GPU]) -> None:
    assert list(parse_static_inventory(value, option="gpu_inventory")) == expected


@pytest.mark.parametrize(
    ("value", "problems"),
    [
        (True, ["gpu_inventory: must be a GPU count or a list of GPUs, not true/false"]),
        (-1, ["gpu_inventory: a GPU count must be between 0 and 1024, got -1"]),
        (1025, ["between 0 and 1024"]),
        (2.5, ["gpu_inventory: must be a GPU count, a list of GPU ids", "got float"]),
        (None, ["got NoneType"]),
        ("", ["gpu_inventory: is empty"]),
        ("0", ["'0' would mean no GPUs; to list GPU 0 alone write '0,'"]),
        ("[1,", ["gpu_inventory: is not valid JSON"]),
        ('{"id": "0"}', ["got dict"]),
        ("0,0", ["gpu_inventory[1]: GPU '0' is already gpu_inventory[0]"]),
        ("0, bad id", ["gpu_inventory[1]: 'bad id' contains spaces"]),
        (["GPU-aaa", "0"], ["gpu_inventory[1]: index 0 is already taken by gpu_inventory[0]"]),
        ([[0]], ["gpu_inventory[0]: must be a GPU id or a mapping with 'id', got list"]),
        ([True], ["gpu_inventory[0]: must be a GPU id or a mapping"]),
        ([-1], ["gpu_inventory[0]: '-1' is not a device id"]),
        (
            [{"id": "0", "mem": "80g", "model": "A100"}],
            [
                "gpu_inventory[0]: unknown key(s) 'mem', 'model'; "
                "allowed keys: id, index, name, memory"
            ],
        ),
        ([{"name": "A100"}], ["gpu_inventory[0]: field 'id' is required"]),
        ([{"id": None}], ["gpu_inventory[0]: field 'id': a GPU id must be a string, got NoneType"]),
        (
            [{"id": "1", "index": 0}],
            ["field 'index': id '1' is a GPU index, so its index is 1, not 0"],
        ),
        (
            [{"id": "GPU-a", "index": -2}],
            ["gpu_inventory[0]: field 'index': must be a whole number ≥ 0"],
        ),
        ([{"id": "GPU-a", "index": True}], ["field 'index': must be a whole number ≥ 0"]),
        (
            [{"id": "GPU-a", "memory": "lots"}],
            ["gpu_inventory[0]: field 'memory': is not a size, got 'lots'"],
        ),
        ([{"id": "GPU-a", "memory": "100k"}], ["field 'memory': must be at least 1 MiB"]),
        (
            [{"id": "GPU-a", "memory": "8g", "memory_mib": 8192}],
            ["give 'memory' or 'memory_mib', not both"],
        ),
        ([{"id": "GPU-a", "memory_mib": 0}], ["field 'memory_mib': must be a whole number ≥ 1"]),
        ([{"id": "GPU-a", "name": ""}], ["field 'name': must be a non-empty string"]),
        ([{"id": "GPU-a", "group": 3}], ["field 'group': must be a non-empty string, got '3'"]),
        ([{"id": "GPU-a", "uuid": "3"}], ["field 'uuid': must be a 'GPU-…' or 'MIG-…' UUID"]),
        ([{"id": "0", "parent": U0}], ["field 'parent': only MIG devices"]),
        (
            [{"id": "GPU-a"}, {"id": "GPU-b", "uuid": "GPU-a"}],
            ["gpu_inventory: 'GPU-a' names two GPUs"],
        ),
    ],
)
def test_parse_static_inventory_rejects(value: object, problems: list[str]) -> None:
    with pytest.raises(InventoryError) as info:
        parse_static_inventory(value, option="gpu_inventory")
    message = str(info.value)
    for problem in problems:
        assert problem in message


def test_parse_static_inventory_mig_index() -> None:
    inventory = parse_static_inventory(
        [
            {"id": "0"},
            {"id": M0, "parent": U1, "index": 1, "mig_index": 0},
            {"id": M1, "parent": U1, "index": 1},
        ],
        option="gpu_inventory",
    )
    assert [gpu.mig_index for gpu in inventory] == [None, 0, None]
    assert inventory.resolve_claim(ClaimedGPUs(frozenset({"1:0", "1:1"}))) == {M0}


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (
            {"id": M0, "mig_index": 0},
            "field 'mig_index': only MIG devices (with 'parent') have one",
        ),
        (
            {"id": M0, "parent": U1, "mig_index": -1},
            "field 'mig_index': must be a whole number ≥ 0",
        ),
        ({"id": M0, "parent": U1, "mig_index": True}, "field 'mig_index': must be a whole number"),
        ({"id": M0, "parent": U1, "mig_index": "1"}, "field 'mig_index': must be a whole number"),
    ],
)
def test_parse_static_inventory_rejects_mig_index(entry: dict[str, Any], problem: str) -> None:
    with pytest.raises(InventoryError) as info:
        parse_static_inventory([entry], option="gpu_inventory")
    assert f"gpu_inventory[0]: {problem}" in str(info.value)


# -- from docker inspect to the inventory ---------------------------------------------------


def _cdi(*names: str) -> dict[str, Any]:
    request = {"Driver": "cdi", "Count": 0, "DeviceIDs": list(names), "Capabilities": None}
    return {"Runtime": "runc", "Devices": [], "DeviceRequests": [request | {"Options": None}]}


def _node(path: str) -> dict[str, Any]:
    return {"PathOnHost": path, "PathInContainer": path, "CgroupPermissions": "rwm"}


@pytest.mark.parametrize(
    ("host_config", "env", "covered"),
    [
        (_cdi("nvidia.com/gpu=0"), None, {UA}),
        (_cdi(f"nvidia.com/gpu={UA.upper()}"), None, {UA}),
        (_cdi("nvidia.com/gpu=1:1"), None, {MB}),
        (_cdi("nvidia.com/mig=1:0"), None, {MA}),
        (_cdi("nvidia.com/gpu=gpu1"), None, {MA, MB}),
        (_cdi("nvidia.com/gpu=all"), None, {UA, MA, MB}),
        (_cdi("amd.com/gpu=0"), None, set()),
        ({"Devices": [_node("/dev/nvidia0"), _node("/dev/nvidiactl")]}, None, {UA}),
        (
            {"Devices": [_node("/dev/nvidia1"), _node("/dev/nvidia-caps/nvidia-cap12")]},
            None,
            {MA, MB},
        ),
        ({"Runtime": ""}, [f"NVIDIA_VISIBLE_DEVICES={MB.upper()}"], {MB}),
    ],
)
def test_claims_of_inspected_containers_map_onto_the_inventory(
    host_config: dict[str, Any], env: list[str] | None, covered: set[str]
) -> None:
    claim = claimed_gpus(host_config, env, default_runtime="nvidia")
    assert Inventory(MIXED).resolve_claim(claim) == covered


def test_parse_static_inventory_reports_every_problem_one_per_line() -> None:
    with pytest.raises(InventoryError) as info:
        parse_static_inventory(
            ["0", "x y", {"id": "0"}, {"id": "GPU-c", "memory": 0}], option="gpus"
        )
    assert str(info.value).splitlines() == [
        "gpus[1]: 'x y' contains spaces; use a GPU index ('0', '1', …), a GPU UUID ('GPU-…', "
        "see nvidia-smi -L) or a MIG device ('MIG-…')",
        "gpus[2]: GPU '0' is already gpus[0]",
        "gpus[3]: field 'memory': must be at least 1 byte, got '0'; use a number of bytes or a "
        "size like '2g' or '512m'",
    ]


def test_parse_static_inventory_echoes_little_of_long_values() -> None:
    with pytest.raises(InventoryError) as info:
        parse_static_inventory(["GPU-" + "z" * 500], option="gpu_inventory")
    assert "z" * 65 not in str(info.value)
