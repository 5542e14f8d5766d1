import json
from typing import Any

import pytest

from spawner.core.devices import (
    DEFAULT_CAPABILITIES,
    VALID_CAPABILITIES,
    ClaimedGPUs,
    DeviceRequestError,
    build_device_request,
    claimed_gpus,
    mechanism_host_config,
    parse_capabilities,
    validate_device_id,
)

UUID = "GPU-8e5f2b1c-3d4a-4b6c-9e8f-0a1b2c3d4e5f"
MIG_UUID = "MIG-4f1d2c3b-5a6e-5f7d-8c9b-0a1b2c3d4e5f"

# HostConfig fragments of `docker inspect`, as Docker 25-28 writes them, by what was run.
# Docker 20.10 (the engine used here) cannot create CDI device requests, so these documents are
# hand-written from Docker's documented format: the CLI turns each `--device vendor/class=name`
# into one DeviceRequest with Driver "cdi" and the names as DeviceIDs, `--device /dev/x` into a
# Devices entry, `--gpus` into a request with Capabilities [["gpu"]].
INSPECTED: dict[str, dict[str, Any]] = {
    name: json.loads(text)
    for name, text in {
        # docker run --device nvidia.com/gpu=0
        "cdi-index": """{
            "Runtime": "runc", "Privileged": false, "Devices": [], "DeviceCgroupRules": null,
            "DeviceRequests": [{"Driver": "cdi", "Count": 0,
                "DeviceIDs": ["nvidia.com/gpu=0"], "Capabilities": null, "Options": null}]
        }""",
        # docker run --device nvidia.com/gpu=GPU-8e5f… --device nvidia.com/gpu=MIG-4f1d…
        "cdi-uuids": f"""{{
            "Runtime": "runc", "Privileged": false, "Devices": [], "DeviceCgroupRules": null,
            "DeviceRequests": [{{"Driver": "cdi", "Count": 0,
                "DeviceIDs": ["nvidia.com/gpu={UUID}", "nvidia.com/gpu={MIG_UUID}"],
                "Capabilities": null, "Options": null}}]
        }}""",
        # docker run --device nvidia.com/gpu=0:1 (MIG device 1 of GPU 0)
        "cdi-mig-index": """{
            "Runtime": "runc", "Devices": [],
            "DeviceRequests": [{"Driver": "cdi", "Count": 0,
                "DeviceIDs": ["nvidia.com/gpu=0:1"], "Capabilities": null, "Options": null}]
        }""",
        # docker run --device nvidia.com/mig=1:0
        "cdi-mig-kind": """{
            "Runtime": "runc", "Devices": [],
            "DeviceRequests": [{"Driver": "cdi", "Count": 0,
                "DeviceIDs": ["nvidia.com/mig=1:0"], "Capabilities": null, "Options": null}]
        }""",
        # docker run --device nvidia.com/gpu=all
        "cdi-all": """{
            "Runtime": "runc", "Devices": [],
            "DeviceRequests": [{"Driver": "cdi", "Count": 0,
                "DeviceIDs": ["nvidia.com/gpu=all"], "Capabilities": null, "Options": null}]
        }""",
        # specs from nvidia-ctk cdi generate --device-name-strategy=type-index
        "cdi-type-index": """{
            "Runtime": "runc", "Devices": [],
            "DeviceRequests": [{"Driver": "cdi", "Count": 0,
                "DeviceIDs": ["nvidia.com/gpu=gpu2", "nvidia.com/gpu=mig0:1"],
                "Capabilities": null, "Options": null}]
        }""",
        # other vendors' CDI devices next to an NVIDIA one
        "cdi-vendors": """{
            "Runtime": "runc", "Devices": [],
            "DeviceRequests": [{"Driver": "cdi", "Count": 0,
                "DeviceIDs": ["amd.com/gpu=all", "vendor1.com/device=foo", "nvidia.com/gpu=3"],
                "Capabilities": null, "Options": null}]
        }""",
        "cdi-other-vendor": """{
            "Runtime": "runc", "Devices": [],
            "DeviceRequests": [{"Driver": "cdi", "Count": 0,
                "DeviceIDs": ["amd.com/gpu=0", "intel.com/gpu=all"],
                "Capabilities": null, "Options": null}]
        }""",
        # docker run --gpus 1 --device nvidia.com/gpu=2
        "gpus-and-cdi": """{
            "Runtime": "runc", "Devices": [],
            "DeviceRequests": [
                {"Driver": "", "Count": 1, "DeviceIDs": null,
                    "Capabilities": [["gpu"]], "Options": {}},
                {"Driver": "cdi", "Count": 0, "DeviceIDs": ["nvidia.com/gpu=2"],
                    "Capabilities": null, "Options": null}]
        }""",
        # docker run --device /dev/nvidia3 --device /dev/nvidiactl --device /dev/nvidia-uvm
        #   --device /dev/nvidia-uvm-tools --device /dev/nvidia-modeset
        "device-nodes": """{
            "Runtime": "runc", "DeviceRequests": null, "DeviceCgroupRules": null,
            "Devices": [
                {"PathOnHost": "/dev/nvidia3", "PathInContainer": "/dev/nvidia3",
                    "CgroupPermissions": "rwm"},
                {"PathOnHost": "/dev/nvidiactl", "PathInContainer": "/dev/nvidiactl",
                    "CgroupPermissions": "rwm"},
                {"PathOnHost": "/dev/nvidia-uvm", "PathInContainer": "/dev/nvidia-uvm",
                    "CgroupPermissions": "rwm"},
                {"PathOnHost": "/dev/nvidia-uvm-tools", "PathInContainer": "/dev/nvidia-uvm-tools",
                    "CgroupPermissions": "rwm"},
                {"PathOnHost": "/dev/nvidia-modeset", "PathInContainer": "/dev/nvidia-modeset",
                    "CgroupPermissions": "rwm"}]
        }""",
        # docker run --device /dev/nvidia1:/dev/nvidia0 --device /dev/nvidia10
        "device-nodes-renamed": """{
            "Runtime": "runc", "DeviceRequests": null,
            "Devices": [
                {"PathOnHost": "/dev/nvidia1", "PathInContainer": "/dev/nvidia0",
                    "CgroupPermissions": "rwm"},
                {"PathOnHost": "/dev/nvidia10", "PathInContainer": "/dev/nvidia10",
                    "CgroupPermissions": "rwm"}]
        }""",
        # control, MIG capability and DRM nodes only: no GPU of their own
        "device-nodes-no-gpu": """{
            "Runtime": "runc", "DeviceRequests": null,
            "Devices": [
                {"PathOnHost": "/dev/nvidiactl", "PathInContainer": "/dev/nvidiactl",
                    "CgroupPermissions": "rwm"},
                {"PathOnHost": "/dev/nvidia-caps/nvidia-cap21",
                    "PathInContainer": "/dev/nvidia-caps/nvidia-cap21",
                    "CgroupPermissions": "rwm"},
                {"PathOnHost": "/dev/dri/card0", "PathInContainer": "/dev/dri/card0",
                    "CgroupPermissions": "rwm"},
                {"PathOnHost": "/dev/dri/renderD128", "PathInContainer": "/dev/dri/renderD128",
                    "CgroupPermissions": "rwm"}]
        }""",
        # a container created without naming a runtime, on an engine that left Runtime empty
        "runtime-empty": """{
            "Runtime": "", "Devices": [], "DeviceRequests": null
        }""",
        # docker run --runtime runc: recorded, so the engine's default does not matter
        "runtime-runc": """{
            "Runtime": "runc", "Devices": [], "DeviceRequests": null
        }""",
        "runtime-nvidia": """{
            "Runtime": "nvidia", "Devices": [], "DeviceRequests": null
        }""",
    }.items()
}


