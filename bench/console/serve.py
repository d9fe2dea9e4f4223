#!/usr/bin/env python3
"""The stackbox console proxy alone, for bench/console/run.py: uvicorn on a
loopback port with a memory token store; `--tokens N` tokens for one unix
socket are printed as one JSON line once the server listens."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import uvicorn

from stackbox.compute.consoleproxy import ConsoleProxy
from stackbox.compute.consoletokens import ConsoleTokens
from stackbox.compute.drivers.base import ConsoleEndpoint
from stackbox.server import bind


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--unix", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--deflate", action="store_true",
                    help="allow permessage-deflate (uvicorn's default; stackbox turns it off)")
    args = ap.parse_args()
    tokens = ConsoleTokens(ttl=3600)
    endpoint = ConsoleEndpoint(kind="serial", unix_path=Path(args.unix))
    issued = [tokens.issue("bench", "serial", lambda uuid, kind: endpoint)
              for _ in range(args.tokens)]
    app = ConsoleProxy(tokens.resolver(), novnc_dir=None, max_connections=10_000)
    sock = bind("127.0.0.1", args.port)   # stackbox's own listening socket
    # the same uvicorn settings as stackbox/server.py
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False,
                                           lifespan="off", server_header=False,
                                           ws_per_message_deflate=args.deflate))

    async def run():
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        print(json.dumps(issued), flush=True)
        await task
    asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
