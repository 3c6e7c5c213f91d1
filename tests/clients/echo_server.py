"""An echo server on Python `websockets`, to point the load generator at a server that is not
ours. With --faulty it misbehaves on purpose: it drops every 50th message and flips a bit in
every 70th, and the load generator must notice.

usage: echo_server.py [--faulty]    (prints `listening on 127.0.0.1:PORT`)
"""
import asyncio
import sys

from websockets.asyncio.server import serve

FAULTY = "--faulty" in sys.argv


async def echo(ws):
    count = 0
    async for message in ws:
        count += 1
        if FAULTY and count % 50 == 0:
            continue
        if FAULTY and count % 70 == 0 and isinstance(message, bytes):
            message = bytes([message[0] ^ 0x01]) + message[1:]
        await ws.send(message)


async def main():
    async with serve(echo, "127.0.0.1", 0, compression=None, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"listening on 127.0.0.1:{port}", flush=True)
        await server.serve_forever()


asyncio.run(main())
