"""An echo server on Python `websockets` that misbehaves on purpose, and counts what it did,
so a test can hold the load generator's report to the server's own counts.

Per connection, of the messages it receives: every 50th is dropped, every 70th (not dropped)
comes back with one bit flipped, every 90th (neither) comes back twice. When a connection
ends it prints `connection received=R dropped=D corrupted=C duplicated=U`.

usage: faulty_echo.py        (prints `listening on 127.0.0.1:PORT`)
"""
import asyncio

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed


async def echo(ws):
    received = dropped = corrupted = duplicated = 0
    try:
        async for message in ws:
            received += 1
            if received % 50 == 0:
                dropped += 1
                continue
            if received % 70 == 0:
                corrupted += 1
                data = bytearray(message if isinstance(message, bytes) else message.encode())
                data[len(data) // 2] ^= 0x04
                message = bytes(data)
            elif received % 90 == 0:
                duplicated += 1
                await ws.send(message)
            await ws.send(message)
    except ConnectionClosed:
        pass
    finally:
        print(
            f"connection received={received} dropped={dropped} "
            f"corrupted={corrupted} duplicated={duplicated}",
            flush=True,
        )


async def main():
    async with serve(echo, "127.0.0.1", 0, compression=None, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"listening on 127.0.0.1:{port}", flush=True)
        await server.serve_forever()


asyncio.run(main())