@pytest.mark.parametrize(
    "ident",
    [
        "0",
        "1",
        "7",
        "15",
        "1023",
        UUID,
        UUID.upper(),
        "GPU-aaa",
        MIG_UUID,
        f"MIG-{UUID}/1/0",
        f"MIG-{UUID}/13/2",
    ],
)
def test_validate_device_id_accepts(ident: str) -> None:
    assert validate_device_id(ident) == ident


@pytest.mark.parametrize(
    ("ident", "problem"),
    [
        ("", "is empty"),
        ("  ", "is empty"),
        ("0,1", "holds several ids"),
        (f"{UUID},{UUID}", "holds several ids"),
        (" 0", "contains spaces"),
        ("GPU 0", "contains spaces"),
        ("01", "is not a device id"),
        ("-1", "is not a device id"),
        ("all", "is not a device id"),
        ("gpu0", "is not a device id"),
        ("gpu-aaa", "is not a device id"),
        ("mig-aaa", "is not a device id"),
        ("GPU-", "is not a device id"),
        ("GPU-xyz", "is not a device id"),
        ("MIG-", "is not a device id"),
        (f"MIG-{UUID}", "is not a device id"),  # the legacy form needs /<gi>/<ci>
        (f"MIG-{UUID}/1", "is not a device id"),
        ("0:1", "is not a device id"),
        ("/dev/nvidia0", "is not a device id"),
        ("GPU-" + "a" * 200, "is not a device id"),
        ("0\n", "contains spaces"),
    ],
)
def test_validate_device_id_rejects(ident: str, problem: str) -> None:
    with pytest.raises(DeviceRequestError) as info:
        validate_device_id(ident, option="gpu_device_ids[0]")
    message = str(info.value)
    assert message.startswith("gpu_device_ids[0]: ")
    assert problem in message
    assert "GPU-" in message and "MIG-" in message  # says what would be valid
    assert len(message) < 300


