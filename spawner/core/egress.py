"""Which connections a notebook may open: the network policy, as iptables rules.

z2jh's default network policy, for Docker's bridge networks: a notebook reaches the hub's API,
the site's DNS servers, the targets an admin allows and (unless turned off) the internet; it
does not reach other notebooks, the Docker host (any of its addresses), the cloud metadata
service (169.254.169.254) or any private, link-local or reserved range.

The rules live in two chains of our own per notebook bridge, jumped to from Docker's
``DOCKER-USER`` chain (traffic through the host: other containers, other networks, the
outside) and from ``INPUT`` (traffic to the host itself, e.g. through the network's gateway).
dockerd keeps ``DOCKER-USER`` as it finds it when it restarts, so the rules outlive a dockerd
restart; ``spawner.netguard`` puts them back after a reboot and follows changes (a new hub
address, a recreated network). Pure: this module builds text and never runs anything.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: Destinations a notebook never reaches unless an admin allows them: "this" network, RFC 1918,
#: carrier-grade NAT, loopback, link-local (the metadata service is 169.254.169.254),
#: IETF protocol assignments, benchmarking, multicast and the reserved block.
PRIVATE_RANGES: tuple[str, ...] = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
)
METADATA_ADDRESS = "169.254.169.254"
#: Chain names: iptables allows 28 characters, a Linux interface name at most 15.
FORWARD_CHAIN_PREFIX = "GWS-F-"
INPUT_CHAIN_PREFIX = "GWS-I-"
#: What is refused is refused at once (the connection fails) instead of hanging until a timeout.
_REJECT = "-j REJECT --reject-with icmp-port-unreachable"


class PolicyError(ValueError):
    """A setting of the network policy that cannot be used; the message names the option."""


@dataclass(frozen=True)
class AllowedTarget:
    """A destination an admin lets notebooks reach: a network, and a TCP port or every port."""

    network: str
    port: int | None = None

    def describe(self) -> str:
        return self.network if self.port is None else f"{self.network} port {self.port}"


@dataclass(frozen=True)
class Policy:
    """Everything the rules of one notebook bridge depend on."""

    bridge: str
    #: Hub containers on the bridge (compose): they reach the notebooks, notebooks reach their API.
    hub_addresses: tuple[str, ...] = ()
    hub_port: int = 8081
    #: The hub runs on the Docker host and listens on the bridge's gateway address.
    hub_gateway: str | None = None
    dns_servers: tuple[str, ...] = ()
    allow: tuple[AllowedTarget, ...] = ()
    internet: bool = True


def parse_allow(text: str, option: str = "GPUWS_EGRESS_ALLOW") -> tuple[AllowedTarget, ...]:
    """``"10.0.5.0/24, 10.1.2.3:5432"`` → targets; a sentence naming ``option`` if unusable."""
    targets = []
    for raw in text.replace("\n", ",").split(","):
        entry = raw.strip()
        if not entry:
            continue
        address, port = entry, None
        if entry.count(":") == 1:
            address, _, port_text = entry.partition(":")
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise PolicyError(f"{option}: {entry!r}: the port must be a number from 1 to 65535")
            port = int(port_text)
        try:
            network = ipaddress.IPv4Network(address.strip(), strict=False)
        except ValueError:
            raise PolicyError(
                f"{option}: {entry!r} is not an IPv4 address or network (e.g. 10.0.5.0/24 or "
                "10.1.2.3:5432); host names are not resolved"
            ) from None
        targets.append(AllowedTarget(str(network), port))
    return tuple(targets)


def chain_names(bridge: str) -> tuple[str, str]:
    """The forward and input chains of one bridge."""
    if not bridge or len(bridge) > 15 or not all(c.isalnum() or c in "-_." for c in bridge):
        raise PolicyError(f"bridge interface name {bridge!r} is not a Linux interface name")
    return FORWARD_CHAIN_PREFIX + bridge, INPUT_CHAIN_PREFIX + bridge


def _host(address: str) -> str:
    return str(ipaddress.IPv4Address(address)) + "/32"


def forward_rules(policy: Policy) -> list[str]:
    """Rules (``iptables -A`` arguments) for connections from the bridge through the host."""
    chain, _ = chain_names(policy.bridge)
    rules = [
        f"-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        f"-A {chain} -m conntrack --ctstate INVALID -j DROP",
    ]
    for hub in policy.hub_addresses:
        # The hub and its proxy open connections to the notebooks (and to OAuth providers).
        rules.append(f"-A {chain} -s {_host(hub)} -j RETURN")
    for hub in policy.hub_addresses:
        rules.append(
            f"-A {chain} -d {_host(hub)} -p tcp -m tcp --dport {policy.hub_port} -j RETURN"
        )
    rules += _dns_and_allowed(chain, policy.dns_servers, policy.allow)
    rules.append(f"-A {chain} -o {policy.bridge} {_REJECT}")  # other notebooks
    rules += [f"-A {chain} -d {network} {_REJECT}" for network in PRIVATE_RANGES]
    rules.append(f"-A {chain} -j RETURN" if policy.internet else f"-A {chain} {_REJECT}")
    return rules


def input_rules(policy: Policy) -> list[str]:
    """Rules for connections from the bridge to the Docker host itself (any of its addresses)."""
    _, chain = chain_names(policy.bridge)
    rules = [f"-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"]
    if policy.hub_gateway:
        gateway = _host(policy.hub_gateway)
        rules.append(f"-A {chain} -d {gateway} -p tcp -m tcp --dport {policy.hub_port} -j RETURN")
    # Docker's embedded DNS answers inside each container; a resolver on the host itself
    # (dnsmasq on the gateway, say) is only reached when an admin allows it.
    rules += _dns_and_allowed(chain, (), policy.allow)
    rules.append(f"-A {chain} {_REJECT}")
    return rules


def _dns_and_allowed(
    chain: str, dns_servers: Iterable[str], allow: Iterable[AllowedTarget]
) -> list[str]:
    rules = []
    for server in dns_servers:
        for protocol in ("udp", "tcp"):
            rules.append(
                f"-A {chain} -d {_host(server)} -p {protocol} -m {protocol} --dport 53 -j RETURN"
            )
    for target in allow:
        port = "" if target.port is None else f" -p tcp -m tcp --dport {target.port}"
        rules.append(f"-A {chain} -d {target.network}{port} -j RETURN")
    return rules


def jump_rules(bridge: str) -> list[tuple[str, str]]:
    """(parent chain, rule) pairs that send the bridge's traffic into our chains."""
    forward, inbound = chain_names(bridge)
    return [
        ("DOCKER-USER", f"-i {bridge} -j {forward}"),
        ("INPUT", f"-i {bridge} -j {inbound}"),
    ]


