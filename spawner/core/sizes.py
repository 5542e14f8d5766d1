"""Memory and shared-memory sizes: parse what an admin writes, format what a user reads.

Sizes follow Docker's own spelling (``docker run --memory 2g --shm-size 512m``): a number of
bytes, or a number with a unit ``b``, ``k``, ``m``, ``g``, ``t`` or ``p``, case-insensitive,
optionally followed by ``b`` or ``ib`` (``2gb``, ``2GiB``). Like Docker, every unit is a binary
multiple: ``1g`` is 1024³ bytes, ``2gb`` is the same as ``2GiB``.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

KiB = 1024
MiB = 1024**2
GiB = 1024**3
TiB = 1024**4
PiB = 1024**5

#: The largest size accepted anywhere (1 PiB): anything above is a typo, not a machine.
MAX_SIZE = PiB
#: The smallest ``/dev/shm`` that :func:`derive_shm_size` derives from a memory limit.
MIN_DERIVED_SHM = 64 * MiB

_UNITS = {"": 1, "b": 1, "k": KiB, "m": MiB, "g": GiB, "t": TiB, "p": PiB}
_SIZE_RE = re.compile(
    r"(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?:(?P<unit>[kmgtp])(?:i?b)?|(?P<bytes>b))?",
    re.IGNORECASE | re.ASCII,
)
_HINT = "use a number of bytes or a size like '2g' or '512m'"
_ECHO_LIMIT = 64


class SizeError(ValueError):
    """A size option that is not a usable number of bytes; the message names the option."""


def _shown(value: object) -> str:
    text = str(value)
    if len(text) > _ECHO_LIMIT:
        text = text[:_ECHO_LIMIT] + "…"
    return "".join(c if c.isprintable() else "?" for c in text)


def _fail(option: str, reason: str, value: object) -> SizeError:
    return SizeError(f"{option}: {reason}, got '{_shown(value)}'; {_HINT}")


def parse_size(value: str | int | float, *, option: str) -> int:
    """Return ``value`` as a whole number of bytes (fractions of a byte are dropped).

    Accepts an int (bytes), a float (bytes), a numeric string (``"1048576"``) or a Docker-style
    size (``"512m"``, ``"1.5g"``, ``"2GiB"``, ``"2gb"``, ``"64k"``, ``"1t"``, ``"100b"``).
    Raises :class:`SizeError` naming ``option`` for booleans, zero, negative, NaN/infinite,
    empty or unreadable values and for anything above 1 PiB.
    """
    if isinstance(value, bool):
        raise _fail(option, "must be a size, not true/false", value)
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _fail(option, "must be a finite size", value)
        amount = Decimal(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise _fail(option, "must not be empty", value)
        if text.startswith("-"):
            raise _fail(option, "must be positive", value)
        match = _SIZE_RE.fullmatch(text)
        if match is None:
            raise _fail(option, "is not a size", value)
        unit = (match["unit"] or match["bytes"] or "").lower()
        try:
            amount = Decimal(match["number"]) * _UNITS[unit]
        except InvalidOperation:  # pragma: no cover - the pattern only lets digits through
            raise _fail(option, "is not a size", value) from None
    else:
        raise _fail(option, f"must be a number or a string, not {type(value).__name__}", value)
    if amount < 0:
        raise _fail(option, "must be positive", value)
    if amount > MAX_SIZE:
        raise _fail(option, "is larger than 1 PiB", value)
    size = int(amount)  # rounds towards zero: "1.5k" is 1536, 0.5 bytes is 0
    if size == 0:
        raise _fail(option, "must be at least 1 byte", value)
    return size


def format_size(n: int) -> str:
    """Format a byte count for people: ``2147483648`` → ``"2 GiB"``, ``1610612736`` → ``"1.5 GiB"``.

    Uses the largest binary unit that keeps the number at least 1 and at most one decimal.
    """
    if n < 0:
        return "-" + format_size(-n)
    for unit, factor in (("PiB", PiB), ("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= factor:
            number = f"{n / factor:.1f}".removesuffix(".0")
            return f"{number} {unit}"
    return f"{n} B"


def derive_shm_size(*, explicit: int | None, mem_limit: int | None, default: int) -> int:
    """The size of ``/dev/shm`` for a container, in bytes.

    The rule, in order:

    1. an explicit size (the profile's or the admin's ``shm_size``) always wins;
    2. else, with a memory limit, half of that limit, rounded down to a whole MiB and at
       least 64 MiB;
    3. else ``default`` (the spawner's default is 1 GiB).

    Why: Docker gives a container only 64 MiB of ``/dev/shm``, and PyTorch ``DataLoader``
    workers pass every batch to the training process through ``/dev/shm``, so the default
    makes ``num_workers > 0`` die with "bus error" / "insufficient shared memory". Pages in
    ``/dev/shm`` are charged to the container's memory cgroup, though, so a ``/dev/shm`` larger
    than about half the memory limit gives the user no more room: it only moves the point where
    the OOM killer ends the notebook. Half leaves the other half for the processes themselves.
    """
    if explicit is not None:
        return explicit
    if mem_limit is not None:
        half = (mem_limit // 2) // MiB * MiB
        return max(half, MIN_DERIVED_SHM)
    return default


__all__ = [
    "MAX_SIZE",
    "GiB",
    "KiB",
    "MiB",
    "PiB",
    "SizeError",
    "TiB",
    "derive_shm_size",
    "format_size",
    "parse_size",
]
