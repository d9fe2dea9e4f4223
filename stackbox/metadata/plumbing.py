"""How a guest's packet to 169.254.169.254:80 in a router or DHCP namespace
reaches the one metadata server: the server owns a listening socket that
was created *inside* that namespace.

A socket belongs to the network namespace it was created in, for life, and
a process may hold sockets of many namespaces at once. So `ensure` makes a
short-lived thread enter the namespace (setns affects only the calling
thread), create and bind a socket to 169.254.169.254:80 there, and hand it
to the server's event loop, which keeps running in the host namespace.

What the server learns: the namespace from the socket a connection arrived
on, the guest from the unchanged source address. No veth, no NAT, no host
routes: nothing in the host namespace at all, so overlapping tenant subnets
in different namespaces cannot collide and nothing is left behind on the
host. docs/metadata.md explains the choice against a veth + DNAT design.

In the namespace we add 169.254.169.254/32 to `lo` (so the address is
local and the namespace answers for it on every interface) and raise
`somaxconn` so a boot storm does not overflow the accept queue.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import socket
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from stackbox.common import hostops
from stackbox.metadata.server import MetadataServer, NetworkResolver

log = logging.getLogger("stackbox.metadata.plumbing")

METADATA_IP = "169.254.169.254"
METADATA_PORT = 80
NETNS_DIR = "/run/netns"
BACKLOG = 65535
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(namespace: str) -> str:
    if not namespace or "/" in namespace or namespace in (".", ".."):
        raise ValueError(f"bad namespace name {namespace!r}")
    return os.path.join(NETNS_DIR, namespace)


def namespace_id(namespace: str) -> tuple[int, int]:
    """(device, inode) of the namespace: changes when it is deleted and
    made again under the same name."""
    st = os.stat(netns_path(namespace))
    return st.st_dev, st.st_ino


def address_commands(namespace: str) -> list[list[str]]:
    """The `ip` commands that make the metadata address local in the
    namespace (idempotent: `replace`)."""
    return [["ip", "-n", namespace, "link", "set", "lo", "up"],
            ["ip", "-n", namespace, "addr", "replace", f"{METADATA_IP}/32", "dev", "lo"]]


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def socket_in_namespace(namespace: str, host: str = METADATA_IP, port: int = METADATA_PORT,
                        *, backlog: int = BACKLOG) -> socket.socket:
    """A listening TCP socket bound to host:port inside `namespace`.

    Runs in a fresh thread that dies afterwards, so no thread of this
    process (least of all the event loop's) stays in a foreign namespace."""
    result: dict = {}

    def work() -> None:
        try:
            _setns(netns_path(namespace))
            try:
                # net.core.somaxconn is per namespace; /proc/sys/net
                # resolves in the opening thread's namespace.
                with open("/proc/sys/net/core/somaxconn", "w") as f:
                    f.write(str(backlog))
            except OSError:
                pass
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
                sock.listen(backlog)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
            result["sock"] = sock
        except BaseException as e:      # carried to the caller's thread
            result["error"] = e

    thread = threading.Thread(target=work, name=f"netns-{namespace}", daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["sock"]


@dataclass
class _Plumbed:
    ns_id: tuple[int, int]
    networks: dict[str, tuple[str, ...]]


class MetadataPlumbing:
    """Keeps one listener per namespace on a MetadataServer.

    `ensure` and `remove` are idempotent and safe to call every reconcile
    pass. Call them from a worker thread (they run `ip` and wait for the
    event loop), or use the `_async` variants on the loop itself."""

    def __init__(self, server: MetadataServer, loop: asyncio.AbstractEventLoop, *,
                 port: int = METADATA_PORT, timeout: float = 30):
        self.server = server
        self.loop = loop
        self.port = port
        self.timeout = timeout
        self._plumbed: dict[str, _Plumbed] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _networks(networks: Mapping[str, Iterable[str]] | str) -> dict[str, tuple[str, ...]]:
        if isinstance(networks, str):
            return {networks: ()}
        return {net: tuple(cidrs) for net, cidrs in networks.items()}

    def ensure(self, namespace: str, networks: Mapping[str, Iterable[str]] | str) -> bool:
        """Serve metadata in `namespace` for `networks`: a network id (DHCP
        namespace: every source is on that network) or {network id: subnet
        cidrs} (router namespace: the source address picks the network).
        Returns True when something had to change."""
        wanted = self._networks(networks)
        with self._lock:
            ns_id = namespace_id(namespace)
            have = self._plumbed.get(namespace)
            for argv in address_commands(namespace):
                hostops.run(argv, timeout=self.timeout)
            if have is not None and have.ns_id == ns_id and have.networks == wanted:
                return False
            if have is not None and have.ns_id == ns_id:
                sock = None              # same namespace: only the networks changed
            else:
                sock = socket_in_namespace(namespace, port=self.port)
            try:
                self._on_loop(self._install(namespace, sock, wanted))
            except BaseException:
                if sock is not None:
                    sock.close()
                raise
            self._plumbed[namespace] = _Plumbed(ns_id, wanted)
            log.info("metadata served in namespace %s for %s", namespace, ", ".join(wanted))
            return True

    async def _install(self, namespace: str, sock, networks) -> None:
        resolver = NetworkResolver(networks)
        if sock is not None:
            await self.server.add_listener(namespace, sock, resolver)
        else:
            self.server.set_resolver(namespace, resolver)

    def remove(self, namespace: str) -> bool:
        """Stop serving in `namespace` (it may already be gone)."""
        with self._lock:
            had = self._plumbed.pop(namespace, None) is not None
            had = namespace in self.server.listeners() or had
            self._on_loop(self.server.remove_listener(namespace))
            if os.path.exists(netns_path(namespace)):
                hostops.run(["ip", "-n", namespace, "addr", "del", f"{METADATA_IP}/32",
                             "dev", "lo"], timeout=self.timeout, check=False)
            return had

    # The network agent's interface (stackbox.network.agent.MetadataPlumbing):
    # it names one network at a time, so a router namespace accumulates the
    # networks of its interfaces until the namespace is removed. A network
    # detached from the router stays a candidate harmlessly: its guests'
    # packets no longer reach this namespace.
    def ensure_metadata(self, namespace: str, network_id: str) -> None:
        have = self._plumbed.get(namespace)
        networks = dict(have.networks) if have is not None else {}
        networks.setdefault(network_id, ())
        self.ensure(namespace, networks)

    def remove_metadata(self, namespace: str) -> None:
        self.remove(namespace)

    def namespaces(self) -> list[str]:
        return sorted(self._plumbed)

    def prune(self, keep: Iterable[str]) -> list[str]:
        """Remove every plumbed namespace not in `keep` (the agent's full pass)."""
        gone = [ns for ns in self.namespaces() if ns not in set(keep)]
        for ns in gone:
            self.remove(ns)
        return gone

    def _on_loop(self, coro) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            coro.close()
            raise RuntimeError("MetadataPlumbing.ensure/remove block: call them from a "
                               "worker thread (asyncio.to_thread), not the event loop")
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(self.timeout)

    async def ensure_async(self, namespace: str, networks) -> bool:
        return await asyncio.to_thread(self.ensure, namespace, networks)

    async def remove_async(self, namespace: str) -> bool:
        return await asyncio.to_thread(self.remove, namespace)
