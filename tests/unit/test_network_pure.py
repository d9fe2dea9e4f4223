"""Pure parts of the network service: subnet arithmetic, list semantics,
security-group rule checks, bridge_mappings configuration."""

from __future__ import annotations

import ipaddress

import pytest

from stackbox.common.config import ConfigError, Settings, load_settings
from stackbox.common.errors import BadRequest, Conflict
from stackbox.network import ipam, listing
from stackbox.network.secgroups import normalize_rule


def test_default_pools_leave_out_the_gateway():
    net = ipaddress.ip_network("10.0.0.0/24")
    assert ipam.default_pools(net, ipaddress.ip_address("10.0.0.1")) == [
        ("10.0.0.2", "10.0.0.254")]
    assert ipam.default_pools(net, None) == [("10.0.0.1", "10.0.0.254")]
    assert ipam.default_pools(net, ipaddress.ip_address("10.0.0.100")) == [
        ("10.0.0.1", "10.0.0.99"), ("10.0.0.101", "10.0.0.254")]


def test_cidr_must_be_a_network_address():
    with pytest.raises(BadRequest) as e:
        ipam.parse_cidr("10.0.0.5/24")
    assert e.value.field == "cidr" and "10.0.0.0/24" in e.value.message
    with pytest.raises(BadRequest):
        ipam.parse_cidr("10.0.0.0/24", version=6)
    with pytest.raises(BadRequest):
        ipam.parse_cidr("nonsense")


@pytest.mark.parametrize("pools,field", [
    ([("10.0.1.2", "10.0.1.9")], "allocation_pools"),       # outside the cidr
    ([("10.0.0.9", "10.0.0.2")], "allocation_pools"),       # start after end
    ([("10.0.0.2", "10.0.0.9"), ("10.0.0.5", "10.0.0.20")], "allocation_pools"),  # overlap
    ([("10.0.0.0", "10.0.0.9")], "allocation_pools"),       # network address
    ([("10.0.0.1", "10.0.0.9")], "gateway_ip"),             # contains the gateway
])
def test_bad_pools_name_the_field(pools, field):
    net = ipaddress.ip_network("10.0.0.0/24")
    with pytest.raises((BadRequest, Conflict)) as e:
        ipam.validate_pools(net, pools, ipaddress.ip_address("10.0.0.1"))
    assert e.value.field == field


def test_pick_lowest_first_then_spread():
    pools = [("10.0.0.2", "10.0.0.100")]
    assert ipam.pick(pools, set(), attempt=0) == "10.0.0.2"
    assert ipam.pick(pools, {"10.0.0.2", "10.0.0.3"}, attempt=0) == "10.0.0.4"
    spread = {ipam.pick(pools, set(), attempt=3) for _ in range(50)}
    assert len(spread) > 1 and all(ipaddress.ip_address(a) <= ipaddress.ip_address(
        "10.0.0.33") for a in spread)
    assert ipam.pick([("10.0.0.2", "10.0.0.2")], {"10.0.0.2"}, attempt=0) is None


def _items():
    return [{"id": "a", "name": "x", "shared": False, "tags": ["red"], "mtu": 1500,
             "fixed_ips": [{"subnet_id": "s1", "ip_address": "10.0.0.5"}]},
            {"id": "b", "name": "y", "shared": True, "tags": ["red", "blue"], "mtu": 1450,
             "fixed_ips": []},
            {"id": "c", "name": "x", "shared": True, "tags": [], "mtu": 9000,
             "fixed_ips": []}]


