import math

import pytest

from spawner.core.sizes import (
    GiB,
    KiB,
    MiB,
    PiB,
    SizeError,
    TiB,
    derive_shm_size,
    format_size,
    parse_size,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 1),
        (1048576, MiB),
        (2.0 * GiB, 2 * GiB),
        (1536.9, 1536),
        ("1048576", MiB),
        (" 1048576 ", MiB),
        ("100b", 100),
        ("100B", 100),
        ("64k", 64 * KiB),
        ("64kb", 64 * KiB),
        ("64KiB", 64 * KiB),
        ("512m", 512 * MiB),
        ("512M", 512 * MiB),
        ("512 MiB", 512 * MiB),
        ("2g", 2 * GiB),
        ("2G", 2 * GiB),
        ("2gb", 2 * GiB),
        ("2GB", 2 * GiB),
        ("2GiB", 2 * GiB),
        ("2gib", 2 * GiB),
        ("1.5g", 3 * GiB // 2),
        (".5g", GiB // 2),
        ("1t", TiB),
        ("1p", PiB),
        (PiB, PiB),
    ],
)
def test_parse_size_accepts(value: str | int | float, expected: int) -> None:
    assert parse_size(value, option="mem_limit") == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (True, "not true/false"),
        (False, "not true/false"),
        (0, "at least 1 byte"),
        ("0", "at least 1 byte"),
        ("0g", "at least 1 byte"),
        (0.4, "at least 1 byte"),
        (-1, "must be positive"),
        ("-2g", "must be positive"),
        (-0.5, "must be positive"),
        (math.nan, "finite"),
        (math.inf, "finite"),
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("lots", "is not a size"),
        ("2 gigs", "is not a size"),
        ("2x", "is not a size"),
        ("1e9", "is not a size"),
        ("1_000", "is not a size"),
        ("٣g", "is not a size"),  # non-ASCII digits
        ("2ib", "is not a size"),
        ("2gg", "is not a size"),
        ("nan", "is not a size"),
        ("inf", "is not a size"),
        ("1.5p", "larger than 1 PiB"),
        ("2p", "larger than 1 PiB"),
        (PiB + 1, "larger than 1 PiB"),
        (1e300, "larger than 1 PiB"),
        (None, "not NoneType"),
        ([1], "not list"),
    ],
)
def test_parse_size_rejects(value: object, reason: str) -> None:
    with pytest.raises(SizeError) as info:
        parse_size(value, option="profiles[0] ('cpu'): field 'mem_limit'")  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith("profiles[0] ('cpu'): field 'mem_limit': ")
    assert reason in message
    assert message.endswith("; use a number of bytes or a size like '2g' or '512m'")
    assert "got '" in message


def test_parse_size_error_echoes_at_most_64_characters() -> None:
    with pytest.raises(SizeError) as info:
        parse_size("x" * 1000 + "\n", option="shm_size")
    assert "x" * 65 not in str(info.value)
    assert "x" * 64 + "…" in str(info.value)


def test_size_error_is_a_value_error() -> None:
    assert issubclass(SizeError, ValueError)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (KiB, "1 KiB"),
        (64 * KiB, "64 KiB"),
        (536870912, "512 MiB"),
        (2147483648, "2 GiB"),
        (3 * GiB // 2, "1.5 GiB"),
        (80 * GiB, "80 GiB"),
        (15360 * MiB, "15 GiB"),
        (TiB, "1 TiB"),
        (PiB, "1 PiB"),
        (-2 * GiB, "-2 GiB"),
    ],
)
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text


@pytest.mark.parametrize("text", ["512m", "2g", "1.5g", "80g", "64k", "1t"])
def test_format_then_parse_round_trips(text: str) -> None:
    n = parse_size(text, option="x")
    assert parse_size(format_size(n).replace(" ", ""), option="x") == n


@pytest.mark.parametrize(
    ("explicit", "mem_limit", "default", "expected"),
    [
        # explicit wins, whatever the limit
        (2 * GiB, 8 * GiB, GiB, 2 * GiB),
        (8 * GiB, 4 * GiB, GiB, 8 * GiB),
        (64 * MiB, None, GiB, 64 * MiB),
        # half the memory limit
        (None, 8 * GiB, GiB, 4 * GiB),
        (None, 3 * GiB, GiB, 3 * GiB // 2),
        (None, 1000 * MiB + 12345, GiB, 500 * MiB),  # rounded down to a whole MiB
        (None, 301 * MiB, GiB, 150 * MiB),
        (None, 128 * MiB, GiB, 64 * MiB),
        (None, 100 * MiB, GiB, 64 * MiB),  # at least 64 MiB
        (None, 1, GiB, 64 * MiB),
        # no limit: the default
        (None, None, GiB, GiB),
        (None, None, 256 * MiB, 256 * MiB),
    ],
)
def test_derive_shm_size(
    explicit: int | None, mem_limit: int | None, default: int, expected: int
) -> None:
    assert derive_shm_size(explicit=explicit, mem_limit=mem_limit, default=default) == expected


def test_derive_shm_size_documents_the_rule() -> None:
    doc = derive_shm_size.__doc__ or ""
    for words in ("DataLoader", "/dev/shm", "cgroup", "half", "64 MiB", "1 GiB"):
        assert words in doc
