"""The network service on a real migrated SQLite database (PostgreSQL with
STACKBOX_TEST_PG_URL): IPAM under concurrent creates, the interface compute
and metadata call, the host state the agent converges to, default networks."""

from __future__ import annotations

import threading

import pytest

from stackbox.common.config import Settings
from stackbox.common.db import Database, migrate
from stackbox.common.errors import Conflict, QuotaExceeded
from stackbox.common.http.context import RequestContext
from stackbox.network import hoststate
from stackbox.network.defaults import ensure_default_networks
from stackbox.network.service import NetworkService

ADMIN = RequestContext(request_id="r", project_id="padmin", roles=("admin", "member", "reader"))
DEMO = RequestContext(request_id="r", project_id="pdemo", roles=("member", "reader"))


def _service(url: str) -> NetworkService:
    migrate(url)
    return NetworkService(Database(url), Settings())


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def svc(request, tmp_path):
    if request.param == "sqlite":
        s = _service(f"sqlite:///{tmp_path / 'n.sqlite'}")
    else:
        s = _service(request.getfixturevalue("pg_database"))
    yield s
    s.db.dispose()


def _net(svc, ctx=DEMO, cidr="10.1.0.0/24", **subnet):
    n = svc.create_network(ctx, {"name": "n"})
    sn = svc.create_subnet(ctx, {"network_id": n["id"], "cidr": cidr, **subnet})
    return n, sn


def test_concurrent_port_creates_never_share_an_address(svc):
    n, sn = _net(svc, cidr="10.1.0.0/26", enable_dhcp=False)
    svc.update_quota(ADMIN, "pdemo", {"port": 1000})
    results, failures = [], []

    def worker():
        for _ in range(6):
            try:
                results.append(svc.create_port(DEMO, {"network_id": n["id"]}))
            except Exception as e:   # noqa: BLE001 - recorded and asserted below
                failures.append(e)
    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:3]
    ips = [p["fixed_ips"][0]["ip_address"] for p in results]
    assert len(ips) == 48 and len(set(ips)) == 48
    macs = [p["mac_address"] for p in results]
    assert len(set(macs)) == 48
    # the pool of a /26 holds 61 addresses: 13 left, then a clear 409
    for _ in range(13):
        svc.create_port(DEMO, {"network_id": n["id"]})
    with pytest.raises(Conflict) as e:
        svc.create_port(DEMO, {"network_id": n["id"]})
    assert e.value.neutron_type == "IpAddressGenerationFailure"


def test_duplicate_fixed_ip_is_409_and_leaves_nothing(svc):
    n, sn = _net(svc)
    svc.create_port(DEMO, {"network_id": n["id"], "fixed_ips": [{"ip_address": "10.1.0.50"}]})
    before = len(svc.list_ports(ADMIN))
    with pytest.raises(Conflict) as e:
        svc.create_port(DEMO, {"network_id": n["id"],
                               "fixed_ips": [{"ip_address": "10.1.0.50"}]})
    assert e.value.neutron_type == "IpAddressInUse" and e.value.field == "fixed_ips"
    assert len(svc.list_ports(ADMIN)) == before


