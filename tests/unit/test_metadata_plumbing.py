"""Pure parts of the metadata plumbing (the namespace work is in
tests/e2e/test_metadata.py)."""

from __future__ import annotations

import pytest

from stackbox.metadata import plumbing


def test_address_commands_are_idempotent_ip_invocations():
    cmds = plumbing.address_commands("sbx-dhcp-1234abcd")
    assert cmds == [
        ["ip", "-n", "sbx-dhcp-1234abcd", "link", "set", "lo", "up"],
        ["ip", "-n", "sbx-dhcp-1234abcd", "addr", "replace", "169.254.169.254/32", "dev", "lo"]]


@pytest.mark.parametrize("bad", ["", "..", ".", "a/b", "../etc"])
def test_namespace_names_cannot_escape_run_netns(bad):
    with pytest.raises(ValueError):
        plumbing.netns_path(bad)


def test_netns_path():
    assert plumbing.netns_path("sbx-r-1a2b3c4d") == "/run/netns/sbx-r-1a2b3c4d"


def test_ensure_from_the_servers_own_loop_is_refused():
    import asyncio
    from stackbox.metadata.server import MetadataServer

    async def main():
        p = plumbing.MetadataPlumbing(MetadataServer(lambda n, ip: None),
                                      asyncio.get_running_loop())
        with pytest.raises(RuntimeError, match="worker thread"):
            p._on_loop(asyncio.sleep(0))
    asyncio.run(main())