def test_validate_device_id_rejects_non_strings() -> None:
    with pytest.raises(DeviceRequestError, match="must be a string, not int"):
        validate_device_id(0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("compute,utility", ("compute", "utility")),
        ("compute, utility,", ("compute", "utility")),
        ("COMPUTE", ("compute",)),
        (["utility", "compute", "utility"], ("utility", "compute")),
        (
            ("graphics", "display", "video", "compat32"),
            ("graphics", "display", "video", "compat32"),
        ),
        (list(VALID_CAPABILITIES), VALID_CAPABILITIES),
    ],
)
def test_parse_capabilities(value: Any, expected: tuple[str, ...]) -> None:
    assert parse_capabilities(value, option="gpu_capabilities") == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "at least one"),
        ([], "at least one"),
        (" , ", "at least one"),
        ("compute,gpu", "unknown GPU capability 'gpu'"),
        (["all"], "unknown GPU capability 'all'"),
        ([1], "must be a string"),
    ],
)
def test_parse_capabilities_rejects(value: Any, problem: str) -> None:
    with pytest.raises(DeviceRequestError) as info:
        parse_capabilities(value, option="gpu_capabilities")
    assert str(info.value).startswith("gpu_capabilities: ")
    assert problem in str(info.value)
    assert "compute, compat32, graphics, utility, video, display" in str(info.value)