def test_server_ports_addresses_and_lookup(svc):
    ensure_default_networks(svc, Settings(), admin_project="padmin", demo_project="pdemo")
    private = next(n for n in svc.list_networks(DEMO) if n["name"] == "private")
    public = next(n for n in svc.list_networks(DEMO) if n["name"] == "public")
    port = svc.create_server_port(DEMO, network_id=private["id"], server_id="srv1",
                                  host_id="host-a", security_groups=["default"],
                                  hostname="vm1")
    assert port["tap"] == hoststate.tap_name(port["id"]) and len(port["tap"]) <= 15
    assert port["mtu"] == 1500 and port["network_name"] == "private"
    assert port["device_owner"] == "compute:nova" and port["status"] == "ACTIVE"
    ip = port["fixed_ips"][0]["ip_address"]
    fip = svc.create_floatingip(DEMO, {"floating_network_id": public["id"],
                                       "port_id": port["id"]})
    addrs = svc.server_addresses(["srv1", "nothing"])
    assert addrs["nothing"] == {}
    assert addrs["srv1"]["private"] == [
        {"addr": ip, "version": 4, "mac": port["mac_address"], "type": "fixed"},
        {"addr": fip["floating_ip_address"], "version": 4, "mac": port["mac_address"],
         "type": "floating"}]
    found = svc.lookup_port_by_ip(private["id"], ip)
    assert found["device_id"] == "srv1" and found["floating_ips"] == [
        fip["floating_ip_address"]]
    assert svc.lookup_port_by_ip(private["id"], "10.0.0.60") is None
    assert svc.lookup_port_by_ip(public["id"], ip) is None

    state = svc.host_state("host-a")
    assert [p.id for p in state.bound_ports] == [port["id"]]
    assert svc.host_state("host-b").bound_ports == ()
    net = next(x for x in state.networks if x.id == private["id"])
    assert net.has_router and net.subnets[0].gateway_ip == "10.0.0.1"
    assert {p.device_owner for p in net.ports} == {"compute:nova", "network:dhcp",
                                                   "network:router_interface"}
    router = state.routers[0]
    assert router.gateway_ip and router.external_gateway == "172.24.4.1"
    assert router.enable_snat and router.interfaces[0].ip == "10.0.0.1"
    assert router.floating_ips[0].fixed_ip == ip
    group = state.security_groups[0]
    assert ip in group.member_ips
    assert {(r.direction, r.ethertype, r.remote_group_id) for r in group.rules} == {
        ("egress", "IPv4", None), ("egress", "IPv6", None),
        ("ingress", "IPv4", group.id), ("ingress", "IPv6", group.id)}

    info = svc.server_network_info("srv1")
    assert [i["port_id"] for i in info] == [port["id"]]
    assert info[0]["mtu"] == 1500 and info[0]["tap"] == port["tap"]
    assert info[0]["fixed_ips"][0]["cidr"] == "10.0.0.0/26"
    assert info[0]["fixed_ips"][0]["gateway_ip"] == "10.0.0.1"

    svc.delete_server_ports("srv1")
    assert svc.server_network_info("srv1") == []
    assert svc.server_addresses(["srv1"]) == {"srv1": {}}
    assert svc.get_floatingip(DEMO, fip["id"])["port_id"] is None


def test_user_port_is_kept_and_unbound(svc):
    n, _ = _net(svc)
    p = svc.create_port(DEMO, {"network_id": n["id"]})
    bound = svc.create_server_port(DEMO, port_id=p["id"], server_id="s2", host_id="h")
    assert bound["device_id"] == "s2" and bound["binding:host_id"] == "h"
    with pytest.raises(Conflict):
        svc.create_server_port(DEMO, port_id=p["id"], server_id="s3", host_id="h")
    svc.delete_server_ports("s2", keep_port_ids=[p["id"]])
    kept = svc.get_port(DEMO, p["id"])
    assert kept["device_id"] == "" and kept["binding:host_id"] == ""


def test_default_networks_are_idempotent(svc):
    made = ensure_default_networks(svc, Settings(), admin_project="padmin",
                                   demo_project="pdemo")
    assert made[:5] == ["public", "public-subnet", "private", "private-subnet", "router1"]
    assert ensure_default_networks(svc, Settings(), admin_project="padmin",
                                   demo_project="pdemo") == []
    assert len(svc.list_networks(ADMIN)) == 2 and len(svc.list_routers(ADMIN)) == 1


