"""``python -m spawner <command>``: operator commands of GPU workspaces.

- ``doctor``: preflight checks (Docker, NVIDIA driver, GPUs, images, network, profiles).
- ``netguard``: keeps the notebook network's isolation rules installed (spawner/hub/netguard.py).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: python -m spawner doctor [-f jupyterhub_config.py] [--json]
       python -m spawner netguard [--once | --remove]

commands:
  doctor   check Docker, the NVIDIA driver, the GPUs, images, network and profiles
           the way the hub will use them; exits 1 when something needs fixing
  netguard keep the notebook network's isolation rules installed (needs NET_ADMIN)"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "doctor":
        from spawner.hub.doctor import run

        return run(rest)
    if command == "netguard":
        from spawner.hub.netguard import main as netguard

        return netguard(rest)
    print(f"python -m spawner: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
