"""Pure builders of the network agent: nft rule sets (security groups,
router NAT), dnsmasq files (hosts, options 121/249), bridge plans."""

from __future__ import annotations

import pytest

from stackbox.network.agent import Ledger, _Keep, parse_mappings
from stackbox.network.hoststate import (FloatingIpState, HostState, NetworkState, PortState,
                                        RouterInterfaceState, RouterState,
                                        SecurityGroupRuleState, SecurityGroupState,
                                        SubnetState)
from stackbox.network.linux import bridge, dhcp, router, secgroup

NET = "11111111-aaaa-bbbb-cccc-000000000001"
SUB = "22222222-aaaa-bbbb-cccc-000000000001"
SUB2 = "22222222-aaaa-bbbb-cccc-000000000002"


def subnet(**kw) -> SubnetState:
    base = dict(id=SUB, cidr="10.0.0.0/24", ip_version=4, gateway_ip="10.0.0.1",
                enable_dhcp=True)
    base.update(kw)
    return SubnetState(**base)


def port(pid="33333333-0000", ip="10.0.0.5", mac="FA:16:3E:00:00:05", **kw) -> PortState:
    base = dict(id=pid, network_id=NET, mac=mac, fixed_ips=((SUB, ip),),
                device_owner="compute:nova", device_id="server-1", hostname="vm-one")
    base.update(kw)
    return PortState(**base)


DHCP_PORT = PortState(id="44444444-0000", network_id=NET, mac="fa:16:3e:00:00:02",
                      fixed_ips=((SUB, "10.0.0.2"),), device_owner="network:dhcp",
                      device_id="dhcp")


def network(*, subnets=None, ports=None, has_router=True, **kw) -> NetworkState:
    return NetworkState(id=NET, mtu=1450, network_type="local", has_router=has_router,
                        subnets=tuple(subnets or (subnet(),)),
                        ports=tuple(ports if ports is not None else (DHCP_PORT, port())), **kw)


def rule(direction="ingress", protocol=None, **kw) -> SecurityGroupRuleState:
    return SecurityGroupRuleState(id="r", direction=direction, ethertype=kw.pop("ethertype", "IPv4"),
                                  protocol=protocol, **kw)


# --- dnsmasq -----------------------------------------------------------------

def option(opts: str, name: str) -> str | None:
    for line in opts.splitlines():
        if line.split(",")[1] == name:
            return line
    return None


def test_routed_network_sends_router_without_121():
    opts = dhcp.opts_file(network())
    assert option(opts, "option:router") == "tag:s-22222222,option:router,10.0.0.1"
    assert option(opts, "option:mtu") == "tag:s-22222222,option:mtu,1450"
    assert option(opts, "option:classless-static-route") is None
    assert option(opts, "249") is None


def test_isolated_network_routes_metadata_via_dhcp_port_and_keeps_default_in_121():
    opts = dhcp.opts_file(network(has_router=False))
    want = "169.254.169.254/32,10.0.0.2,0.0.0.0/0,10.0.0.1"
    assert option(opts, "option:classless-static-route") == \
        f"tag:s-22222222,option:classless-static-route,{want}"
    assert option(opts, "249") == f"tag:s-22222222,249,{want}"
    # Still sent for clients that do not ask for 121.
    assert option(opts, "option:router") == "tag:s-22222222,option:router,10.0.0.1"


def test_no_gateway_sends_empty_router_and_no_default_route():
    opts = dhcp.opts_file(network(subnets=[subnet(gateway_ip=None)], has_router=False))
    assert option(opts, "option:router") == "tag:s-22222222,option:router"
    routes = option(opts, "option:classless-static-route")
    assert routes.endswith("169.254.169.254/32,10.0.0.2")
    assert "0.0.0.0/0" not in routes


