"""A Python `websockets` server that accepts the upgrade and then reads nothing, so what a
client sends backs up in the sockets.

usage: silent.py        (prints `listening on 127.0.0.1:PORT`)
"""
import asyncio

from websockets.asyncio.server import serve


async def hold(ws):
    await asyncio.Event().wait()


async def main():
    async with serve(hold, "127.0.0.1", 0, compression=None, max_queue=1) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"listening on 127.0.0.1:{port}", flush=True)
        await server.serve_forever()


asyncio.run(main())