def test_default_capabilities() -> None:
    assert DEFAULT_CAPABILITIES == ("compute", "utility")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, None),
        ({"count": 0}, None),
        ({"device_ids": []}, None),
        ({"device_ids": ""}, None),
        (
            {"count": 2},
            {
                "driver": "nvidia",
                "count": 2,
                "device_ids": [],
                "capabilities": [["compute", "utility"]],
            },
        ),
        (
            {"all_gpus": True},
            {
                "driver": "nvidia",
                "count": -1,
                "device_ids": [],
                "capabilities": [["compute", "utility"]],
            },
        ),
        (
            {"device_ids": ["1", UUID]},
            {
                "driver": "nvidia",
                "count": 0,
                "device_ids": ["1", UUID],
                "capabilities": [["compute", "utility"]],
            },
        ),
        (
            {"device_ids": "0, 3"},
            {
                "driver": "nvidia",
                "count": 0,
                "device_ids": ["0", "3"],
                "capabilities": [["compute", "utility"]],
            },
        ),
        (
            {"device_ids": (MIG_UUID,), "capabilities": "compute,utility,video"},
            {
                "driver": "nvidia",
                "count": 0,
                "device_ids": [MIG_UUID],
                "capabilities": [["compute", "utility", "video"]],
            },
        ),
    ],
)
def test_build_device_request(kwargs: dict[str, Any], expected: dict[str, Any] | None) -> None:
    assert build_device_request(**kwargs) == expected


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"count": 1, "device_ids": ["0"]}, "give only one of a GPU count, device ids"),
        ({"count": 0, "device_ids": ["0"]}, "give only one of a GPU count, device ids"),
        ({"count": 1, "all_gpus": True}, "give only one of a GPU count, all GPUs"),
        ({"device_ids": ["0"], "all_gpus": True}, "give only one of device ids, all GPUs"),
        ({"count": -1}, "whole number ≥ 0"),
        ({"count": True}, "whole number ≥ 0"),
        ({"count": 1.5}, "whole number ≥ 0"),
        ({"device_ids": ["0", "0"]}, "'0' is listed twice"),
        ({"device_ids": ["0,1"]}, "device_ids[0]: '0,1' holds several ids"),
        ({"device_ids": ["0", "nope"]}, "device_ids[1]: 'nope' is not a device id"),
        ({"count": 1, "capabilities": ["gpu"]}, "unknown GPU capability"),
    ],
)
def test_build_device_request_rejects(kwargs: dict[str, Any], problem: str) -> None:
    with pytest.raises(DeviceRequestError) as info:
        build_device_request(option="GPUDockerSpawner.gpu_count", **kwargs)
    assert str(info.value).startswith("GPUDockerSpawner.gpu_count")
    assert problem in str(info.value)


def _as_inspected(request: dict[str, Any]) -> dict[str, Any]:
    """What docker-py sends and ``docker inspect`` shows for our snake_case kwargs."""
    return {
        "Driver": request["driver"],
        "Count": request["count"],
        "DeviceIDs": request["device_ids"] or None,
        "Capabilities": request["capabilities"],
        "Options": {},
    }


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"count": 2}, ClaimedGPUs(frozenset({"0", "1"}))),
        ({"all_gpus": True}, ClaimedGPUs(all=True)),
        ({"device_ids": ["3", UUID]}, ClaimedGPUs(frozenset({"3", UUID}))),
    ],
)
def test_claimed_gpus_reads_back_what_we_request(
    kwargs: dict[str, Any], expected: ClaimedGPUs
) -> None:
    request = build_device_request(**kwargs)
    assert request is not None
    assert claimed_gpus({"DeviceRequests": [_as_inspected(request)]}) == expected


def _req(**fields: Any) -> dict[str, Any]:
    return {
        "Driver": "",
        "Count": 0,
        "DeviceIDs": None,
        "Capabilities": None,
        "Options": {},
    } | fields


