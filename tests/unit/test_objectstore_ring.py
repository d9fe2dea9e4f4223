"""Ring placement: balance, dispersion, bounded movement, file integrity."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from stackbox.common.errors import BadRequest, Conflict, InvalidState, NotFound
from stackbox.objectstore.errors import CorruptFile
from stackbox.objectstore.ring import Ring, RingBuilder


def build(part_power, replicas, devices, *, seed=None):
    b = RingBuilder(part_power, replicas)
    for dev_id, zone, weight in devices:
        b.add_device(dev_id, zone=zone, weight=weight, path=f"sd{dev_id}")
    b.rebalance(seed=seed)
    return b


def counts(ring: Ring) -> Counter:
    return Counter(d.id for p in range(ring.parts) for d in ring.primary_devices(p))


def test_weights_1_1_2_give_proportional_partition_counts():
    b = build(10, 1, [(0, 1, 1.0), (1, 2, 1.0), (2, 3, 2.0)])
    c = counts(b.get_ring())
    assert c == {0: 256, 1: 256, 2: 512}


def test_weights_proportional_with_three_replicas_many_devices():
    devs = [(i, i % 4, [1.0, 1.0, 2.0][i % 3]) for i in range(12)]
    ring = build(12, 3, devs).get_ring()
    c = counts(ring)
    total_w = sum(w for _, _, w in devs)
    for dev_id, _, w in devs:
        ideal = ring.parts * 3 * w / total_w
        assert abs(c[dev_id] - ideal) <= 0.02 * ideal + 1, (dev_id, c[dev_id], ideal)


def test_replicas_on_distinct_devices_and_zones():
    ring = build(10, 3, [(i, i % 4, 1.0 + i % 3) for i in range(8)]).get_ring()
    for part in range(ring.parts):
        devs = ring.primary_devices(part)
        assert len(devs) == 3
        assert len({d.id for d in devs}) == 3
        assert len({d.zone for d in devs}) == 3


def test_fewer_zones_than_replicas_still_spreads_as_far_as_possible():
    # Two zones, three replicas: each partition uses both zones.
    ring = build(8, 3, [(0, 1, 1.0), (1, 1, 1.0), (2, 2, 1.0), (3, 2, 1.0)]).get_ring()
    for part in range(ring.parts):
        devs = ring.primary_devices(part)
        assert len({d.id for d in devs}) == 3
        assert {d.zone for d in devs} == {1, 2}


def test_heavy_zone_does_not_get_two_replicas_of_a_partition():
    ring = build(8, 3, [(0, 1, 1.0), (1, 2, 1.0), (2, 3, 10.0), (3, 3, 10.0)]).get_ring()
    for part in range(ring.parts):
        assert len({d.zone for d in ring.primary_devices(part)}) == 3


def test_adding_a_device_moves_a_bounded_fraction():
    b = build(12, 3, [(i, i, 1.0) for i in range(4)])
    before = b.get_ring()
    b.add_device(4, zone=4, weight=1.0, path="sd4")
    moved = b.rebalance()
    after = b.get_ring()
    total = before.parts * 3
    # The new device should get its fair share (1/5) and almost nothing else moves.
    assert counts(after)[4] == pytest.approx(total / 5, abs=2)
    assert moved <= total / 5 + 0.01 * total
    changed = sum(1 for p in range(before.parts)
                  for a, c in zip(before.primary_devices(p), after.primary_devices(p))
                  if a.id != c.id)
    assert changed == moved
    # Prefer moving at most one replica of any partition in one rebalance.
    multi = sum(1 for p in range(before.parts)
                if sum(a.id != c.id for a, c in
                       zip(before.primary_devices(p), after.primary_devices(p))) > 1)
    assert multi == 0
    assert b.rebalance() == 0    # stable once balanced


def test_drain_and_remove_device():
    b = build(8, 2, [(0, 1, 1.0), (1, 2, 1.0), (2, 3, 1.0)])
    b.set_weight(2, 0)
    b.rebalance()
    assert counts(b.get_ring())[2] == 0
    b.remove_device(2)
    assert b.rebalance() == 0
    assert 2 not in b.devices
    with pytest.raises(NotFound):
        b.set_weight(2, 1.0)


def test_removed_device_data_moves_off_without_unbalancing():
    b = build(8, 2, [(0, 1, 1.0), (1, 2, 1.0), (2, 3, 1.0), (3, 4, 1.0)])
    b.remove_device(3)
    ring_before = b.get_ring()   # pending removal: still resolvable by readers
    assert any(d.id == 3 for p in range(ring_before.parts) for d in ring_before.primary_devices(p))
    assert all(d.id != 3 for p in range(8) for d in ring_before.handoff_devices(p))
    moved = b.rebalance()
    assert moved == 256 // 4 * 2
    assert sorted(counts(b.get_ring()).values()) == [170, 171, 171]


def test_validation_names_the_field():
    for kwargs, field in [(dict(part_power=0, replicas=1), "part_power"),
                          (dict(part_power=25, replicas=1), "part_power"),
                          (dict(part_power=4, replicas=0), "replicas")]:
        with pytest.raises(BadRequest) as ei:
            RingBuilder(**kwargs)
        assert ei.value.field == field
    b = RingBuilder(4, 3)
    with pytest.raises(BadRequest) as ei:
        b.add_device(0, zone=1, weight=-1, path="sd0")
    assert ei.value.field == "weight"
    with pytest.raises(BadRequest) as ei:
        b.add_device(0, zone=1, weight=float("nan"), path="sd0")
    assert ei.value.field == "weight"
    b.add_device(0, zone=1, weight=1, path="sd0")
    with pytest.raises(Conflict):
        b.add_device(0, zone=1, weight=1, path="sd0")
    b.add_device(1, zone=1, weight=1, path="sd1")
    b.add_device(2, zone=1, weight=0, path="sd2")
    with pytest.raises(BadRequest) as ei:     # only 2 devices can take data
        b.rebalance()
    assert ei.value.field == "replicas"


def test_save_load_roundtrip(tmp_path):
    b = build(8, 3, [(i, i % 3, 1.0 + i) for i in range(6)])
    path = str(tmp_path / "object.ring.json")
    b.save(path)
    ring = Ring.load(path)
    mem = b.get_ring()
    assert ring.hash_prefix == b.hash_prefix and ring.hash_suffix == b.hash_suffix
    for p in range(ring.parts):
        assert ring.primary_devices(p) == mem.primary_devices(p)
    assert ring.partition("AUTH_a", "c", "o") == mem.partition("AUTH_a", "c", "o")
    b2 = RingBuilder.load(path)
    assert b2.devices == b.devices and b2.rebalance() == 0
    # No temp files left next to it.
    assert [p.name for p in tmp_path.iterdir()] == ["object.ring.json"]


def test_corrupt_ring_file_is_refused(tmp_path):
    b = build(6, 2, [(0, 1, 1.0), (1, 2, 1.0)])
    path = tmp_path / "ring.json"
    b.save(str(path))
    doc = json.loads(path.read_text())
    doc["ring"]["devices"][0]["weight"] = 99.0      # edited without a new checksum
    path.write_text(json.dumps(doc))
    with pytest.raises(CorruptFile, match="checksum mismatch"):
        Ring.load(str(path))
    with pytest.raises(CorruptFile):
        RingBuilder.load(str(path))
    path.write_bytes(b"{not json")
    with pytest.raises(CorruptFile, match="not a ring file"):
        Ring.load(str(path))
    with pytest.raises(NotFound):
        Ring.load(str(tmp_path / "missing.json"))


def test_never_rebalanced_ring_cannot_be_used(tmp_path):
    b = RingBuilder(4, 1)
    b.add_device(0, zone=1, weight=1, path="sd0")
    b.save(str(tmp_path / "r.json"))
    assert RingBuilder.load(str(tmp_path / "r.json")).devices[0].path == "sd0"
    with pytest.raises(InvalidState):
        Ring.load(str(tmp_path / "r.json"))


def test_partition_uses_hash_prefix_and_is_stable():
    devs = [(0, 1, 1.0), (1, 2, 1.0)]
    a = RingBuilder(16, 1, hash_prefix="p1", hash_suffix="s")
    b = RingBuilder(16, 1, hash_prefix="p2", hash_suffix="s")
    for builder in (a, b):
        for dev_id, zone, w in devs:
            builder.add_device(dev_id, zone=zone, weight=w, path="x")
        builder.rebalance()
    ra, rb = a.get_ring(), b.get_ring()
    names = [("AUTH_t", "photos", f"img{i}.jpg") for i in range(50)]
    pa = [ra.partition(*n) for n in names]
    assert pa == [ra.partition(*n) for n in names]
    assert pa != [rb.partition(*n) for n in names]
    assert all(0 <= p < ra.parts for p in pa)
    # Account and container names hash too (for their own rings).
    assert 0 <= ra.partition("AUTH_t") < ra.parts
    assert 0 <= ra.partition("AUTH_t", "photos") < ra.parts
    with pytest.raises(BadRequest):
        ra.partition("AUTH_t", None, "obj")


def test_handoffs_exclude_primaries_and_prefer_other_zones():
    ring = build(6, 2, [(i, i % 4, 1.0) for i in range(8)]).get_ring()
    for part in range(ring.parts):
        primaries = ring.primary_devices(part)
        handoffs = list(ring.handoff_devices(part))
        assert {d.id for d in primaries}.isdisjoint(d.id for d in handoffs)
        assert len(handoffs) == 8 - 2
        assert len({d.id for d in handoffs}) == len(handoffs)
        # The first two handoffs are in the two zones the primaries do not use.
        assert {d.zone for d in handoffs[:2]} == {0, 1, 2, 3} - {d.zone for d in primaries}
        assert list(ring.handoff_devices(part)) == handoffs    # deterministic
    with pytest.raises(BadRequest) as ei:
        ring.primary_devices(ring.parts)
    assert ei.value.field == "partition"


def test_locate():
    ring = build(8, 3, [(i, i, 1.0) for i in range(5)]).get_ring()
    info = ring.locate("/AUTH_ü/bucket/a/b/c.txt")
    assert info["account"] == "AUTH_ü" and info["container"] == "bucket"
    assert info["object"] == "a/b/c.txt"
    assert info["partition"] == ring.partition("AUTH_ü", "bucket", "a/b/c.txt")
    assert [d["replica"] for d in info["primaries"]] == [0, 1, 2]
    assert len(info["handoffs"]) == 2           # only 5 devices
    assert {d["id"] for d in info["primaries"]}.isdisjoint(d["id"] for d in info["handoffs"])
    assert ring.locate("AUTH_x")["container"] is None
    with pytest.raises(BadRequest) as ei:
        ring.locate("/a//o")
    assert ei.value.field == "path"