def test_host_routes_and_sibling_subnets_in_121():
    net = network(subnets=[subnet(host_routes=(("192.168.7.0/24", "10.0.0.9"),
                                               ("2001:db8::/64", "fd00::1"))),
                           subnet(id=SUB2, cidr="10.0.1.0/24", gateway_ip=None,
                                  enable_dhcp=False)])
    routes = dhcp.classless_routes(net, net.subnets[0])
    assert routes == [("10.0.1.0/24", "0.0.0.0"), ("192.168.7.0/24", "10.0.0.9"),
                      ("0.0.0.0/0", "10.0.0.1")]


def test_host_route_with_default_is_not_doubled():
    net = network(subnets=[subnet(host_routes=(("0.0.0.0/0", "10.0.0.254"),))])
    assert dhcp.classless_routes(net, net.subnets[0]) == [("0.0.0.0/0", "10.0.0.254")]


def test_dns_servers_listed_or_suppressed():
    opts = dhcp.opts_file(network(subnets=[subnet(dns_nameservers=("9.9.9.9", "1.1.1.1"))]))
    assert option(opts, "option:dns-server") == "tag:s-22222222,option:dns-server,9.9.9.9,1.1.1.1"
    assert option(dhcp.opts_file(network()), "option:dns-server") == \
        "tag:s-22222222,option:dns-server"


def test_hosts_file_one_line_per_port_without_the_dhcp_port():
    ports = (DHCP_PORT, port(), port(pid="33333333-0001", ip="10.0.0.6",
                                     mac="fa:16:3e:00:00:06", hostname="VM_One.example.org"),
             port(pid="33333333-0002", ip="10.0.0.7", mac="fa:16:3e:00:00:07", hostname=""))
    text = dhcp.hosts_file(network(ports=ports))
    assert text.splitlines() == [
        "fa:16:3e:00:00:05,10.0.0.5,vm-one",
        "fa:16:3e:00:00:06,10.0.0.6",            # sanitised to vm-one: taken, left out
        "fa:16:3e:00:00:07,10.0.0.7,host-10-0-0-7",
    ]


def test_dhcp_disabled_subnet_gets_no_range_or_hosts():
    net = network(subnets=[subnet(enable_dhcp=False)])
    assert not dhcp.wants_dhcp(net)
    assert dhcp.hosts_file(net) == ""
    assert "dhcp-range" not in dhcp.dnsmasq_conf(net, directory=__import__("pathlib").Path("/x"))


def test_conf_has_static_range_per_subnet_and_no_dns(tmp_path):
    conf = dhcp.dnsmasq_conf(network(), directory=tmp_path)
    assert "dhcp-range=set:s-22222222,10.0.0.0,static,255.255.255.0,86400s" in conf
    assert "port=0" in conf and f"dhcp-hostsfile={tmp_path}/hosts" in conf


def test_hostile_values_are_refused():
    with pytest.raises(ValueError):
        dhcp.hosts_file(network(ports=(port(mac="fa:16:3e:00:00:05\ndhcp-script=/bin/sh"),)))
    with pytest.raises(ValueError):
        dhcp.opts_file(network(subnets=[subnet(dns_nameservers=("1.1.1.1\nfoo",))]))


def test_dhcp_interface_address_has_subnet_prefix():
    assert dhcp.port_interface_addresses(network()) == ["10.0.0.2/24"]


# --- security groups ------------------------------------------------------------

def chain(text: str, name: str) -> list[str]:
    body = text.split(f"chain {name} {{\n")[1].split("\n\t}")[0]
    return [ln.strip() for ln in body.splitlines()]


def groups(*rules, members=("10.0.0.5", "10.0.0.8")):
    return {"sg1": SecurityGroupState(id="sg1", rules=tuple(rules), member_ips=members)}


