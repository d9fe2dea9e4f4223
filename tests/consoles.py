"""Console clients for tests: a websocket as a byte stream, and an RFB
(VNC) handshake up to ServerInit."""

from __future__ import annotations

import asyncio
import struct

from websockets.asyncio.client import connect


class Frames:
    """Bytes from a websocket as a stream: frames split and join anywhere."""

    def __init__(self, ws):
        self.ws = ws
        self.buf = b""

    async def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            frame = await self.ws.recv()
            assert isinstance(frame, bytes), f"text frame from the proxy: {frame!r}"
            self.buf += frame
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    async def until(self, needle: bytes, timeout: float) -> bytes:
        async def wait():
            while needle not in self.buf:
                self.buf += await self.ws.recv()
            return self.buf
        return await asyncio.wait_for(wait(), timeout)


async def rfb_handshake(url: str) -> tuple[int, int, str]:
    """RFB 3.8 with security type None, up to ServerInit: (width, height, name)."""
    async with connect(url, subprotocols=["binary"], max_size=2 ** 22) as ws:
        assert ws.subprotocol == "binary"
        rfb = Frames(ws)
        assert await rfb.read(12) == b"RFB 003.008\n"
        await ws.send(b"RFB 003.008\n")
        count = (await rfb.read(1))[0]
        assert count > 0, "server refused the connection"
        types = await rfb.read(count)
        assert 1 in types, f"security type None not offered: {list(types)}"
        await ws.send(b"\x01")
        assert struct.unpack(">I", await rfb.read(4))[0] == 0, "SecurityResult failed"
        await ws.send(b"\x01")  # ClientInit: shared
        width, height = struct.unpack(">HH", await rfb.read(4))
        await rfb.read(16)  # pixel format
        name_len = struct.unpack(">I", await rfb.read(4))[0]
        name = (await rfb.read(name_len)).decode()
        return width, height, name