@pytest.mark.parametrize(
    ("host_config", "env", "expected"),
    [
        # no GPU at all
        ({}, None, ClaimedGPUs()),
        (
            {"DeviceRequests": None, "Runtime": "runc"},
            ["NVIDIA_VISIBLE_DEVICES=all"],
            ClaimedGPUs(),
        ),
        # docker run --gpus all / --gpus 2 / --gpus '"device=1,2"'
        ({"DeviceRequests": [_req(Count=-1, Capabilities=[["gpu"]])]}, None, ClaimedGPUs(all=True)),
        (
            {"DeviceRequests": [_req(Count=2, Capabilities=[["gpu"]])]},
            None,
            ClaimedGPUs(frozenset({"0", "1"})),
        ),
        (
            {"DeviceRequests": [_req(DeviceIDs=["1", "2"], Capabilities=[["gpu"]])]},
            None,
            ClaimedGPUs(frozenset({"1", "2"})),
        ),
        # ids win over a count, comma-joined ids are split
        (
            {"DeviceRequests": [_req(Driver="nvidia", DeviceIDs=["0,3"], Count=0)]},
            None,
            ClaimedGPUs(frozenset({"0", "3"})),
        ),
        # driver named nvidia, capabilities of the nvidia driver only
        ({"DeviceRequests": [_req(Driver="NVIDIA", Count=1)]}, None, ClaimedGPUs(frozenset({"0"}))),
        (
            {"DeviceRequests": [_req(Count=1, Capabilities=[["compute", "utility"]])]},
            None,
            ClaimedGPUs(frozenset({"0"})),
        ),
        # capability sets are alternatives: one nvidia set is enough
        (
            {"DeviceRequests": [_req(Count=1, Capabilities=[["tpu"], ["gpu", "nvidia"]])]},
            None,
            ClaimedGPUs(frozenset({"0"})),
        ),
        # requests for other drivers are not GPUs of ours
        (
            {"DeviceRequests": [_req(Driver="amd", Count=-1, Capabilities=[["compute"]])]},
            None,
            ClaimedGPUs(),
        ),
        ({"DeviceRequests": [_req(Count=-1, Capabilities=[["tpu"]])]}, None, ClaimedGPUs()),
        ({"DeviceRequests": [_req(Count=-1, Capabilities=[[]])]}, None, ClaimedGPUs()),
        ({"DeviceRequests": [_req(Count=0, Capabilities=[["gpu"]])]}, None, ClaimedGPUs()),
        # several requests add up
        (
            {
                "DeviceRequests": [
                    _req(Driver="nvidia", DeviceIDs=["2"]),
                    _req(Driver="nvidia", DeviceIDs=[MIG_UUID]),
                ]
            },
            None,
            ClaimedGPUs(frozenset({"2", MIG_UUID})),
        ),
        # docker-py's snake_case spelling
        (
            {"DeviceRequests": [{"driver": "nvidia", "count": 0, "device_ids": ["5"]}]},
            None,
            ClaimedGPUs(frozenset({"5"})),
        ),
        # --runtime nvidia with NVIDIA_VISIBLE_DEVICES
        ({"Runtime": "nvidia"}, ["NVIDIA_VISIBLE_DEVICES=0,1"], ClaimedGPUs(frozenset({"0", "1"}))),
        ({"Runtime": "nvidia"}, ["NVIDIA_VISIBLE_DEVICES=all"], ClaimedGPUs(all=True)),
        ({"Runtime": "nvidia"}, ["NVIDIA_VISIBLE_DEVICES=none"], ClaimedGPUs()),
        ({"Runtime": "nvidia"}, ["NVIDIA_VISIBLE_DEVICES=void"], ClaimedGPUs()),
        ({"Runtime": "nvidia"}, ["NVIDIA_VISIBLE_DEVICES="], ClaimedGPUs()),
        ({"Runtime": "nvidia"}, ["PATH=/usr/bin"], ClaimedGPUs()),
        # the last definition wins, as in the container's environment
        (
            {"Runtime": "nvidia"},
            ["NVIDIA_VISIBLE_DEVICES=all", f"NVIDIA_VISIBLE_DEVICES={UUID}"],
            ClaimedGPUs(frozenset({UUID})),
        ),
        # a legacy CUDA image without NVIDIA_VISIBLE_DEVICES gets every GPU under that runtime
        ({"Runtime": "nvidia"}, ["CUDA_VERSION=10.0"], ClaimedGPUs(all=True)),
        (
            {"Runtime": "nvidia"},
            ["CUDA_VERSION=12.4", "NVIDIA_REQUIRE_CUDA=cuda>=12.4"],
            ClaimedGPUs(),
        ),
        # the environment only matters with the nvidia runtime
        ({"Runtime": "runc"}, ["NVIDIA_VISIBLE_DEVICES=0"], ClaimedGPUs()),
        # a device request and the runtime together
        (
            {"Runtime": "nvidia", "DeviceRequests": [_req(Driver="nvidia", DeviceIDs=["1"])]},
            ["NVIDIA_VISIBLE_DEVICES=2"],
            ClaimedGPUs(frozenset({"1", "2"})),
        ),
    ],
)
def test_claimed_gpus(
    host_config: dict[str, Any], env: list[str] | None, expected: ClaimedGPUs
) -> None:
    assert claimed_gpus(host_config, env) == expected