def test_concurrent_creates_never_exceed_the_quota(svc):
    """16 threads race to create security groups (the default group counts
    too) and ports against small quotas: the limit holds exactly."""
    n, _sn = _net(svc, cidr="10.2.0.0/24", enable_dhcp=False)
    svc.update_quota(ADMIN, "pdemo", {"port": 5, "security_group": 4})
    made, refused, other = [], [], []

    def worker(kind):
        try:
            if kind == "port":
                made.append(svc.create_port(DEMO, {"network_id": n["id"]}))
            else:
                made.append(svc.create_security_group(DEMO, {"name": "g"}))
        except QuotaExceeded as e:
            refused.append(e)
        except Exception as e:   # noqa: BLE001 - recorded and asserted below
            other.append(e)
    threads = [threading.Thread(target=worker, args=(kind,))
               for kind in ("port", "security_group") for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not other, other[:3]
    ports = svc.list_ports(DEMO, network_id=n["id"])
    groups = svc.list_security_groups(DEMO)
    assert len(ports) == 5 and len(groups) == 4, (len(ports), len(groups))
    assert len(refused) == 32 - len(made)


def test_concurrent_vxlan_networks_get_distinct_vnis(svc):
    """Two projects creating VXLAN networks at once never share a VNI."""
    made, other = [], []

    def worker(ctx):
        try:
            made.append(svc.create_network(ctx, {"name": "v",
                                                 "provider:network_type": "vxlan"}))
        except Exception as e:   # noqa: BLE001 - recorded and asserted below
            other.append(e)
    other_admin = RequestContext(request_id="r", project_id="padmin2",
                                 roles=("admin", "member", "reader"))
    threads = [threading.Thread(target=worker, args=(ctx,))
               for ctx in (ADMIN, other_admin) * 6]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not other, other[:3]
    vnis = [n["provider:segmentation_id"] for n in made]
    assert len(vnis) == 12 and len(set(vnis)) == 12, vnis


def test_batch_lookups_match_the_single_ones(svc):
    """The metadata server reads a boot storm's ports in batches: the batch
    answers must be exactly the one-at-a-time answers."""
    n, sn = _net(svc, cidr="10.1.0.0/24")
    n2, _ = _net(svc, cidr="10.2.0.0/24")
    ports = [svc.create_server_port(DEMO, network_id=n["id"], server_id=f"srv{i}",
                                    host_id="h") for i in range(3)]
    second = svc.create_server_port(DEMO, network_id=n2["id"], server_id="srv0", host_id="h")
    ips = [p["fixed_ips"][0]["ip_address"] for p in ports]
    found = svc.lookup_ports_by_ip(n["id"], ips + ["10.1.0.250"])
    assert set(found) == set(ips)
    assert found == {ip: svc.lookup_port_by_ip(n["id"], ip) for ip in ips}
    assert svc.lookup_ports_by_ip(n2["id"], ips) == {}
    infos = svc.servers_network_info(["srv0", "srv1", "nothing"])
    assert infos["nothing"] == []
    assert [i["port_id"] for i in infos["srv0"]] == [ports[0]["id"], second["id"]]
    assert infos == {sid: svc.server_network_info(sid) for sid in ("srv0", "srv1", "nothing")}


def test_metadata_source_many_matches_one_at_a_time(svc):
    from types import SimpleNamespace

    from stackbox.metadata.sources import Lookup
    n, sn = _net(svc, cidr="10.1.0.0/24")
    ports = [svc.create_server_port(DEMO, network_id=n["id"], server_id=f"srv{i}",
                                    host_id="h") for i in range(3)]
    servers = {f"srv{i}": SimpleNamespace(
        id=f"srv{i}", name=f"vm{i}", hostname=f"vm{i}", project_id="pdemo",
        availability_zone="nova", launch_index=0, reservation_id="r", flavor={"name": "f"},
        image_id="", key_name=None, key_data=None, user_data=None, metadata_={},
        security_groups=["default"]) for i in range(2)}           # srv2 has no server row

    class Compute:
        def get_servers(self, ctx, ids):
            return {i: servers[i] for i in ids if i in servers}
    lookup = Lookup(Compute(), svc)
    ips = [p["fixed_ips"][0]["ip_address"] for p in ports]
    many = lookup.many(n["id"], ips + ["10.1.0.250"])
    assert set(many) == set(ips[:2])
    assert [lookup(n["id"], ip) for ip in ips] == [many[ips[0]], many[ips[1]], None]
    assert many[ips[1]].uuid == "srv1" and many[ips[1]].interfaces[0].ip == ips[1]
