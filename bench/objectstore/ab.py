#!/usr/bin/env python3
"""A/B of two versions of stackbox's code on small objects: which is faster.

    .venv/bin/python bench/objectstore/ab.py --a HEAD~1 --b . --rounds 6

Each side is a git ref (checked out with `git worktree` for the run) or `.`
(this working tree). Both stackboxes start once, on one fresh XFS like the
main benchmark's; then rounds of N 4 KiB PUTs (or GETs) at concurrency C
alternate between them (A B, B A, ...). Printed: each round's ops/s, server
CPU per request and client CPU, both medians, and A/B per round.

Why this way: this machine's speed moves by 15% within an hour, so two runs
of bench/objectstore/run.py an hour apart cannot tell 5% apart; alternating
rounds of servers started once can (with 6-8 rounds).

How a side runs its own code: `stackbox up` starts `python -m stackbox
serve` in the caller's working directory, and `-m` puts that directory
first on sys.path, ahead of PYTHONPATH and of the editable install's
finder. So each side's commands run with its tree as the working directory
and on PYTHONPATH, with a sitecustomize that drops the editable finder;
the script checks which stackbox each side imports before it starts.
(Setting PYTHONPATH alone silently ran this tree's code on both sides.)

Loopback only; the clouds, worktrees and the XFS image are removed after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Stackbox, VENV_BIN, cpu_split, in_bench_dirs, pct, settle  # noqa: E402
from run import Target, run_threads  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SITECUSTOMIZE = ('import sys\n'
                 'sys.meta_path[:] = [f for f in sys.meta_path\n'
                 '                    if "editable" not in repr(f).lower()]\n')


class Side:
    """One version of the code: its tree, and the environment that makes
    stackbox's commands import it."""

    def __init__(self, name: str, ref: str, scratch: Path):
        self.name, self.ref = name, ref
        self.worktree = None
        if ref == ".":
            self.tree = REPO
        else:
            self.tree = self.worktree = scratch / f"tree-{name}"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q",
                            str(self.tree), ref], check=True)
        site = scratch / f"site-{name}"
        site.mkdir()
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        self.env = dict(os.environ, PYTHONPATH=f"{site}:{self.tree}")

    def imports_from(self) -> Path:
        out = subprocess.run([str(VENV_BIN / "python"), "-c",
                              "import stackbox; print(stackbox.__file__)"],
                             cwd=self.tree, env=self.env, capture_output=True, text=True,
                             check=True, timeout=60)
        return Path(out.stdout.strip()).parent.parent

    @contextmanager
    def active(self):
        """This side's environment and working directory, for Stackbox's CLI
        calls (which inherit both)."""
        saved_env, saved_cwd = dict(os.environ), os.getcwd()
        os.environ.clear()
        os.environ.update(self.env)
        os.chdir(self.tree)
        try:
            yield
        finally:
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)

    def remove(self) -> None:
        if self.worktree is not None:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                            str(self.worktree)], capture_output=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", default="HEAD", help="git ref, or . for this working tree")
    ap.add_argument("--b", default=".", help="git ref, or . for this working tree")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--n", type=int, default=3000, help="requests per round and side")
    ap.add_argument("-c", type=int, default=16, help="concurrent clients")
    ap.add_argument("--op", choices=("PUT", "GET"), default="PUT")
    ap.add_argument("--replicas", type=int, default=1)
    a = ap.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="sbx-ab-"))
    sides = []
    try:
        for name, ref in (("A", a.a), ("B", a.b)):
            side = Side(name, ref, scratch)
            sides.append(side)
            got = side.imports_from()
            if got.resolve() != side.tree.resolve():
                raise SystemExit(f"side {name} ({ref}) imports stackbox from {got}, "
                                 f"not {side.tree}")
            print(f"{name}: {ref} ({side.tree})", flush=True)
        return in_bench_dirs("sbx-bench-ab-", "xfs",
                             lambda root, data_root, fs: _rounds(a, sides, data_root, fs))
    finally:
        for side in sides:
            side.remove()
        shutil.rmtree(scratch, ignore_errors=True)


def _rounds(a, sides: list[Side], data_root: Path, fs_label: str) -> int:
    print(f"stackbox's devices: {fs_label}; {a.op} of 4 KiB, n={a.n}, c={a.c}, "
          f"{a.replicas} replica(s)", flush=True)
    boxes = []
    try:
        for side in sides:
            box = Stackbox(data_root / side.name, a.replicas)
            boxes.append((side, box))          # stopped in finally even if start fails
            with side.active():
                box.start()
        targets = {side.name: Target(side.name, box.port, box.storage_path, box.token,
                                     pgids=box.pgids, pid=box.pid) for side, box in boxes}
        payload = os.urandom(4096)
        for t in targets.values():
            t.cont = f"{t.account_path}/ab"
            t.req(t.conn(), "PUT", t.cont)
            run_threads(500, a.c, _op(t, "PUT", "warm", payload))
        results = {name: [] for name in targets}
        for rnd in range(a.rounds):
            order = list(targets.values())
            for t in (order if rnd % 2 == 0 else order[::-1]):
                settle()
                if a.op == "GET":
                    run_threads(a.n, a.c, _op(t, "PUT", f"r{rnd}", payload))
                    settle()
                cpu0, client0 = cpu_split(t.pgids()), os.times()
                wall, lats, errs = run_threads(a.n, a.c, _op(t, a.op, f"r{rnd}", payload))
                cpu1, client1 = cpu_split(t.pgids()), os.times()
                r = {"ops": a.n / wall, "p50": 1000 * pct(lats, 50),
                     "user": 1000 * (cpu1[0] - cpu0[0]) / a.n,
                     "sys": 1000 * (cpu1[1] - cpu0[1]) / a.n,
                     "client": 1000 * (client1.user + client1.system
                                       - client0.user - client0.system) / a.n, "errors": errs}
                results[t.name].append(r)
                print(f"round {rnd + 1} {t.name}: {r['ops']:.0f}/s p50 {r['p50']:.1f} ms, server "
                      f"user {r['user']:.3f} sys {r['sys']:.3f} ms, client {r['client']:.3f} ms, "
                      f"errors {errs}", flush=True)
        for side in sides:
            rs = results[side.name]
            print(f"{side.name} ({side.ref}): median {statistics.median(r['ops'] for r in rs):.0f}"
                  f"/s, server user {statistics.median(r['user'] for r in rs):.3f} sys "
                  f"{statistics.median(r['sys'] for r in rs):.3f} ms per request")
        ratios = [x["ops"] / y["ops"] for x, y in zip(results["A"], results["B"])]
        print("A/B per round:", " ".join(f"{x:.3f}" for x in ratios),
              f"median {statistics.median(ratios):.3f}")
        return 0
    finally:
        for side, box in boxes:
            with side.active():
                box.stop()


def _op(t: Target, op: str, tag: str, payload: bytes):
    def one(state, i):
        if "conn" not in state:
            state["conn"] = t.conn(60)
        path = f"{t.cont}/{tag}-{i:06d}"
        if op == "PUT":
            r, _ = t.req(state["conn"], "PUT", path, payload,
                         {"Content-Type": "application/octet-stream"})
            return r.status == 201
        r, body = t.req(state["conn"], "GET", path)
        return r.status == 200 and body == payload
    return one


if __name__ == "__main__":
    sys.exit(main())