@pytest.mark.parametrize(
    ("document", "env", "default_runtime", "expected"),
    [
        # CDI device requests
        ("cdi-index", None, "runc", ClaimedGPUs(frozenset({"0"}))),
        ("cdi-uuids", None, "runc", ClaimedGPUs(frozenset({UUID, MIG_UUID}))),
        ("cdi-mig-index", None, "runc", ClaimedGPUs(frozenset({"0:1"}))),
        ("cdi-mig-kind", None, "runc", ClaimedGPUs(frozenset({"1:0"}))),
        ("cdi-all", None, "runc", ClaimedGPUs(all=True)),
        ("cdi-type-index", None, "runc", ClaimedGPUs(frozenset({"2", "0:1"}))),
        ("cdi-vendors", None, "runc", ClaimedGPUs(frozenset({"3"}))),
        ("cdi-other-vendor", None, "runc", ClaimedGPUs()),
        ("gpus-and-cdi", None, "runc", ClaimedGPUs(frozenset({"0", "2"}))),
        # GPU device nodes; the host side counts
        ("device-nodes", None, "runc", ClaimedGPUs(frozenset({"3"}))),
        ("device-nodes-renamed", None, "runc", ClaimedGPUs(frozenset({"1", "10"}))),
        ("device-nodes-no-gpu", None, "runc", ClaimedGPUs()),
        # the engine's default runtime applies when the container names none
        ("runtime-empty", ["NVIDIA_VISIBLE_DEVICES=1"], "nvidia", ClaimedGPUs(frozenset({"1"}))),
        ("runtime-empty", ["NVIDIA_VISIBLE_DEVICES=1"], "runc", ClaimedGPUs()),
        ("runtime-empty", ["CUDA_VERSION=10.0"], "nvidia", ClaimedGPUs(all=True)),
        ("runtime-empty", ["NVIDIA_VISIBLE_DEVICES=void"], "nvidia", ClaimedGPUs()),
        ("runtime-runc", ["NVIDIA_VISIBLE_DEVICES=all"], "nvidia", ClaimedGPUs()),
        ("runtime-nvidia", ["NVIDIA_VISIBLE_DEVICES=2"], "runc", ClaimedGPUs(frozenset({"2"}))),
        # the nvidia runtime in CDI mode takes qualified names and MIG ids
        (
            "runtime-nvidia",
            [f"NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=0,nvidia.com/gpu={UUID},amd.com/gpu=1"],
            "runc",
            ClaimedGPUs(frozenset({"0", UUID})),
        ),
        (
            "runtime-nvidia",
            ["NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=all"],
            "runc",
            ClaimedGPUs(all=True),
        ),
        (
            "runtime-nvidia",
            ["NVIDIA_VISIBLE_DEVICES=0:1,1"],
            "runc",
            ClaimedGPUs(frozenset({"0:1", "1"})),
        ),
    ],
)
def test_claimed_gpus_from_inspected_documents(
    document: str, env: list[str] | None, default_runtime: str, expected: ClaimedGPUs
) -> None:
    host_config = INSPECTED[document]
    assert claimed_gpus(host_config, env, default_runtime=default_runtime) == expected


