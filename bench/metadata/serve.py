#!/usr/bin/env python3
"""The metadata server as the benchmark runs it: one process, the real
MetadataServer and MetadataPlumbing, serving COUNT instances (source
FIRST_IP + i) in NAMESPACE. Documents are built per instance on first use,
as in production. The lookup:

- `db` (production on SQLite): stackbox.metadata.sources.Lookup over the
  network and compute services on the SQLite database
  bench/metadata/database.py made, queued lookups in batches (`Lookup.many`)
  on the event loop;
- `db-thread` (production on PostgreSQL): the same in worker threads;
- `db-serial`: the same lookup in worker threads one instance at a time
  (production before batches);
- `inline`: an in-memory lookup on the event loop (no database: a ceiling
  for the cold path);
- `thread`: the in-memory lookup in worker threads.

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

from bench.metadata import database  # noqa: E402
from stackbox.metadata.content import InstanceMetadata, Interface  # noqa: E402
from stackbox.metadata.plumbing import MetadataPlumbing  # noqa: E402
from stackbox.metadata.server import MetadataServer, new_event_loop  # noqa: E402

NETWORK = "bench-net"


def instance_for(ip: str, first: int, count: int, cidr: str) -> InstanceMetadata | None:
    index = int(ipaddress.ip_address(ip)) - first
    if not 0 <= index < count:
        return None
    # what the database of bench/metadata/database.py holds for instance `index`
    return InstanceMetadata(
        uuid=database.server_id(index), name=f"storm-{index}", hostname=f"storm-{index}",
        project_id=database.PROJECT, availability_zone="nova", instance_type="m1.tiny",
        reservation_id="r-bench", public_keys=(("bench", database.KEY),),
        user_data=database.USER_DATA, security_groups=("default",),
        interfaces=(Interface(port_id=database.port_id(index), mac=database.mac(index),
                              network_id=NETWORK, ip=ip, cidr=cidr, gateway=str(next(
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
    ap.add_argument("--lookup", choices=("db", "db-thread", "db-serial", "inline", "thread"), default="db",
                    help="see the module docstring")
    ap.add_argument("--database", help="the benchmark database's URL (db lookups)")
    ap.add_argument("--data-dir", type=Path, help="the services' data directory (db lookups)")
    return ap.parse_args()


def db_lookup(args):
    """The production lookup (network id, lookup)."""
    from stackbox.common.db import Database
    from stackbox.metadata.sources import Lookup
    compute, network = database.services(args.database, args.data_dir)
    lookup = Lookup(compute, network)
    network_id = database.network_id(Database(args.database))
    if args.lookup == "db-serial":
        return network_id, lambda net, ip: lookup(net, ip)      # no `many`
    return network_id, lookup


async def main(args) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    first = int(ipaddress.ip_address(args.first_ip))

    def lookup(network_id: str, ip: str) -> InstanceMetadata | None:
        if network_id != NETWORK:
            return None
        return instance_for(ip, first, args.count, args.cidr)

    network_id = NETWORK
    if args.lookup.startswith("db"):
        network_id, lookup = db_lookup(args)
    server = MetadataServer(lookup, cache_seconds=args.cache_seconds,
                            lookup_in_thread=args.lookup not in ("inline", "db"))
    plumbing = MetadataPlumbing(server, asyncio.get_running_loop())
    await plumbing.ensure_async(args.namespace, network_id)
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
