"""Thin host operations the network agent builds on: `ip` and `nft` with
JSON output, all through hostops.run (argv lists, timeouts, logged).

Every function takes an optional `netns`; None means the agent's own
namespace. Nothing here decides anything: callers compare desired with what
these functions report and ask for the difference.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from stackbox.common import hostops
from stackbox.common.hostops import CommandError

TIMEOUT = 30
NETNS_DIR = Path("/run/netns")


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    argv = ["ip"] + (["-n", netns] if netns else []) + list(args)
    return hostops.run(argv, timeout=TIMEOUT, check=check).stdout.decode()


def ip_json(*args: str, netns: str | None = None) -> list[dict]:
    out = ip("-j", *args, netns=netns)
    return json.loads(out) if out.strip() else []


def in_netns(netns: str | None, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


def run_in(netns: str | None, argv: list[str], *, check: bool = True,
           input: bytes | None = None) -> str:
    return hostops.run(in_netns(netns, argv), timeout=TIMEOUT, check=check,
                       input=input).stdout.decode()


# --- links -------------------------------------------------------------------

def links(netns: str | None = None) -> dict[str, dict]:
    """name -> `ip -d -j addr` record (master, flags, linkinfo, address and
    addr_info): links and their addresses in one call."""
    return {rec["ifname"]: rec for rec in ip_json("-d", "addr", "show", netns=netns)}


def link_kind(rec: dict) -> str:
    return rec.get("linkinfo", {}).get("info_kind", "")


def link_up(rec: dict) -> bool:
    return "UP" in rec.get("flags", ())


def delete_link(name: str, netns: str | None = None) -> None:
    # Gone already is fine: deleting one end of a veth removes the other.
    ip("link", "del", name, netns=netns, check=False)


def set_up(name: str, netns: str | None = None) -> None:
    ip("link", "set", name, "up", netns=netns)


def set_master(name: str, master: str) -> None:
    ip("link", "set", name, "master", master, "up")


def set_mtu(name: str, mtu: int, netns: str | None = None) -> None:
    ip("link", "set", name, "mtu", str(mtu), netns=netns)


def tx_checksum_off(name: str, netns: str | None = None) -> None:
    """Packets a namespace sends over a veth carry a partial checksum that
    the receiving end is trusted to finish; a guest behind a tap may not,
    and drops the DHCP reply. Filling checksums in software avoids that."""
    run_in(netns, ["ethtool", "-K", name, "tx", "off"], check=False)


# --- addresses and routes ----------------------------------------------------

def record_addresses(rec: dict) -> set[str]:
    """'ip/prefixlen' of every global address in a `links()` record."""
    return {f"{a['local']}/{a['prefixlen']}" for a in rec.get("addr_info", ())
            if a.get("scope") != "link"}


def addresses(name: str, netns: str | None = None) -> set[str]:
    out = set()
    for rec in ip_json("addr", "show", "dev", name, netns=netns):
        out |= record_addresses(rec)
    return out


def sync_addresses(name: str, want: set[str], netns: str | None = None, *,
                   rec: dict | None = None) -> None:
    """Make `name`'s addresses exactly `want`, except 169.254.0.0/16 ones,
    which belong to the metadata plumbing. `rec`: a current `links()` record
    of `name`, saving a query."""
    have = record_addresses(rec) if rec is not None else addresses(name, netns)
    have = {a for a in have if not a.startswith("169.254.")}
    for addr in sorted(have - want):
        ip("addr", "del", addr, "dev", name, netns=netns, check=False)
    for addr in sorted(want - have):
        ip("addr", "add", addr, "dev", name, netns=netns)


# --- namespaces --------------------------------------------------------------

def netns_names() -> set[str]:
    try:
        return set(os.listdir(NETNS_DIR))
    except OSError:
        return set()


def ensure_netns(name: str) -> bool:
    """Create the namespace if missing; True when it was created."""
    if name in netns_names():
        return False
    ip("netns", "add", name)
    ip("link", "set", "lo", "up", netns=name)
    return True


def delete_netns(name: str) -> None:
    ip("netns", "del", name, check=False)


def netns_pids(name: str) -> list[int]:
    out = ip("netns", "pids", name, check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def netns_inode(name: str) -> int | None:
    try:
        return os.stat(NETNS_DIR / name).st_ino
    except OSError:
        return None


def sysctl(netns: str | None, key: str, value: str) -> None:
    run_in(netns, ["sysctl", "-q", "-w", f"{key}={value}"])


# --- nftables ----------------------------------------------------------------

def nft_apply(script: str, netns: str | None = None) -> None:
    """One `nft -f` is one kernel transaction: all of it or none."""
    run_in(netns, ["nft", "-f", "-"], input=script.encode())


def nft_tables(netns: str | None = None) -> set[tuple[str, str]]:
    """(family, name) of every table."""
    out = run_in(netns, ["nft", "-j", "list", "tables"], check=False)
    try:
        doc = json.loads(out) if out.strip() else {"nftables": []}
    except ValueError:
        return set()
    return {(item["table"]["family"], item["table"]["name"])
            for item in doc.get("nftables", ()) if "table" in item}


def nft_delete_table(family: str, name: str, netns: str | None = None) -> None:
    run_in(netns, ["nft", "delete", "table", family, name], check=False)


def nft_table_text(family: str, name: str, netns: str | None = None) -> str | None:
    try:
        return run_in(netns, ["nft", "list", "table", family, name])
    except CommandError:
        return None