def test_rule_expressions():
    assert secgroup.rule_expr(rule(protocol="tcp", port_range_min=22, port_range_max=22), 4) == \
        "meta nfproto ipv4 meta l4proto 6 tcp dport 22 accept"
    assert secgroup.rule_expr(rule(protocol="udp", port_range_min=1000, port_range_max=2000,
                                   remote_ip_prefix="192.168.0.0/16"), 4) == \
        "meta nfproto ipv4 ip saddr 192.168.0.0/16 meta l4proto 17 udp dport 1000-2000 accept"
    assert secgroup.rule_expr(rule(protocol="icmp", port_range_min=8, port_range_max=0), 4) == \
        "meta nfproto ipv4 meta l4proto 1 icmp type 8 icmp code 0 accept"
    assert secgroup.rule_expr(rule(direction="egress", remote_group_id="sg1"), 4) == \
        "meta nfproto ipv4 ip daddr @sg-sg1-4 accept"
    assert secgroup.rule_expr(rule(protocol="icmp", ethertype="IPv6"), 6) == \
        "meta nfproto ipv6 meta l4proto 58 accept"
    assert secgroup.rule_expr(rule(protocol="112"), 4) == "meta nfproto ipv4 meta l4proto 112 accept"
    assert secgroup.rule_expr(rule(remote_ip_prefix="0.0.0.0/0"), 4) == "meta nfproto ipv4 accept"


def test_rule_of_other_family_is_skipped():
    assert secgroup.rule_expr(rule(ethertype="IPv6"), 4) is None
    assert secgroup.rule_expr(rule(remote_ip_prefix="10.0.0.0/8", ethertype="IPv6"), 6) is None


def test_unknown_protocol_is_an_error():
    with pytest.raises(ValueError, match="unknown protocol"):
        secgroup.rule_expr(rule(protocol="bogus"), 4)


def test_port_table_default_deny_ingress_with_group_rules_and_remote_set():
    p = port(security_group_ids=("sg1",))
    text = secgroup.inet_table(p, bridge="sbx-br-11111111", groups=groups(
        rule(protocol="icmp"), rule(protocol="tcp", port_range_min=22, remote_group_id="sg1"),
        rule(direction="egress")))
    lines = chain(text, "ingress")
    assert lines[0] == "ct state established,related accept"
    assert lines[1] == "ct state invalid drop"
    assert "udp sport 67 udp dport 68 accept" in lines
    assert "meta nfproto ipv4 meta l4proto 1 accept" in lines
    assert "meta nfproto ipv4 ip saddr @sg-sg1-4 meta l4proto 6 tcp dport 22 accept" in lines
    assert lines[-1] == "drop"
    egress = chain(text, "egress")
    assert "ip daddr 169.254.169.254 tcp dport 80 accept" in egress
    assert "meta nfproto ipv4 accept" in egress
    assert "elements = { 10.0.0.5, 10.0.0.8 }" in text
    assert 'oifname "sbx-br-11111111" ip daddr { 10.0.0.5 } jump ingress' in text
    assert 'iifname "sbx-br-11111111" ip saddr { 10.0.0.5 } jump egress' in text


def test_no_rules_means_everything_but_dhcp_and_metadata_dropped():
    text = secgroup.inet_table(port(security_group_ids=()), bridge="sbx-br-1", groups={})
    assert chain(text, "egress")[-1] == "drop"
    assert chain(text, "ingress")[-1] == "drop"
    assert "meta nfproto" not in text


def test_anti_spoofing_allows_own_and_pair_addresses_only():
    p = port(allowed_address_pairs=(("10.0.0.100", ""), ("10.9.0.0/16", "fa:16:3e:00:00:99")))
    text = secgroup.bridge_table(p)
    assert 'iifname "sbx-tap-3333333" jump from_port' in text
    assert "elements = { fa:16:3e:00:00:05, fa:16:3e:00:00:99 }" in text
    assert ("elements = { fa:16:3e:00:00:05 . 10.0.0.100, fa:16:3e:00:00:05 . 10.0.0.5, "
            "fa:16:3e:00:00:99 . 10.9.0.0/16 }") in text
    order = chain(text, "from_port")
    assert order.index("ether type ip udp sport 68 udp dport 67 accept") < \
        order.index("ether type ip udp sport 67 drop") < \
        order.index("ether type ip ether saddr . ip saddr != @allowed4 drop")
    assert "ether type arp arp saddr ether . arp saddr ip != @allowed4 drop" in order


