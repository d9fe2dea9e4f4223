"""`stackbox ring …` and `stackbox object locate`, run as an operator would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

STACKBOX = str(Path(sys.executable).parent / "stackbox")


def sb(*args, data_dir, check=True):
    proc = subprocess.run([STACKBOX, *args, "--data-dir", str(data_dir)], capture_output=True,
                          text=True, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_build_rebalance_show_and_locate(tmp_path):
    sb("ring", "create", "--part-power", "8", "--replicas", "3", data_dir=tmp_path)
    for i in range(3):
        sb("ring", "add", "--id", str(i), "--zone", str(i), "--weight", "100",
           "--path", f"/srv/d{i}", data_dir=tmp_path)
    out = sb("ring", "rebalance", data_dir=tmp_path).stdout
    assert "768 of 768" in out
    show = sb("ring", "show", data_dir=tmp_path).stdout
    assert show.count(" 256 ") == 3, show   # one replica of every partition per zone
    where = json.loads(sb("object", "locate", "/AUTH_p/c/o", "--json",
                          data_dir=tmp_path).stdout)
    assert (where["account"], where["container"], where["object"]) == ("AUTH_p", "c", "o")
    assert sorted(d["id"] for d in where["primaries"]) == [0, 1, 2]
    assert 0 <= where["partition"] < 256
    # Same answer every time: placement is a pure function of the ring file.
    again = json.loads(sb("object", "locate", "/AUTH_p/c/o", "--json",
                          data_dir=tmp_path).stdout)
    assert again == where
    # Adding a device moves about a quarter, never everything.
    sb("ring", "add", "--id", "3", "--zone", "0", "--weight", "100", "--path", "/srv/d3",
       data_dir=tmp_path)
    out = sb("ring", "rebalance", data_dir=tmp_path).stdout
    moved = int(out.split()[1])
    assert 0 < moved < 768 / 2


def test_bad_input_names_the_field(tmp_path):
    res = sb("ring", "create", "--part-power", "30", "--replicas", "3", data_dir=tmp_path,
             check=False)
    assert res.returncode == 2 and "part_power" in res.stderr and "1..24" in res.stderr
    res = sb("ring", "add", "--id", "0", "--zone", "0", "--weight", "1", "--path", "/x",
             data_dir=tmp_path, check=False)
    assert res.returncode == 1 and "stackbox ring create" in res.stderr
    res = sb("object", "locate", "/a/c/o", data_dir=tmp_path, check=False)
    assert res.returncode == 1 and "no ring" in res.stderr