@pytest.mark.parametrize(
    ("host_config", "expected"),
    [
        # the nvidia driver hands DeviceIDs on as NVIDIA_VISIBLE_DEVICES, where "all" is all
        ({"DeviceRequests": [_req(Driver="nvidia", DeviceIDs=["all"])]}, ClaimedGPUs(all=True)),
        ({"DeviceRequests": [_req(Driver="nvidia", DeviceIDs=["none"])]}, ClaimedGPUs()),
        # every GPU covers the named ones: one spelling for one claim
        (
            {
                "DeviceRequests": [
                    _req(Count=-1, Capabilities=[["gpu"]]),
                    _req(Driver="nvidia", DeviceIDs=["1"]),
                ]
            },
            ClaimedGPUs(all=True),
        ),
        # the CDI driver resolves qualified names only; the driver name is not case-sensitive
        ({"DeviceRequests": [_req(Driver="cdi", DeviceIDs=["0", "all"])]}, ClaimedGPUs()),
        (
            {"DeviceRequests": [_req(Driver="CDI", DeviceIDs=["nvidia.com/gpu=1"])]},
            ClaimedGPUs(frozenset({"1"})),
        ),
        # a CDI request's Count means nothing
        ({"DeviceRequests": [_req(Driver="cdi", Count=-1)]}, ClaimedGPUs()),
        # docker-py's snake_case spelling
        (
            {"DeviceRequests": [{"driver": "cdi", "count": 0, "device_ids": ["nvidia.com/gpu=4"]}]},
            ClaimedGPUs(frozenset({"4"})),
        ),
        # CDI kinds are exact; an empty device name is no device
        (
            {
                "DeviceRequests": [
                    _req(Driver="cdi", DeviceIDs=["nvidia.com/gpus=0", "nvidia.com/gpu="])
                ]
            },
            ClaimedGPUs(),
        ),
        # device nodes: only /dev/nvidia<N>, without leading zeros; docker-py's string form
        (
            {"Devices": [{"PathOnHost": "/dev/nvidia01"}, {"PathOnHost": "/dev/nvidia"}, {}]},
            ClaimedGPUs(),
        ),
        (
            {"Devices": ["/dev/nvidia2:/dev/nvidia2:rwm", "/dev/nvidiactl"]},
            ClaimedGPUs(frozenset({"2"})),
        ),
        ({"Devices": None, "DeviceRequests": None}, ClaimedGPUs()),
    ],
)
def test_claimed_gpus_every_way_to_hold_a_gpu(
    host_config: dict[str, Any], expected: ClaimedGPUs
) -> None:
    assert claimed_gpus(host_config) == expected


@pytest.mark.parametrize(
    ("claim", "truthy"),
    [(ClaimedGPUs(), False), (ClaimedGPUs(frozenset({"0"})), True), (ClaimedGPUs(all=True), True)],
)
def test_claimed_gpus_truthiness(claim: ClaimedGPUs, truthy: bool) -> None:
    assert bool(claim) is truthy


@pytest.mark.parametrize(
    ("mechanism", "ids", "expected"),
    [
        ("device-requests", ["0"], {}),
        ("nvidia-runtime", ["0", "2"], {"runtime": "nvidia"}),
        (
            "cdi",
            ["0", "GPU-5f3c"],
            {
                "device_requests": [
                    {"driver": "cdi", "device_ids": ["nvidia.com/gpu=0", "nvidia.com/gpu=GPU-5f3c"]}
                ]
            },
        ),
        ("cdi", [], {}),
        ("nvidia-runtime", [], {}),
    ],
)
def test_mechanism_host_config(mechanism: str, ids: list[str], expected: dict[str, Any]) -> None:
    assert mechanism_host_config(mechanism, ids) == expected


@pytest.mark.parametrize("mechanism", ["device-requests", "nvidia-runtime", "cdi"])
def test_each_mechanism_is_read_back_as_the_same_claim(mechanism: str) -> None:
    """What a server is given by each mechanism, as ``docker inspect`` shows it, claims
    exactly its ids, even from an image whose own environment says every GPU."""
    ids = ["1", "3"]
    host_config: dict[str, Any] = {}
    if mechanism == "device-requests":
        host_config["DeviceRequests"] = [
            {"Driver": "", "Count": 0, "DeviceIDs": ids, "Capabilities": [["gpu"]]}
        ]
    for key, value in mechanism_host_config(mechanism, ids).items():
        if key == "runtime":
            host_config["Runtime"] = value
        else:
            host_config["DeviceRequests"] = [
                {"Driver": r["driver"], "DeviceIDs": r["device_ids"]} for r in value
            ]
    env = ["NVIDIA_VISIBLE_DEVICES=all", "PATH=/usr/bin", "NVIDIA_VISIBLE_DEVICES=1,3"]
    assert claimed_gpus(host_config, env) == ClaimedGPUs(ids=frozenset(ids))


def test_an_unknown_mechanism_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown GPU mechanism"):
        mechanism_host_config("magic", ["0"])
