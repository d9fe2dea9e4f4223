"""A Swift-like ring: names -> partitions -> devices.

A name is hashed (md5 of `/<account>/<container>/<obj>` wrapped in a per-ring
secret prefix/suffix) and the top `part_power` bits pick the partition. The
builder assigns each partition's replicas to devices; the assignment only
changes on `rebalance()`, so a name's location is stable between rebalances
and every node holding the same ring file agrees on it.

Placement rules, in priority order (Swift's, simplified):
1. replicas of one partition live on distinct devices;
2. they spread over as many zones as the zones' device counts allow
   (dispersion beats weight: a very heavy zone still gets only one replica of
   each partition when there are >= `replicas` zones);
3. within that, devices get partitions in proportion to their weight;
4. a rebalance moves as few partition-replicas as it can, and prefers not to
   move two replicas of one partition at once (so one copy stays put while
   replication copies the others).

The assignment is stored as one uint16 array per replica (device id per
partition), like Swift's `_replica2part2dev`; plain Python lists would cost
~30x the memory. Rebalance is pure Python and linear in partitions x replicas
x devices: fine up to part_power ~18; 24 is allowed but slow to build.

File format: versioned JSON `{"ring": {...}, "sha256": "..."}` where sha256
covers the canonical serialisation of "ring" (sort_keys, compact). The same
file serves the builder (weights, pending removals) and the read-only `Ring`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import secrets
import struct
import sys
from array import array
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Iterator

from stackbox.common.errors import BadRequest, Conflict, InvalidState, NotFound
from stackbox.common import fsutil
from stackbox.objectstore.errors import CorruptFile
from stackbox.objectstore.hashing import hash_path

FORMAT = "stackbox-ring"
VERSION = 1
NONE = 0xFFFF            # "no device" marker in the uint16 table
MAX_DEVICE_ID = NONE - 1
MAX_PART_POWER = 24


@dataclass(frozen=True)
class Device:
    id: int
    zone: int
    weight: float
    path: str
    host: str = "local"

    def to_dict(self) -> dict:
        return asdict(self)


# --- validation --------------------------------------------------------------

def _int_in(name: str, value, lo: int, hi: int) -> int:
    # bool is an int subclass; `replicas=True` is a bug, not 1.
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise BadRequest(f"{name} must be an integer in {lo}..{hi}, got {value!r}", field=name)
    return value


def _weight(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0:
        raise BadRequest(f"weight must be a finite number >= 0, got {value!r}", field="weight")
    return float(value)


def _text(name: str, value) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{name} must be a non-empty string", field=name)
    return value


# --- target computation ------------------------------------------------------

def _waterfill(weights: dict, caps: dict, total: float) -> dict:
    """Split `total` in proportion to weights, but no key above its cap; what a
    capped key cannot take is shared among the others (water-filling)."""
    alloc: dict = {}
    free = {k: w for k, w in weights.items() if w > 0}
    remaining = float(total)
    while free:
        wsum = sum(free.values())
        share = {k: remaining * w / wsum for k, w in free.items()}
        over = [k for k in free if share[k] >= caps[k]]
        if not over:
            alloc.update(share)
            break
        for k in over:
            alloc[k] = float(caps[k])
            remaining -= caps[k]
            del free[k]
    for k in weights:
        alloc.setdefault(k, 0.0)
    return alloc


def _integerize(frac: dict, caps: dict, total: int) -> dict:
    """Largest-remainder rounding that keeps the sum exact and respects caps."""
    out = {k: min(int(math.floor(v + 1e-9)), caps[k]) for k, v in frac.items()}
    by_remainder = sorted(frac, key=lambda k: (-(frac[k] - out[k]), k))
    short = total - sum(out.values())
    while short > 0:
        progressed = False
        for k in by_remainder:
            if short and out[k] < caps[k]:
                out[k] += 1
                short -= 1
                progressed = True
        if not progressed:
            raise InvalidState("not enough device capacity for all replicas", field="replicas")
    for k in reversed(by_remainder):       # float error can over-count by one
        if short < 0 and out[k] > 0:
            out[k] -= 1
            short += 1
    return out


def _max_per_zone(zone_sizes: dict[int, int], replicas: int) -> int:
    """Fewest replicas-per-zone that still lets every partition place all of
    its replicas: 1 when there are >= replicas zones (full dispersion)."""
    limit = 1
    while sum(min(limit, n) for n in zone_sizes.values()) < replicas:
        limit += 1
    return limit


# --- file encoding -----------------------------------------------------------

def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _encode_table(table: list[array]) -> list[str]:
    out = []
    for row in table:
        row = array("H", row)
        if sys.byteorder != "little":
            row.byteswap()
        out.append(base64.b64encode(row.tobytes()).decode("ascii"))
    return out


def _decode_table(rows: list[str], parts: int, replicas: int, path: str) -> list[array]:
    if len(rows) != replicas:
        raise CorruptFile(f"assignment has {len(rows)} rows, expected {replicas}", path=path)
    table = []
    for text in rows:
        row = array("H")
        row.frombytes(base64.b64decode(text, validate=True))
        if sys.byteorder != "little":
            row.byteswap()
        if len(row) != parts:
            raise CorruptFile(f"assignment row has {len(row)} parts, expected {parts}", path=path)
        table.append(row)
    return table


def _read_file(path: str) -> dict:
    """Read and verify a ring file; every failure names the file and the fix."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise NotFound(f"ring file {path} does not exist", field="ring") from None
    try:
        doc = json.loads(raw)
        body, digest = doc["ring"], doc["sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptFile(f"not a ring file ({exc}); restore it from a backup "
                          "or copy it from another node", path=path) from None
    if hashlib.sha256(_canonical(body)).hexdigest() != digest:
        raise CorruptFile("checksum mismatch: the ring file is corrupt or was edited "
                          "by hand; restore it from a backup or another node", path=path)
    if body.get("format") != FORMAT or body.get("version") != VERSION:
        raise CorruptFile(f"unsupported ring format {body.get('format')!r} "
                          f"version {body.get('version')!r} (this code reads "
                          f"{FORMAT} v{VERSION})", path=path)
    return body


