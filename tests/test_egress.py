"""The network policy as rules (spawner/core/egress.py): tables of plain values, no engine."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from traitlets import TraitError
from traitlets.config import Config

from spawner.backends.docker import GPUDockerSpawner
from spawner.core import egress
from spawner.core.egress import AllowedTarget, Policy, PolicyError

REJECT = "-j REJECT --reject-with icmp-port-unreachable"
BRIDGE = "br-0123456789ab"
FWD, INP = f"GWS-F-{BRIDGE}", f"GWS-I-{BRIDGE}"


@pytest.mark.parametrize(
    ("text", "targets"),
    [
        ("", ()),
        ("10.0.5.0/24", (AllowedTarget("10.0.5.0/24"),)),
        ("10.1.2.3:5432", (AllowedTarget("10.1.2.3/32", 5432),)),
        (
            " 10.0.5.7/24 ,\n192.168.1.10:443,",
            (AllowedTarget("10.0.5.0/24"), AllowedTarget("192.168.1.10/32", 443)),
        ),
    ],
)
def test_allowed_targets_are_parsed(text, targets):
    assert egress.parse_allow(text) == targets


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("db.internal", "'db.internal' is not an IPv4 address or network"),
        ("10.0.0.1:0", "the port must be a number from 1 to 65535"),
        ("10.0.0.1:http", "the port must be a number from 1 to 65535"),
        ("10.0.0.1:70000", "the port must be a number from 1 to 65535"),
        ("fd00::1", "is not an IPv4 address or network"),
        ("10.0.0.0/33", "is not an IPv4 address or network"),
    ],
)
def test_unusable_allowed_targets_name_the_option(text, message):
    with pytest.raises(PolicyError, match=r"^GPUWS_EGRESS_ALLOW: ") as e:
        egress.parse_allow(text)
    assert message in str(e.value)


def _private_rejects(chain: str) -> list[str]:
    return [f"-A {chain} -d {network} {REJECT}" for network in egress.PRIVATE_RANGES]


COMPOSE = Policy(bridge=BRIDGE, hub_addresses=("172.20.0.2",), hub_port=8081)
ON_HOST = Policy(bridge=BRIDGE, hub_gateway="172.20.0.1", hub_port=8081)


@pytest.mark.parametrize(
    ("policy", "forward", "inbound"),
    [
        (
            COMPOSE,
            [
                f"-A {FWD} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
                f"-A {FWD} -m conntrack --ctstate INVALID -j DROP",
                f"-A {FWD} -s 172.20.0.2/32 -j RETURN",
                f"-A {FWD} -d 172.20.0.2/32 -p tcp -m tcp --dport 8081 -j RETURN",
                f"-A {FWD} -o {BRIDGE} {REJECT}",
                *_private_rejects(FWD),
                f"-A {FWD} -j RETURN",
            ],
            [
                f"-A {INP} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
                f"-A {INP} {REJECT}",
            ],
        ),
        (
            Policy(
                bridge=BRIDGE,
                hub_gateway="172.20.0.1",
                hub_port=8765,
                dns_servers=("10.0.0.2",),
                allow=(AllowedTarget("10.9.0.0/16"), AllowedTarget("10.1.2.3/32", 5432)),
                internet=False,
            ),
            [
                f"-A {FWD} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
                f"-A {FWD} -m conntrack --ctstate INVALID -j DROP",
                f"-A {FWD} -d 10.0.0.2/32 -p udp -m udp --dport 53 -j RETURN",
                f"-A {FWD} -d 10.0.0.2/32 -p tcp -m tcp --dport 53 -j RETURN",
                f"-A {FWD} -d 10.9.0.0/16 -j RETURN",
                f"-A {FWD} -d 10.1.2.3/32 -p tcp -m tcp --dport 5432 -j RETURN",
                f"-A {FWD} -o {BRIDGE} {REJECT}",
                *_private_rejects(FWD),
                f"-A {FWD} {REJECT}",
            ],
            [
                f"-A {INP} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
                f"-A {INP} -d 172.20.0.1/32 -p tcp -m tcp --dport 8765 -j RETURN",
                f"-A {INP} -d 10.9.0.0/16 -j RETURN",
                f"-A {INP} -d 10.1.2.3/32 -p tcp -m tcp --dport 5432 -j RETURN",
                f"-A {INP} {REJECT}",
            ],
        ),
    ],
)
def test_rules_of_a_policy(policy, forward, inbound):
    assert egress.forward_rules(policy) == forward
    assert egress.input_rules(policy) == inbound


def test_the_metadata_service_and_the_host_are_refused_by_default():
    rules = egress.forward_rules(COMPOSE)
    metadata = f"-A {FWD} -d 169.254.0.0/16 {REJECT}"
    assert metadata in rules
    # refused before the catch-all that lets the internet through
    assert rules.index(metadata) < rules.index(f"-A {FWD} -j RETURN")
    assert egress.input_rules(ON_HOST)[-1] == f"-A {INP} {REJECT}"


def test_restore_document_replaces_both_chains_in_one_transaction():
    document = egress.restore_document(COMPOSE).splitlines()
    assert document[:3] == ["*filter", f":{FWD} - [0:0]", f":{INP} - [0:0]"]
    assert document[-1] == "COMMIT"
    assert document[3:-1] == egress.forward_rules(COMPOSE) + egress.input_rules(COMPOSE)


def test_installed_rules_are_read_back_from_iptables_save():
    saved = "\n".join(
        [
            "*filter",
            f":{FWD} - [0:0]",
            "-A DOCKER-USER -j RETURN",
            *egress.forward_rules(COMPOSE),
            "COMMIT",
        ]
    )
    assert egress.chain_rules(saved, FWD) == egress.forward_rules(COMPOSE)
    assert egress.chain_rules(saved, INP) == []


@pytest.mark.parametrize(
    ("bridge", "ok"),
    [("br-0123456789ab", True), ("gpuws0", True), ("", False), ("x" * 16, False), ("a b", False)],
)
def test_chain_names_come_from_interface_names(bridge, ok):
    if ok:
        forward, inbound = egress.chain_names(bridge)
        assert len(forward) <= 28 and len(inbound) <= 28
    else:
        with pytest.raises(PolicyError):
            egress.chain_names(bridge)


@pytest.mark.parametrize(
    ("resolv_conf", "servers"),
    [
        ("nameserver 10.0.0.2\nnameserver 1.1.1.1\n", ("10.0.0.2", "1.1.1.1")),
        ("# comment\nnameserver 127.0.0.53\nsearch example\n", ()),
        ("nameserver fd00::53\nnameserver 192.168.1.1", ("192.168.1.1",)),
        ("", ()),
    ],
)
def test_dns_servers_from_resolv_conf(resolv_conf, servers):
    assert egress.nameservers(resolv_conf) == servers


@pytest.mark.parametrize(
    ("status", "problem"),
    [
        ('{"network": "nb", "bridge": "br-1", "checked": 995}', None),
        (None, "the network guard has not started"),
        ("{", "the guard's status is unreadable"),
        ('{"network": "nb"}', "the guard's status is unreadable"),
        ('{"network": "other", "checked": 999}', "protects 'other', not this hub's network 'nb'"),
        ('{"network": "nb", "checked": 900}', "last checked its rules 100 seconds ago"),
    ],
)
def test_servers_wait_for_the_guard(status, problem):
    found = egress.guard_status_problem(status, "nb", now=1000, max_age=30)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found and "ask an admin" in found


@pytest.mark.parametrize(
    ("path", "refused"), [("", False), ("/srv/state/netguard.json", False), ("netguard.json", True)]
)
def test_the_guard_file_setting_is_an_absolute_path(path, refused):
    config = Config()
    config.GPUDockerSpawner.network_guard_file = path
    user = SimpleNamespace(name="guard-file", groups=[], url="/user/guard-file/")
    if refused:
        with pytest.raises(TraitError, match=r"network_guard_file: 'netguard.json' is not an abs"):
            GPUDockerSpawner(config=config, user=user)
    else:
        assert GPUDockerSpawner(config=config, user=user).network_guard_file == path
