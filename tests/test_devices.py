from typing import Any

import pytest

from spawner.devices import (
    DEFAULT_CAPABILITIES,
    VALID_CAPABILITIES,
    ClaimedGPUs,
    DeviceRequestError,
    build_device_request,
    claimed_gpus,
    parse_capabilities,
    validate_device_id,
)

UUID = "GPU-8e5f2b1c-3d4a-4b6c-9e8f-0a1b2c3d4e5f"
MIG_UUID = "MIG-4f1d2c3b-5a6e-5f7d-8c9b-0a1b2c3d4e5f"


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
    ("claim", "truthy"),
    [(ClaimedGPUs(), False), (ClaimedGPUs(frozenset({"0"})), True), (ClaimedGPUs(all=True), True)],
)
def test_claimed_gpus_truthiness(claim: ClaimedGPUs, truthy: bool) -> None:
    assert bool(claim) is truthy
