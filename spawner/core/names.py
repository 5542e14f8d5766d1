"""Docker object names from user and server names: safe, unique and bounded.

User names come from the authenticator and may hold anything JupyterHub accepts: capitals,
dots, blanks, ``--``, unicode, 255 characters. :func:`escape_name` turns one into a name part
that is safe in container names, volume names and host folders:

- only ``a-z``, ``0-9`` and ``-``, and ``-`` only as the start of an escape ``-hh`` (one
  UTF-8 byte in lower-case hex), as DockerSpawner's default ("safe") escaping does, so
  names of existing servers and home volumes do not change. One difference: DockerSpawner
  writes bytes below 0x10 with one digit, so ``"\x01a"`` and ``"\x1a"`` share its name;
  here every escape has two digits;
- ``--`` never occurs, so ``{prefix}-{username}--{servername}`` cannot be produced by two
  different user/server pairs (user ``a--b`` is ``a-2d-2db``, user ``a`` with server ``b``
  is ``a--b``);
- at most :data:`MAX_NAME_PART` characters: a longer escape is cut at an escape boundary and
  ends in ``-x`` and 12 hex digits of the name's SHA-256. ``x`` is not a hex digit, so a
  shortened name never equals an unshortened one, and the whole name stays a DNS label.

Nothing here imports Docker.
"""

from __future__ import annotations

import hashlib
import string

#: Longest escaped name part: one DNS label. Volume names (255 bytes on disk) and container
#: names built from two parts and a prefix stay far below Docker's limits.
MAX_NAME_PART = 63
_SAFE = frozenset(string.ascii_lowercase + string.digits)
_DIGEST_CHARS = 12


def escape_name(text: str, max_length: int = MAX_NAME_PART) -> str:
    """``text`` as a Docker-safe name part; injective, never containing ``--``."""
    if max_length < 2 + _DIGEST_CHARS + 3:
        raise ValueError(f"max_length must be at least {2 + _DIGEST_CHARS + 3}")
    parts = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        parts.append(char if char in _SAFE else f"-{byte:02x}")
    escaped = "".join(parts)
    if len(escaped) <= max_length:
        return escaped
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:_DIGEST_CHARS]
    keep = max_length - 2 - _DIGEST_CHARS
    head = escaped[:keep]
    cut = head.rfind("-")
    if cut > keep - 3:  # the last escape was cut in half
        head = head[:cut]
    return f"{head}-x{digest}"


__all__ = ["MAX_NAME_PART", "escape_name"]
