"""The network guard: keeps the notebook network's policy (``spawner.egress``) installed.

``python -m spawner netguard`` runs next to the hub with the host's network stack and
``NET_ADMIN`` (the ``netguard`` service of docker-compose.yaml; on a host install, a root
service). Every ``interval`` seconds it reads the notebook network from Docker (its bridge,
gateway and the hub containers on it, labelled ``io.gpu-workspaces.role=hub``), builds the
rules and, when what is installed differs, replaces our two chains in one
``iptables-restore`` transaction and puts the jumps from ``DOCKER-USER`` and ``INPUT`` back
at the top. When Docker does not answer, the installed rules stay as they are: the policy
fails closed. Stopping the guard leaves the rules in place; ``--remove`` takes them out.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import docker
from traitlets import Bool, Float, Int, List, TraitError, Unicode, validate
from traitlets.config import Configurable

from spawner.core import egress
from spawner.core.errors import ConfigError
from spawner.hub.config import env_bool, env_list, env_number, env_str

HUB_ROLE_LABEL = "io.gpu-workspaces.role"
log = logging.getLogger("gpuws.netguard")


class NetworkGuard(Configurable):
    """Installs and keeps the notebook network's policy (see ``spawner.egress``)."""

    network_name = Unicode(
        "gpu-workspaces", help="The Docker network the notebooks run on (GPUWS_NETWORK)."
    ).tag(config=True)
    hub_port = Int(
        8081, help="Port of the hub's API, the one port of the hub notebooks reach."
    ).tag(config=True)
    hub_on_host = Bool(
        False,
        help="""The hub runs on the Docker host and listens on the network's gateway (not in a
        container on the network): notebooks may reach the gateway on ``hub_port`` only.""",
    ).tag(config=True)
    allow = List(
        Unicode(),
        help="""Destinations notebooks may reach although they are private: ``10.0.5.0/24``
        (every port) or ``10.1.2.3:5432`` (one TCP port) (GPUWS_EGRESS_ALLOW).""",
    ).tag(config=True)
    internet = Bool(
        True, help="Notebooks may open connections to public addresses (GPUWS_EGRESS_INTERNET)."
    ).tag(config=True)
    interval = Float(2.0, help="Seconds between two checks of the installed rules.").tag(
        config=True
    )
    resolv_conf = Unicode(
        "/etc/resolv.conf",
        help="""The host's resolver list: containers' DNS queries go to these servers, so they
        are reachable on port 53 even when they are private addresses.""",
    ).tag(config=True)

    @validate("allow")
    def _valid_allow(self, proposal: dict[str, Any]) -> list[str]:
        try:
            egress.parse_allow(",".join(proposal["value"]), "NetworkGuard.allow")
        except egress.PolicyError as e:
            raise TraitError(str(e)) from None
        return list(proposal["value"])

    @validate("hub_port")
    def _valid_port(self, proposal: dict[str, Any]) -> int:
        if not 0 < proposal["value"] < 65536:
            raise TraitError(f"NetworkGuard.hub_port: {proposal['value']} is not a TCP port")
        return int(proposal["value"])

    @validate("interval")
    def _valid_interval(self, proposal: dict[str, Any]) -> float:
        if proposal["value"] <= 0:
            raise TraitError("NetworkGuard.interval must be more than 0 seconds")
        return float(proposal["value"])

    def __init__(self, client: docker.DockerClient | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._client = client
        self._iptables: str | None = None
        self._bridges: set[str] = set()

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = docker.from_env(timeout=10)
        return self._client

    # -- what the rules depend on ------------------------------------------------------
    def policy(self) -> egress.Policy:
        """The policy of the notebook network as Docker describes it now."""
        network = self.client.networks.get(self.network_name)
        attrs = network.attrs
        if attrs.get("Driver") != "bridge":
            raise egress.PolicyError(
                f"network {self.network_name!r} uses the {attrs.get('Driver')!r} driver; the "
                "guard protects bridge networks (Swarm overlays: see SECURITY.md)"
            )
        if attrs.get("EnableIPv6"):
            raise egress.PolicyError(
                f"network {self.network_name!r} has IPv6 on; the guard's rules are IPv4 only, "
                "so notebooks would bypass them over IPv6"
            )
        options = attrs.get("Options") or {}
        bridge = options.get("com.docker.network.bridge.name") or f"br-{network.id[:12]}"
        gateways = [c.get("Gateway") for c in (attrs.get("IPAM") or {}).get("Config") or []]
        gateway = next((g for g in gateways if g), None)
        hubs = self.client.containers.list(
            filters={"label": f"{HUB_ROLE_LABEL}=hub", "network": self.network_name}
        )
        hub_addresses = []
        for hub in hubs:
            settings = (hub.attrs.get("NetworkSettings") or {}).get("Networks") or {}
            address = (settings.get(self.network_name) or {}).get("IPAddress")
            if address:
                hub_addresses.append(address)
        return egress.Policy(
            bridge=bridge,
            hub_addresses=tuple(sorted(hub_addresses)),
            hub_port=self.hub_port,
            hub_gateway=gateway if self.hub_on_host else None,
            dns_servers=self._dns_servers(),
            allow=egress.parse_allow(",".join(self.allow), "GPUWS_EGRESS_ALLOW"),
            internet=self.internet,
        )

    def _dns_servers(self) -> tuple[str, ...]:
        try:
            return egress.nameservers(Path(self.resolv_conf).read_text())
        except OSError:
            return ()

    # -- iptables ----------------------------------------------------------------------
    @property
    def iptables(self) -> str:
        """The iptables backend (nft or legacy) that holds Docker's chains on this host: the
        guard's image and the host may default to different ones."""
        if self._iptables is None:
            self._iptables = "iptables"
            for backend in ("iptables-nft", "iptables-legacy"):
                try:
                    saved = _run([f"{backend}-save", "-t", "filter"], check=False)
                except OSError:
                    continue
                if saved.returncode == 0 and ":DOCKER-USER" in saved.stdout:
                    self._iptables = backend
                    break
        return self._iptables

    def installed(self) -> str:
        return _run([f"{self.iptables}-save", "-t", "filter"]).stdout

    def apply(self, policy: egress.Policy) -> bool:
        """Install ``policy`` if what is installed differs; True when something changed."""
        saved = self.installed()
        forward, inbound = egress.chain_names(policy.bridge)
        wanted_forward = egress.forward_rules(policy)
        wanted_input = egress.input_rules(policy)
        changed = False
        if (
            egress.chain_rules(saved, forward) != wanted_forward
            or egress.chain_rules(saved, inbound) != wanted_input
        ):
            _run([f"{self.iptables}-restore", "--noflush"], stdin=egress.restore_document(policy))
            changed = True
        for parent, rule in egress.jump_rules(policy.bridge):
            # First in its parent: rules an admin or Docker put there must not skip ours.
            first = _first_rule(saved, parent)
            if first != f"-A {parent} {rule}":
                self._delete_all(parent, rule)
                _run([self.iptables, "-w", "-I", parent, "1", *rule.split()])
                changed = True
        self._bridges.add(policy.bridge)
        return changed

    def remove(self, bridge: str) -> None:
        """Take the bridge's jumps and chains out."""
        for parent, rule in egress.jump_rules(bridge):
            self._delete_all(parent, rule)
        for chain in egress.chain_names(bridge):
            _run([self.iptables, "-w", "-F", chain], check=False)
            _run([self.iptables, "-w", "-X", chain], check=False)

    def _delete_all(self, parent: str, rule: str) -> None:
        while _run([self.iptables, "-w", "-D", parent, *rule.split()], check=False).returncode == 0:
            pass

    # -- the loop ----------------------------------------------------------------------
    def check_once(self) -> egress.Policy:
        """Read Docker, install the rules if needed; raises when Docker or iptables fail."""
        policy = self.policy()
        if self.apply(policy):
            log.info("network policy installed: %s", "; ".join(egress.describe(policy)))
        return policy

    def run_forever(self, ready_file: str | None = None) -> None:
        stopping = False

        def stop(*_: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        reported = ""
        while not stopping:
            try:
                policy = self.check_once()
                if ready_file:
                    write_ready_file(ready_file, self.network_name, policy.bridge)
                reported = ""
            except (docker.errors.DockerException, egress.PolicyError, OSError) as e:
                # Rules stay as installed: the policy fails closed while Docker is away.
                if str(e) != reported:
                    log.warning("network guard: %s; the installed rules stay in place", e)
                    reported = str(e)
            except subprocess.CalledProcessError as e:
                message = (e.stderr or "").strip() or str(e)
                if message != reported:
                    log.error("network guard: iptables failed: %s", message)
                    reported = message
            deadline = time.monotonic() + self.interval
            while not stopping and time.monotonic() < deadline:
                time.sleep(min(0.2, self.interval))
        log.info("network guard stopping; the rules stay installed")


def write_ready_file(path: str, network: str, bridge: str) -> None:
    """Say, with the time, that the rules of ``network`` were checked and are in place: the
    hub refuses spawns when this is missing or old (``GPUDockerSpawner.network_guard_file``)."""
    target = Path(path)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(json.dumps({"network": network, "bridge": bridge, "checked": time.time()}))
    partial.replace(target)


def _first_rule(saved: str, chain: str) -> str | None:
    for line in saved.splitlines():
        if line.startswith(f"-A {chain} "):
            return line.strip()
    return None


def _run(
    argv: Sequence[str], *, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, check=check, timeout=60
    )


def guard_from_env() -> NetworkGuard:
    """A guard configured from the same GPUWS_* settings as the hub (docs/configuration.md)."""
    try:
        return NetworkGuard(
            network_name=env_str("GPUWS_NETWORK", "gpu-workspaces"),
            hub_port=int(env_number("GPUWS_HUB_API_PORT", 8081, minimum=1) or 8081),
            hub_on_host=not env_bool("GPUWS_IN_COMPOSE"),
            allow=env_list("GPUWS_EGRESS_ALLOW"),
            internet=env_bool("GPUWS_EGRESS_INTERNET", True),
            interval=env_number("GPUWS_NETGUARD_INTERVAL", 2.0, minimum=0.1) or 2.0,
        )
    except TraitError as e:
        raise egress.PolicyError(str(e).replace("NetworkGuard.allow", "GPUWS_EGRESS_ALLOW")) from e


USAGE = """usage: python -m spawner netguard [--once | --remove] [--ready-file PATH]

Keeps the notebook network's policy installed (docs/security.md#network-isolation).
Settings: GPUWS_NETWORK, GPUWS_HUB_API_PORT, GPUWS_IN_COMPOSE, GPUWS_EGRESS_ALLOW,
GPUWS_EGRESS_INTERNET, GPUWS_NETWORK_ISOLATION (0: remove the rules and idle)."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spawner netguard", usage=USAGE)
    parser.add_argument("--once", action="store_true", help="install once and exit")
    parser.add_argument("--remove", action="store_true", help="remove the rules and exit")
    parser.add_argument("--ready-file", help="touched after each successful check")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[netguard %(asctime)s] %(message)s")
    try:
        guard = guard_from_env()
        off = not env_bool("GPUWS_NETWORK_ISOLATION", True)
        if args.remove or off:
            guard.remove(guard.policy().bridge)
            log.info("network policy removed from %s", guard.network_name)
            if off and not args.remove and not args.once:
                log.warning("GPUWS_NETWORK_ISOLATION=0: notebooks reach each other and the host")
                signal.pause()  # SIGTERM ends it; nothing to clean up
            return 0
        if args.once:
            guard.check_once()
            return 0
        guard.run_forever(args.ready_file)
        return 0
    except (egress.PolicyError, docker.errors.DockerException) as e:
        print(f"netguard: {e}", file=sys.stderr)
        return 1
    except ConfigError as e:
        print(f"netguard: {e.code}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as e:
        print(f"netguard: {' '.join(e.cmd)} failed: {(e.stderr or '').strip()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
