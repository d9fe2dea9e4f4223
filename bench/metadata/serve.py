#!/usr/bin/env python3
"""The metadata server as the benchmark runs it: one process, the real
MetadataServer and MetadataPlumbing, serving COUNT synthetic instances
(source FIRST_IP + i) in NAMESPACE. The lookup builds the instance from its
address, like a database row would be read; documents are built per
instance on first use, as in production.

Prints `ready` on stdout once the namespace is plumbed; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import resource
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from stackbox.metadata.content import InstanceMetadata, Interface  # noqa: E402
from stackbox.metadata.plumbing import MetadataPlumbing  # noqa: E402
from stackbox.metadata.server import MetadataServer, new_event_loop  # noqa: E402

NETWORK = "bench-net"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchmarkKeyBenchmarkKeyBenchmarkKey00 bench"


def instance_for(ip: str, first: int, count: int, cidr: str) -> InstanceMetadata | None:
    index = int(ipaddress.ip_address(ip)) - first
    if not 0 <= index < count:
        return None
    uuid = f"00000000-0000-4000-8000-{index:012x}"
    return InstanceMetadata(
        uuid=uuid, name=f"storm-{index}", hostname=f"storm-{index}", project_id="bench",
        availability_zone="nova", instance_type="m1.tiny",
        public_keys=(("bench", KEY),), user_data=b"#cloud-config\nruncmd: [true]\n",
        security_groups=("default",),
        # One MAC for all: the EC2 tree has the MAC in its paths, and every
        # simulated instance replays the same request sequence.
        interfaces=(Interface(port_id=f"port-{uuid}", mac="fa:16:3e:00:00:01", network_id=NETWORK,
                              ip=ip, cidr=cidr, gateway=str(next(
                                  ipaddress.ip_network(cidr).hosts()))),))


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--first-ip", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--cidr", required=True)
    ap.add_argument("--cache-seconds", type=float, default=5.0)
    ap.add_argument("--loop", choices=("auto", "asyncio"), default="auto",
                    help="auto: uvloop when installed, as MetadataThread does")
    ap.add_argument("--lookup", choices=("inline", "thread"), default="inline",
                    help="inline: the lookup reads memory on the event loop (an in-memory "
                    "port index); thread: in worker threads, as a database query runs")
    return ap.parse_args()


async def main(args) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    first = int(ipaddress.ip_address(args.first_ip))

    def lookup(network_id: str, ip: str) -> InstanceMetadata | None:
        if network_id != NETWORK:
            return None
        return instance_for(ip, first, args.count, args.cidr)

    server = MetadataServer(lookup, cache_seconds=args.cache_seconds,
                            lookup_in_thread=args.lookup == "thread")
    plumbing = MetadataPlumbing(server, asyncio.get_running_loop())
    await plumbing.ensure_async(args.namespace, NETWORK)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    print(f"stats {server.stats}", file=sys.stderr, flush=True)
    # Only the listener goes: the address on lo stays, as when stackbox
    # restarts (nginx in the same namespace listens on it too).
    await server.close()


if __name__ == "__main__":
    args = parse_args()
    loop = new_event_loop() if args.loop == "auto" else asyncio.new_event_loop()
    loop.run_until_complete(main(args))
    loop.close()
