"""`stackbox ring create|add|set-weight|remove|rebalance|show` and
`stackbox object locate`: the operator's view of object placement (what
swift-ring-builder and swift-get-nodes do for Swift)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from stackbox.objectstore.ring import Ring, RingBuilder


def builder_path(data_dir: Path) -> Path:
    return data_dir / "rings" / "object.builder.json"


def ring_path(data_dir: Path) -> Path:
    return data_dir / "rings" / "object.ring.json"


def _load(data_dir: Path) -> RingBuilder:
    path = builder_path(data_dir)
    if not path.exists():
        raise RuntimeError(f"no ring builder at {path}; create one with "
                           f"`stackbox ring create --part-power N --replicas R`")
    return RingBuilder.load(str(path))


def _save(builder: RingBuilder, data_dir: Path) -> None:
    builder_path(data_dir).parent.mkdir(parents=True, exist_ok=True)
    builder.save(str(builder_path(data_dir)))


def ring_create(args, data_dir: Path) -> int:
    if builder_path(data_dir).exists() and not args.force:
        raise RuntimeError(f"{builder_path(data_dir)} exists; --force replaces it (every "
                           f"object would move)")
    _save(RingBuilder(args.part_power, args.replicas), data_dir)
    print(f"created ring builder: part power {args.part_power} "
          f"({1 << args.part_power} partitions), {args.replicas} replicas")
    return 0


def ring_add(args, data_dir: Path) -> int:
    b = _load(data_dir)
    dev = b.add_device(args.id, zone=args.zone, weight=args.weight, path=args.path,
                       host=args.host)
    _save(b, data_dir)
    print(f"added device {dev.id} zone {dev.zone} weight {dev.weight:g} {dev.host}:{dev.path}; "
          f"run `stackbox ring rebalance`")
    return 0


def ring_set_weight(args, data_dir: Path) -> int:
    b = _load(data_dir)
    b.set_weight(args.id, args.weight)
    _save(b, data_dir)
    print(f"device {args.id} weight {args.weight:g}; run `stackbox ring rebalance`")
    return 0


def ring_remove(args, data_dir: Path) -> int:
    b = _load(data_dir)
    b.remove_device(args.id)
    _save(b, data_dir)
    print(f"device {args.id} drained; it leaves the ring at the next rebalance")
    return 0


def ring_rebalance(args, data_dir: Path) -> int:
    b = _load(data_dir)
    moved = b.rebalance()
    _save(b, data_dir)
    ring_path(data_dir).parent.mkdir(parents=True, exist_ok=True)
    b.save(str(ring_path(data_dir)))
    total = b.parts * b.replicas
    print(f"rebalanced: {moved} of {total} partition-replicas assigned to a new device "
          f"({100.0 * moved / total:.1f}%); ring written to {ring_path(data_dir)}")
    return 0


def ring_show(args, data_dir: Path) -> int:
    b = _load(data_dir)
    print(f"part power {b.part_power} ({b.parts} partitions), {b.replicas} replicas, "
          f"{len(b.devices)} devices, rebalanced {b.rebalances} times")
    counts: dict[int, int] = {}
    if ring_path(data_dir).exists():
        ring = Ring.load(str(ring_path(data_dir)))
        for part in range(ring.parts):
            for dev in ring.primary_devices(part):
                counts[dev.id] = counts.get(dev.id, 0) + 1
    # Replicas of a partition spread over zones first, so a device's share
    # follows its zone's size as well as its weight.
    print(f"{'id':>4} {'zone':>5} {'weight':>8} {'parts':>7} {'share':>7}  host:path")
    total = b.parts * b.replicas
    for dev in sorted(b.devices.values(), key=lambda d: d.id):
        n = counts.get(dev.id, 0)
        print(f"{dev.id:>4} {dev.zone:>5} {dev.weight:>8g} {n:>7} {100.0 * n / total:>6.1f}%"
              f"  {dev.host}:{dev.path}")
    return 0


def object_locate(args, data_dir: Path) -> int:
    path = ring_path(data_dir)
    if not path.exists():
        raise RuntimeError(f"no ring at {path}; run `stackbox ring rebalance` first")
    where = Ring.load(str(path)).locate(args.path, handoffs=args.handoffs)
    if args.json:
        print(json.dumps(where, indent=2, sort_keys=True))
        return 0
    print(f"account   {where['account']}\ncontainer {where['container'] or '-'}\n"
          f"object    {where['object'] or '-'}\npartition {where['partition']}\n"
          f"hash      {where['hash']}")
    for dev in where["primaries"]:
        print(f"primary   replica {dev['replica']}: device {dev['id']} zone {dev['zone']} "
              f"{dev['host']}:{dev['path']}")
    for dev in where["handoffs"]:
        print(f"handoff   device {dev['id']} zone {dev['zone']} {dev['host']}:{dev['path']}")
    return 0


def object_server(args, data_dir: Path) -> int:
    """Serve this host's devices to the proxies of the ring (objectserver.py)."""
    import uvicorn

    from stackbox.objectstore.diskfile import DiskFileManager
    from stackbox.objectstore.objectserver import backend_token, build_app
    from stackbox.objectstore.remote import parse_address
    path = ring_path(data_dir)
    if not path.exists():
        raise RuntimeError(f"no ring at {path}: copy the proxy's ring file there (the "
                           f"object server needs its hash prefix and suffix)")
    ring = Ring.load(str(path))
    host, port = parse_address(args.bind)
    devices = args.devices or str(data_dir / "objects")
    manager = DiskFileManager(devices, hash_prefix=ring.hash_prefix,
                              hash_suffix=ring.hash_suffix, chunk_size=1024 * 1024)
    print(f"object server for the devices under {devices} on {host}:{port}", flush=True)
    uvicorn.run(build_app(manager, backend_token(ring)), host=host, port=port,
                log_level="warning", access_log=False)
    return 0