# --- builder -----------------------------------------------------------------

class RingBuilder:
    """Mutable ring state: devices, weights and the partition assignment."""

    def __init__(self, part_power: int, replicas: int, *,
                 hash_prefix: str | None = None, hash_suffix: str | None = None):
        self.part_power = _int_in("part_power", part_power, 1, MAX_PART_POWER)
        # The upper bound against the device count is checked at rebalance time.
        self.replicas = _int_in("replicas", replicas, 1, MAX_DEVICE_ID)
        self.parts = 1 << part_power
        self.hash_prefix = secrets.token_hex(8) if hash_prefix is None else hash_prefix
        self.hash_suffix = secrets.token_hex(8) if hash_suffix is None else hash_suffix
        self.devices: dict[int, Device] = {}
        self._removing: set[int] = set()       # still referenced by the table
        self._table: list[array] | None = None
        self.rebalances = 0

    # -- devices --
    def add_device(self, id: int, *, zone: int, weight: float, path: str,
                   host: str = "local") -> Device:
        _int_in("id", id, 0, MAX_DEVICE_ID)
        if id in self.devices:
            raise Conflict(f"device {id} already exists", field="id")
        dev = Device(id=id, zone=_int_in("zone", zone, 0, 2**31 - 1), weight=_weight(weight),
                     path=_text("path", path), host=_text("host", host))
        self.devices[id] = dev
        return dev

    def _get(self, id: int) -> Device:
        if id not in self.devices or id in self._removing:
            raise NotFound(f"device {id} does not exist", field="id")
        return self.devices[id]

    def set_weight(self, id: int, weight: float) -> None:
        dev = self._get(id)
        self.devices[id] = Device(dev.id, dev.zone, _weight(weight), dev.path, dev.host)

    def remove_device(self, id: int) -> None:
        """Drain now, forget at the next rebalance: until then the table may
        still point at it, and readers need its path to find the data."""
        self._get(id)
        if self._table is None:
            del self.devices[id]
        else:
            self.set_weight(id, 0.0)
            self._removing.add(id)

    # -- rebalance --
    def _targets(self, active: dict[int, Device]) -> tuple[dict[int, int], int]:
        """Partition-replica count each active device should hold."""
        zones: dict[int, list[Device]] = {}
        for dev in active.values():
            zones.setdefault(dev.zone, []).append(dev)
        per_zone = _max_per_zone({z: len(d) for z, d in zones.items()}, self.replicas)
        total = self.parts * self.replicas
        zcaps = {z: self.parts * min(per_zone, len(d)) for z, d in zones.items()}
        zweights = {z: sum(d.weight for d in devs) for z, devs in zones.items()}
        zquota = _integerize(_waterfill(zweights, zcaps, total), zcaps, total)
        targets: dict[int, int] = {}
        for z, devs in zones.items():
            w = {d.id: d.weight for d in devs}
            caps = {d.id: self.parts for d in devs}     # one replica per part per device
            targets.update(_integerize(_waterfill(w, caps, zquota[z]), caps, zquota[z]))
        return targets, per_zone

    def rebalance(self, *, seed: int | None = None) -> int:
        """Reassign partitions; returns how many partition-replicas changed
        device (on the first rebalance: all of them)."""
        active = {i: d for i, d in self.devices.items() if d.weight > 0}
        if not 1 <= self.replicas <= len(active):
            raise BadRequest(f"replicas ({self.replicas}) must be between 1 and the number "
                             f"of devices with weight > 0 ({len(active)})", field="replicas")
        targets, per_zone = self._targets(active)
        rng = random.Random(self.rebalances if seed is None else seed)
        if self._table is None:
            self._table = [array("H", [NONE]) * self.parts for _ in range(self.replicas)]
        table = self._table
        before = [array("H", row) for row in table]

        counts: Counter = Counter()
        owned: dict[int, list[tuple[int, int]]] = {i: [] for i in active}
        unassigned: list[tuple[int, int]] = []
        touched: set[int] = set()
        for part in range(self.parts):
            devs: set[int] = set()
            zcount: Counter = Counter()
            for r in range(self.replicas):
                d = table[r][part]
                # Gone or drained device, duplicate device, or too many in a zone.
                if d == NONE or d not in active or d in devs \
                        or zcount[active[d].zone] >= per_zone:
                    table[r][part] = NONE
                    unassigned.append((part, r))
                    touched.add(part)
                    continue
                devs.add(d)
                zcount[active[d].zone] += 1
                counts[d] += 1
                owned[d].append((part, r))

        # Shed load from overweight devices, preferring partitions that have
        # not lost a replica yet in this rebalance.
        for d in sorted(active):
            excess = counts[d] - targets[d]
            if excess <= 0:
                continue
            slots = owned[d]
            rng.shuffle(slots)
            slots.sort(key=lambda s: s[0] in touched)
            for part, r in slots[:excess]:
                table[r][part] = NONE
                unassigned.append((part, r))
                touched.add(part)
                counts[d] -= 1

        rng.shuffle(unassigned)
        for part, r in unassigned:
            table[r][part] = self._choose(part, active, targets, counts, per_zone)
            counts[table[r][part]] += 1
        self._repair(active, targets, counts, per_zone)

        for d in self._removing:
            self.devices.pop(d, None)
        self._removing.clear()
        self.rebalances += 1
        return sum(1 for r in range(self.replicas) for p in range(self.parts)
                   if before[r][p] != table[r][p])

    def _part_state(self, part: int, active: dict[int, Device]) -> tuple[set, Counter]:
        devs = {row[part] for row in self._table} - {NONE}
        return devs, Counter(active[d].zone for d in devs)

    def _choose(self, part, active, targets, counts, per_zone) -> int:
        devs, zcount = self._part_state(part, active)
        best, best_key = None, None
        for d, dev in active.items():
            if d in devs or zcount[dev.zone] >= per_zone:
                continue
            wanted = targets[d] - counts[d]
            key = (wanted > 0, -zcount[dev.zone], wanted, -d)
            if best_key is None or key > best_key:
                best, best_key = d, key
        if best is None:   # cannot happen given _max_per_zone; stay safe anyway
            best = max((d for d in active if d not in devs),
                       key=lambda d: (targets[d] - counts[d], -d))
        return best

    def _repair(self, active, targets, counts, per_zone) -> None:
        """Greedy placement in random order can strand a few replicas on an
        over-full device when every under-full device's zone is already used
        by that partition; move such replicas one at a time where legal."""
        for _ in range(len(active) * 4):
            over = [d for d in active if counts[d] > targets[d]]
            under = [d for d in active if counts[d] < targets[d]]
            if not over or not under:
                return
            moved = False
            for src in over:
                for part in range(self.parts):
                    if counts[src] <= targets[src]:
                        break
                    r = next((r for r, row in enumerate(self._table) if row[part] == src), None)
                    if r is None:
                        continue
                    devs, zcount = self._part_state(part, active)
                    zcount[active[src].zone] -= 1
                    for dst in under:
                        if counts[dst] < targets[dst] and dst not in devs \
                                and zcount[active[dst].zone] < per_zone:
                            self._table[r][part] = dst
                            counts[src] -= 1
                            counts[dst] += 1
                            moved = True
                            break
            if not moved:
                return

    # -- persistence --
    def _body(self) -> dict:
        return {
            "format": FORMAT, "version": VERSION,
            "part_power": self.part_power, "replicas": self.replicas,
            "hash_prefix": self.hash_prefix, "hash_suffix": self.hash_suffix,
            "devices": [self.devices[i].to_dict() for i in sorted(self.devices)],
            "removing": sorted(self._removing),
            "assignment": None if self._table is None else _encode_table(self._table),
            "rebalances": self.rebalances,
        }

    def save(self, path: str) -> None:
        body = self._body()
        doc = {"ring": body, "sha256": hashlib.sha256(_canonical(body)).hexdigest()}
        fsutil.atomic_write(path, json.dumps(doc, sort_keys=True, indent=1).encode("utf-8") + b"\n")

    @classmethod
    def load(cls, path: str) -> "RingBuilder":
        body = _read_file(path)
        try:
            b = cls(body["part_power"], body["replicas"],
                    hash_prefix=body["hash_prefix"], hash_suffix=body["hash_suffix"])
            for d in body["devices"]:
                b.devices[d["id"]] = Device(**d)
            b._removing = set(body["removing"])
            if body["assignment"] is not None:
                b._table = _decode_table(body["assignment"], b.parts, b.replicas, path)
            b.rebalances = body["rebalances"]
        except (KeyError, TypeError, BadRequest) as exc:
            raise CorruptFile(f"invalid ring content: {exc}", path=path) from None
        return b

    def get_ring(self) -> "Ring":
        """A read-only view of the current state, without a file round trip."""
        return Ring(self._body(), path="<builder>")