def test_filters_fields_sort_and_pages():
    q = listing.parse([("name", "x"), ("shared", "True")])
    assert [i["id"] for i in listing.apply(_items(), q, collection="n", base_url="")[0]] == ["c"]
    q = listing.parse([("name", "x"), ("name", "y"), ("fields", "id"), ("fields", "mtu")])
    page, _ = listing.apply(_items(), q, collection="n", base_url="")
    assert page == [{"id": "a", "mtu": 1500}, {"id": "b", "mtu": 1450},
                    {"id": "c", "mtu": 9000}]
    q = listing.parse([("fixed_ips", "ip_address=10.0.0.5")])
    assert [i["id"] for i in listing.apply(_items(), q, collection="n", base_url="")[0]] == ["a"]
    q = listing.parse([("tags", "red,blue")])
    assert [i["id"] for i in listing.apply(_items(), q, collection="n", base_url="")[0]] == ["b"]
    q = listing.parse([("not-tags-any", "red")])
    assert [i["id"] for i in listing.apply(_items(), q, collection="n", base_url="")[0]] == ["c"]
    q = listing.parse([("sort_key", "mtu"), ("sort_dir", "desc"), ("limit", "2")])
    page, links = listing.apply(_items(), q, collection="networks", base_url="http://h")
    assert [i["id"] for i in page] == ["c", "a"]
    assert links[0]["rel"] == "next" and "marker=a" in links[0]["href"]
    q = listing.parse([("sort_key", "mtu"), ("sort_dir", "desc"), ("limit", "2"),
                       ("marker", "a")])
    assert [i["id"] for i in listing.apply(_items(), q, collection="n", base_url="")[0]] == ["b"]


def test_unknown_filter_and_marker_are_400():
    with pytest.raises(BadRequest) as e:
        listing.apply(_items(), listing.parse([("colour", "x")]), collection="n", base_url="")
    assert e.value.field == "colour"
    with pytest.raises(BadRequest):
        listing.apply(_items(), listing.parse([("marker", "zz")]), collection="n", base_url="")


def test_rules():
    r = normalize_rule({"security_group_id": "g", "direction": "ingress", "protocol": "tcp",
                        "port_range_min": 22})
    assert r["port_range_max"] == 22 and r["ethertype"] == "IPv4"
    bad = [({"protocol": "tcp", "port_range_min": 80, "port_range_max": 22}, "port_range_min"),
           ({"protocol": "icmp", "port_range_min": 300}, "port_range_min"),
           ({"protocol": "gre", "port_range_min": 1}, "port_range_min"),
           ({"protocol": "bogus"}, "protocol"),
           ({"remote_ip_prefix": "::/0"}, "remote_ip_prefix"),
           ({"remote_ip_prefix": "10.0.0.0/8", "remote_group_id": "g"}, "remote_ip_prefix")]
    for extra, field in bad:
        with pytest.raises(BadRequest) as e:
            normalize_rule({"security_group_id": "g", "direction": "ingress", **extra})
        assert e.value.field == field, extra


def test_bridge_mappings_config(tmp_path):
    s = Settings.model_validate({"network": {
        "bridge_mappings": "physnet1:br-ex,physnet2:br-ex2",
        "public_physical_network": "physnet1"}})
    assert s.network.bridge_mappings == {"physnet1": "br-ex", "physnet2": "br-ex2"}
    f = tmp_path / "c.toml"
    f.write_text('[network]\nbridge_mappings = "physnet1"\n')
    with pytest.raises(ConfigError) as e:
        load_settings(f)
    assert "network.bridge_mappings" in str(e.value) and "physnet:bridge" in str(e.value)
    f.write_text('[network]\nbridge_mappings = { other = "br-x" }\n')
    with pytest.raises(ConfigError) as e:
        load_settings(f)
    assert "public_physical_network" in str(e.value)
    f.write_text('[network]\nbridge_mappings = { public = "a-name-far-too-long" }\n')
    with pytest.raises(ConfigError):
        load_settings(f)


def test_policy_reader_reads_member_writes():
    from stackbox.common.errors import Forbidden
    from stackbox.common.http.context import RequestContext
    from stackbox.network.policy import enforce
    reader = RequestContext(request_id="r", project_id="p", roles=("reader",))
    member = RequestContext(request_id="r", project_id="p", roles=("member", "reader"))
    enforce(reader, "get_network")
    enforce(member, "create_port")
    with pytest.raises(Forbidden):
        enforce(reader, "create_network")
    with pytest.raises(Forbidden):
        enforce(reader, "add_router_interface")
    with pytest.raises(Forbidden):
        enforce(RequestContext(request_id="r", roles=("member",)), "create_network")
