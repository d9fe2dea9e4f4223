#!/usr/bin/env python3
"""How long the network agent takes to build a host and to check a
converged one, for N networks (each with DHCP, one router, ports with a
security group). Prints medians of interleaved runs; removes everything.

    sudo .venv/bin/python bench/network/agent_pass.py --networks 20 --ports 2 --rounds 3

Creates only `sbx` objects named after random ids, on bridges connected to
nothing; the external bridge is made by the agent (no uplink).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from stackbox.network import hoststate as hs
from stackbox.network.agent import NetworkAgent


def uid() -> str:
    return str(uuid.uuid4())


def build_state(n_networks: int, n_ports: int, ext_bridge: str) -> hs.HostState:
    ext, ext_sub = uid(), uid()
    nets = [hs.NetworkState(
        id=ext, mtu=1500, network_type="flat", physical_network="bench", external=True,
        subnets=(hs.SubnetState(id=ext_sub, cidr="100.64.0.0/16", ip_version=4,
                                gateway_ip="100.64.0.1", enable_dhcp=False),))]
    routers, bound = [], []
    sg = hs.SecurityGroupState(id=uid(), rules=(
        hs.SecurityGroupRuleState(id=uid(), direction="egress", ethertype="IPv4", protocol=None),
        hs.SecurityGroupRuleState(id=uid(), direction="ingress", ethertype="IPv4",
                                  protocol="tcp", port_range_min=22, port_range_max=22),))
    for i in range(n_networks):
        net, sub = uid(), uid()
        base = f"10.{i // 250}.{i % 250}"
        ports = [hs.PortState(id=uid(), network_id=net, mac=f"fa:16:3e:00:{i % 250:02x}:02",
                              fixed_ips=((sub, f"{base}.2"),), device_owner="network:dhcp",
                              device_id="dhcp")]
        for j in range(n_ports):
            ports.append(hs.PortState(
                id=uid(), network_id=net, mac=f"fa:16:3e:{j:02x}:{i % 250:02x}:10",
                fixed_ips=((sub, f"{base}.{10 + j}"),), device_owner="compute:nova",
                device_id=uid(), security_group_ids=(sg.id,)))
        bound += ports[1:]
        nets.append(hs.NetworkState(
            id=net, mtu=1450, network_type="local", has_router=True,
            subnets=(hs.SubnetState(id=sub, cidr=f"{base}.0/24", ip_version=4,
                                    gateway_ip=f"{base}.1", enable_dhcp=True),),
            ports=tuple(ports)))
        routers.append(hs.RouterState(
            id=uid(), gateway_network_id=ext, gateway_ip=f"100.64.{i // 250}.{10 + i % 250}",
            gateway_prefixlen=16, gateway_mac=f"fa:16:3e:ff:{i % 250:02x}:01",
            external_gateway="100.64.0.1",
            interfaces=(hs.RouterInterfaceState(port_id=uid(), network_id=net,
                                                mac=f"fa:16:3e:00:{i % 250:02x}:01",
                                                ip=f"{base}.1", prefixlen=24),)))
    return hs.HostState(host_id="bench", networks=tuple(nets), routers=tuple(routers),
                        security_groups=(sg,), bound_ports=tuple(bound))


def one_round(args) -> tuple[float, float, float]:
    ext_bridge = f"sbx-be{uuid.uuid4().hex[:6]}"
    state = build_state(args.networks, args.ports, ext_bridge)
    holder = {"state": state}
    state_dir = Path(tempfile.mkdtemp(prefix="sbx-bench-net-"))
    agent = NetworkAgent(state_dir=state_dir,
                         desired=lambda: holder["state"], bridge_mappings={"bench": ext_bridge})
    try:
        t0 = time.monotonic()
        report = agent.reconcile_once()
        build = time.monotonic() - t0
        if report.errors:
            raise SystemExit(f"errors: {report.errors[:3]}")
        t0 = time.monotonic()
        report = agent.reconcile_once()
        steady = time.monotonic() - t0
        if report.changes:
            raise SystemExit(f"not converged: {report.changes[:3]}")
        holder["state"] = hs.HostState(host_id="bench")
        t0 = time.monotonic()
        agent.reconcile_once()
        teardown = time.monotonic() - t0
        return build, steady, teardown
    finally:
        agent.cleanup_all()
        shutil.rmtree(state_dir, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--networks", type=int, default=20)
    p.add_argument("--ports", type=int, default=2, help="guest ports per network")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    results = [one_round(args) for _ in range(args.rounds)]
    for name, i in (("build", 0), ("converged pass", 1), ("teardown", 2)):
        values = [r[i] for r in results]
        print(f"{name:15s} median {statistics.median(values):7.2f} s  "
              f"(runs: {', '.join(f'{v:.2f}' for v in values)})")
    print(f"for {args.networks} networks (DHCP + router each), "
          f"{args.networks * args.ports} filtered ports")


if __name__ == "__main__":
    main()