def restore_document(policy: Policy) -> str:
    """``iptables-restore --noflush`` input that replaces both chains in one transaction."""
    forward, inbound = chain_names(policy.bridge)
    lines = ["*filter", f":{forward} - [0:0]", f":{inbound} - [0:0]"]
    lines += forward_rules(policy) + input_rules(policy)
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def chain_rules(saved: str, chain: str) -> list[str]:
    """The ``-A`` lines of ``chain`` in ``iptables-save`` output, normalised for comparison."""
    return [line.strip() for line in saved.splitlines() if line.startswith(f"-A {chain} ")]


def nameservers(resolv_conf: str) -> tuple[str, ...]:
    """IPv4 name servers of a resolv.conf that a container's DNS queries go to (not loopback:
    Docker never hands a loopback resolver to containers)."""
    servers = []
    for line in resolv_conf.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                address = ipaddress.IPv4Address(fields[1])
            except ValueError:
                continue
            if not address.is_loopback:
                servers.append(str(address))
    return tuple(servers)


def guard_status_problem(
    status: str | None, network: str, now: float, max_age: float
) -> str | None:
    """Why servers must not start yet, reading the guard's status file (``None``: missing), or
    None when the guard checked ``network``'s rules less than ``max_age`` seconds ago."""
    ask = "ask an admin to look at the network guard (`docker compose logs netguard`)"
    if status is None:
        return f"Network isolation is not in place: the network guard has not started; {ask}."
    try:
        data = json.loads(status)
        checked, guarded = float(data["checked"]), str(data["network"])
    except (ValueError, KeyError, TypeError):
        return f"Network isolation is not confirmed: the guard's status is unreadable; {ask}."
    if guarded != network:
        return (
            f"Network isolation is not in place: the network guard protects {guarded!r}, not "
            f"this hub's network {network!r}; {ask}."
        )
    if now - checked > max_age:
        return (
            f"Network isolation is not confirmed: the network guard last checked its rules "
            f"{now - checked:.0f} seconds ago; {ask}."
        )
    return None


def describe(policy: Policy) -> Sequence[str]:
    """One line per decision, for the guard's log and the doctor."""
    lines = [f"notebooks on {policy.bridge} reach the hub API on port {policy.hub_port}"]
    lines += [f"allowed: {t.describe()}" for t in policy.allow]
    lines.append(
        "refused: other notebooks, the Docker host, "
        f"{METADATA_ADDRESS} (metadata) and {', '.join(PRIVATE_RANGES)}"
    )
    lines.append("internet: allowed" if policy.internet else "internet: refused")
    return lines


__all__ = [
    "METADATA_ADDRESS",
    "PRIVATE_RANGES",
    "AllowedTarget",
    "Policy",
    "PolicyError",
    "chain_names",
    "chain_rules",
    "describe",
    "forward_rules",
    "guard_status_problem",
    "input_rules",
    "jump_rules",
    "nameservers",
    "parse_allow",
    "restore_document",
]