# --- read-only ring ----------------------------------------------------------

class Ring:
    """What the proxy and the object servers use: no mutation, only lookups."""

    def __init__(self, body: dict, *, path: str):
        if body.get("assignment") is None:
            raise InvalidState(f"ring {path} has never been rebalanced", field="ring")
        try:
            self.part_power = body["part_power"]
            self.replicas = body["replicas"]
            self.hash_prefix = body["hash_prefix"]
            self.hash_suffix = body["hash_suffix"]
            self.devices = {d["id"]: Device(**d) for d in body["devices"]}
            removing = set(body["removing"])
        except (KeyError, TypeError) as exc:
            raise CorruptFile(f"invalid ring content: {exc}", path=path) from None
        self.parts = 1 << self.part_power
        self._shift = 32 - self.part_power
        self._table = _decode_table(body["assignment"], self.parts, self.replicas, path)
        for row in self._table:
            if any(d != NONE and d not in self.devices for d in set(row)):
                raise CorruptFile("assignment refers to an unknown device", path=path)
        # Handoffs only go to devices that are meant to take data.
        self._handoff_pool = [d for i, d in sorted(self.devices.items())
                              if d.weight > 0 and i not in removing]

    @classmethod
    def load(cls, path: str) -> "Ring":
        return cls(_read_file(path), path=path)

    def hash_path(self, account: str, container: str | None = None,
                  obj: str | None = None) -> bytes:
        return hash_path(account, container, obj, prefix=self.hash_prefix, suffix=self.hash_suffix)

    def partition(self, account: str, container: str | None = None, obj: str | None = None) -> int:
        digest = self.hash_path(account, container, obj)
        return struct.unpack_from(">I", digest)[0] >> self._shift

    def _check_part(self, part: int) -> int:
        return _int_in("partition", part, 0, self.parts - 1)

    def primary_devices(self, part: int) -> list[Device]:
        self._check_part(part)
        return [self.devices[row[part]] for row in self._table if row[part] != NONE]

    def handoff_devices(self, part: int) -> Iterator[Device]:
        """Every non-primary device, in an order fixed per partition: first one
        device per zone the primaries do not use, then the rest. The order is
        a per-partition hash of device ids (rendezvous hashing), so handoff
        load for a failed device spreads over the cluster instead of all
        landing on its neighbour."""
        primaries = self.primary_devices(part)
        used_ids = {d.id for d in primaries}
        used_zones = {d.zone for d in primaries}

        def rank(dev: Device) -> bytes:
            key = f"{self.hash_prefix}/{part}/{dev.id}".encode()
            return hashlib.md5(key, usedforsecurity=False).digest()

        candidates = sorted((d for d in self._handoff_pool if d.id not in used_ids), key=rank)
        for dev in candidates:
            if dev.zone not in used_zones:
                used_zones.add(dev.zone)
                used_ids.add(dev.id)
                yield dev
        for dev in candidates:
            if dev.id not in used_ids:
                yield dev

    def locate(self, path: str, *, handoffs: int | None = None) -> dict:
        """Where `/<account>[/<container>[/<object>]]` lives; for `stackbox
        object locate`. Lists `handoffs` handoff devices (default: replicas,
        which is how many extra nodes a Swift proxy tries)."""
        if not isinstance(path, str) or not path.strip("/"):
            raise BadRequest("path must look like /account/container/object", field="path")
        names = path.lstrip("/").split("/", 2)
        names += [None] * (3 - len(names))
        account, container, obj = names
        if "" in names:
            raise BadRequest(f"path {path!r} has an empty component", field="path")
        part = self.partition(account, container, obj)
        limit = self.replicas if handoffs is None else handoffs
        ho = []
        for dev in self.handoff_devices(part):
            if len(ho) >= limit:
                break
            ho.append(dev.to_dict())
        return {
            "account": account, "container": container, "object": obj,
            "hash": self.hash_path(account, container, obj).hex(),
            "partition": part,
            "primaries": [dict(d.to_dict(), replica=r)
                          for r, d in enumerate(self.primary_devices(part))],
            "handoffs": ho,
        }