def add_parsers(sub, common: argparse.ArgumentParser, run) -> None:
    """Register the commands; `run(fn)` wraps fn(args, data_dir)."""
    ring = sub.add_parser("ring", help="object ring: placement of replicas on devices")
    rs = ring.add_subparsers(dest="ring_command", required=True)
    p = rs.add_parser("create", parents=[common], help="new ring builder")
    p.add_argument("--part-power", type=int, required=True, help="2**N partitions (1..24)")
    p.add_argument("--replicas", type=int, required=True)
    p.add_argument("--force", action="store_true")
    p.set_defaults(fn=run(ring_create))
    p = rs.add_parser("add", parents=[common], help="add a device (a directory)")
    p.add_argument("--id", type=int, required=True)
    p.add_argument("--zone", type=int, required=True)
    p.add_argument("--weight", type=float, required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--host", default="local")
    p.set_defaults(fn=run(ring_add))
    p = rs.add_parser("set-weight", parents=[common], help="change a device's weight")
    p.add_argument("--id", type=int, required=True)
    p.add_argument("--weight", type=float, required=True)
    p.set_defaults(fn=run(ring_set_weight))
    p = rs.add_parser("remove", parents=[common], help="drain and remove a device")
    p.add_argument("--id", type=int, required=True)
    p.set_defaults(fn=run(ring_remove))
    rs.add_parser("rebalance", parents=[common],
                  help="assign partitions and write the ring").set_defaults(
        fn=run(ring_rebalance))
    rs.add_parser("show", parents=[common], help="devices, weights, partitions").set_defaults(
        fn=run(ring_show))
    obj = sub.add_parser("object", help="object placement")
    os_ = obj.add_subparsers(dest="object_command", required=True)
    p = os_.add_parser("locate", parents=[common],
                       help="where the replicas of /account/container/object live")
    p.add_argument("path")
    p.add_argument("--handoffs", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=run(object_locate))
    p = sub.add_parser("object-server", parents=[common],
                       help="serve this host's object devices to the ring's proxies")
    p.add_argument("--bind", default="127.0.0.1:6200", help="HOST:PORT to listen on")
    p.add_argument("--devices", default=None,
                   help="directory holding the device directories (default: "
                        "<data_dir>/objects)")
    p.set_defaults(fn=run(object_server))