def test_ruleset_replaces_both_tables_in_one_script():
    script = secgroup.port_ruleset(port(), bridge="sbx-br-1", groups={})
    head = script.splitlines()[:4]
    assert head == ["table bridge sbx-p-33333333 {}", "delete table bridge sbx-p-33333333",
                    "table inet sbx-p-33333333 {}", "delete table inet sbx-p-33333333"]
    assert secgroup.digest(script) == secgroup.digest(
        secgroup.port_ruleset(port(), bridge="sbx-br-1", groups={}))


def test_port_with_security_disabled_is_not_filtered():
    assert not secgroup.filtered(port(port_security_enabled=False))


# --- router --------------------------------------------------------------------

ROUTER = RouterState(
    id="55555555-0000", gateway_network_id="ext", gateway_ip="203.0.113.10",
    gateway_prefixlen=24, gateway_mac="fa:16:3e:00:01:01", external_gateway="203.0.113.1",
    interfaces=(RouterInterfaceState(port_id="66666666-0000", network_id=NET,
                                     mac="fa:16:3e:00:00:01", ip="10.0.0.1", prefixlen=24),),
    routes=(("192.168.50.0/24", "10.0.0.254"),),
    floating_ips=(FloatingIpState(id="f", floating_ip="203.0.113.50", fixed_ip="10.0.0.5",
                                  port_id="p"),))


def test_nat_ruleset_dnat_snat_per_floating_ip_and_gateway_snat():
    text = router.nat_ruleset(ROUTER)
    assert "ip daddr 203.0.113.50 dnat to 10.0.0.5" in text
    assert 'ip saddr 10.0.0.5 oifname "qg-55555555" snat to 203.0.113.50' in text
    post = text.split("chain postrouting {")[1]
    assert post.index("snat to 203.0.113.50") < post.index("snat to 203.0.113.10")
    assert 'ip saddr { 10.0.0.0/24 } oifname "qg-55555555" snat to 203.0.113.10' in text
    hairpin = "ct status dnat ip saddr { 10.0.0.0/24 } ip daddr { 10.0.0.0/24 } masquerade"
    assert post.index(hairpin) < post.index("snat to 203.0.113.50")


def test_no_snat_when_disabled_but_floating_ips_still_work():
    from dataclasses import replace
    text = router.nat_ruleset(replace(ROUTER, enable_snat=False))
    assert "snat to 203.0.113.10" not in text
    assert "snat to 203.0.113.50" in text


def test_router_without_gateway_has_empty_nat():
    from dataclasses import replace
    text = router.nat_ruleset(replace(ROUTER, gateway_ip=None, gateway_network_id=None))
    assert "dnat" not in text and "snat" not in text


def test_router_routes_and_addresses():
    assert router.desired_routes(ROUTER) == {"default": "203.0.113.1",
                                             "192.168.50.0/24": "10.0.0.254"}
    assert router.gateway_addresses(ROUTER) == {"203.0.113.10/24", "203.0.113.50/32"}


# --- bridges and mappings ----------------------------------------------------------

def test_bridge_plans():
    mappings = {"physnet1": "br-ex", "physnet2": "eth9", "physnet3": "sbx-br-ex"}
    is_bridge = {"br-ex": "bridge", "eth9": ""}.get
    assert bridge.plan(network(), mappings, is_bridge) == bridge.BridgePlan("sbx-br-11111111", True)
    flat_br = NetworkState(id=NET, mtu=1500, network_type="flat", physical_network="physnet1")
    assert bridge.plan(flat_br, mappings, is_bridge) == bridge.BridgePlan("br-ex", False)
    flat_if = NetworkState(id=NET, mtu=1500, network_type="flat", physical_network="physnet2")
    assert bridge.plan(flat_if, mappings, is_bridge) == \
        bridge.BridgePlan("sbx-br-11111111", True, uplink="eth9")
    missing = NetworkState(id=NET, mtu=1500, network_type="flat", physical_network="physnet3")
    assert bridge.plan(missing, mappings, is_bridge) == bridge.BridgePlan("sbx-br-ex", True)
    vlan = NetworkState(id=NET, mtu=1500, network_type="vlan", physical_network="physnet2",
                        segmentation_id=42)
    assert bridge.plan(vlan, mappings, is_bridge) == \
        bridge.BridgePlan("sbx-br-11111111", True, vlan=("sbx-vl-11111111", "eth9", 42))


