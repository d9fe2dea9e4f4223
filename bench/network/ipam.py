#!/usr/bin/env python3
"""Network service at scale, at the service level (no HTTP): how fast server
ports are created on one big network, and what the agent's `host_state`,
the metadata server's `lookup_port_by_ip` and a filtered port list cost
with that many ports. A temporary SQLite database; nothing on the host.

    .venv/bin/python bench/network/ipam.py --ports 3000 [--threads 4]

Prints one line per figure. Run it on a quiet machine: the figures move with
load (a load average of 20 on 2 cores doubled them when first measured).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time

from stackbox.common.config import Settings
from stackbox.common.db import Database, migrate
from stackbox.common.http.context import RequestContext
from stackbox.network.service import NetworkService


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ports", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        url = f"sqlite:///{d}/bench.sqlite"
        migrate(url)
        svc = NetworkService(Database(url), Settings())
        ctx = RequestContext(request_id="bench", project_id="p",
                             roles=("admin", "member", "reader"))
        svc.update_quota(ctx, "p", {"port": -1})
        net = svc.create_network(ctx, {"name": "big"})
        svc.create_subnet(ctx, {"network_id": net["id"], "cidr": "10.0.0.0/16"})
        per_thread = args.ports // args.threads
        latencies: list[float] = []

        def worker(t: int) -> None:
            for i in range(per_thread):
                started = time.perf_counter()
                svc.create_server_port(ctx, network_id=net["id"], server_id=f"s{t}-{i}",
                                       host_id="h1")
                latencies.append(time.perf_counter() - started)
        started = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        lat = sorted(latencies)
        print(f"create_server_port: {len(lat)} in {wall:.1f} s = {len(lat) / wall:.0f}/s, "
              f"p50 {statistics.median(lat) * 1000:.1f} ms, "
              f"p99 {lat[int(len(lat) * 0.99) - 1] * 1000:.1f} ms ({args.threads} threads)")
        t = time.perf_counter()
        state = svc.host_state("h1")
        print(f"host_state: {time.perf_counter() - t:.2f} s for {len(state.bound_ports)} "
              f"bound ports")
        ips = [ip for p in state.bound_ports for _, ip in p.fixed_ips][:500]
        t = time.perf_counter()
        for ip in ips:
            assert svc.lookup_port_by_ip(net["id"], ip) is not None
        print(f"lookup_port_by_ip: {(time.perf_counter() - t) / len(ips) * 1000:.2f} ms each")
        t = time.perf_counter()
        svc.list_ports(ctx, network_id=net["id"])
        print(f"list_ports(network_id): {time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main()
