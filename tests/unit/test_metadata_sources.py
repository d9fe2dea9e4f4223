"""The production metadata source over real network and compute services on
a migrated SQLite database (rows as bench/metadata/database.py writes them):
the batch answers what one lookup at a time answers."""

from __future__ import annotations

import ipaddress

from bench.metadata import database
from stackbox.common.http.context import RequestContext
from stackbox.metadata.sources import Lookup

FIRST = "10.9.1.0"


def _ip(i: int) -> str:
    return str(ipaddress.ip_address(int(ipaddress.ip_address(FIRST)) + i))


def test_many_matches_one_at_a_time_on_real_services(tmp_path):
    url = f"sqlite:///{tmp_path / 'md.sqlite'}"
    network_id = database.create(url, cidr="10.9.0.0/16", first_ip=FIRST, count=5,
                                 data_dir=tmp_path)
    compute, network = database.services(url, tmp_path)
    try:
        lookup = Lookup(compute, network)
        ips = [_ip(i) for i in range(5)] + ["10.9.0.77"]
        many = lookup.many(network_id, ips)
        assert set(many) == set(ips[:5])
        for i, ip in enumerate(ips[:5]):
            assert lookup(network_id, ip) == many[ip]
            assert many[ip].uuid == database.server_id(i)
            assert many[ip].interfaces[0].ip == ip
            assert many[ip].interfaces[0].mac == database.mac(i)
            assert many[ip].user_data == database.USER_DATA
        assert lookup(network_id, "10.9.0.77") is None
        assert lookup("another-network", ips[0]) is None

        ids = [database.server_id(i) for i in range(3)] + ["missing"]
        stranger = RequestContext(request_id="r", project_id="other", roles=("member",))
        owner = RequestContext(request_id="r", project_id=database.PROJECT, roles=("member",))
        assert compute.get_servers(stranger, ids) == {}
        assert sorted(compute.get_servers(owner, ids)) == sorted(ids[:3])
    finally:
        network.db.dispose()