def test_bridge_plan_errors_name_the_problem():
    with pytest.raises(bridge.MappingError, match="physnet9.*not in bridge_mappings"):
        bridge.plan(NetworkState(id=NET, mtu=1500, network_type="flat",
                                 physical_network="physnet9"), {"physnet1": "br"}, lambda n: None)
    with pytest.raises(bridge.MappingError, match="VLAN id 4095"):
        bridge.plan(NetworkState(id=NET, mtu=1500, network_type="vlan", physical_network="p",
                                 segmentation_id=4095), {"p": "eth9"}, lambda n: "")


def test_parse_mappings_spellings():
    want = {"physnet1": "br-ex", "physnet2": "br-ex2"}
    assert parse_mappings("physnet1:br-ex,physnet2:br-ex2") == want
    assert parse_mappings(["physnet1:br-ex", "physnet2:br-ex2"]) == want
    assert parse_mappings(want) == want
    assert parse_mappings("") == {}


def test_ledger_round_trip(tmp_path):
    ledger = Ledger(tmp_path / "owned.json")
    ledger.add("links", "sbx-br-1")
    ledger.add("netns", "sbx-dhcp-1")
    ledger.save()
    again = Ledger(tmp_path / "owned.json")
    assert again.items["links"] == {"sbx-br-1"} and again.items["netns"] == {"sbx-dhcp-1"}


def test_router_interfaces_grouped_by_port():
    from dataclasses import replace
    second = RouterInterfaceState(port_id="66666666-0000", network_id=NET,
                                  mac="fa:16:3e:00:00:01", ip="fd00::1", prefixlen=64)
    grouped = router.interfaces_by_port(replace(ROUTER, interfaces=ROUTER.interfaces + (second,)))
    assert list(grouped) == ["66666666-0000"]
    assert [i.ip for i in grouped["66666666-0000"]] == ["10.0.0.1", "fd00::1"]


def test_removed_host_entries_are_found_renames_are_not():
    old = "fa:16:3e:00:00:05,10.0.0.5,vm-one\nfa:16:3e:00:00:06,10.0.0.6\n"
    assert dhcp.removed_hosts(old, "fa:16:3e:00:00:05,10.0.0.5,renamed\n") == \
        {"fa:16:3e:00:00:06,10.0.0.6"}
    assert dhcp.removed_hosts(old, old + "fa:16:3e:00:00:07,10.0.0.7\n") == set()
    assert dhcp.removed_hosts("", old) == set()


def test_everything_the_state_names_is_kept_even_before_it_converges():
    ext = NetworkState(id="77777777-0000", mtu=1500, network_type="flat",
                       physical_network="public")
    state = HostState(host_id="h", networks=(network(), ext), routers=(ROUTER,),
                      bound_ports=(port(security_group_ids=("sg1",)),
                                   port(pid="88888888-0000", port_security_enabled=False)))
    keep = _Keep.wanted(state, {"public": "sbx-br-ex"})
    assert keep.netns == {"sbx-dhcp-11111111", "sbx-r-55555555"}
    assert keep.links == {"sbx-br-11111111", "sbx-br-77777777", "sbx-br-ex", "sbx-dh-11111111",
                          "sbx-rg-55555555", "sbx-ri-66666666"}
    assert keep.tables == {"sbx-p-33333333"}
    assert keep.dhcp == {NET}
