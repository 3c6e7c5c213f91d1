"""An echo server on Python `websockets` that wants what a real backend may want: a bearer
token, a custom header, one of its subprotocols; permessage-deflate is on. It refuses an
upgrade without them (401 or 400), and prints `upgrade protocol=P extensions=E` for each
connection it accepts.

usage: auth_echo.py TOKEN        (prints `listening on 127.0.0.1:PORT`)
"""
import asyncio
import sys
from http import HTTPStatus

from websockets.asyncio.server import serve

TOKEN = sys.argv[1]


def check(connection, request):
    if request.headers.get("Authorization") != f"Bearer {TOKEN}":
        return connection.respond(HTTPStatus.UNAUTHORIZED, "a bearer token is needed\n")
    if request.headers.get("X-Client") != "ringws-loadgen":
        return connection.respond(HTTPStatus.BAD_REQUEST, "X-Client is missing\n")
    return None


async def echo(ws):
    extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
    print(f"upgrade protocol={ws.subprotocol} extensions={extensions}", flush=True)
    async for message in ws:
        await ws.send(message)


async def main():
    async with serve(
        echo,
        "127.0.0.1",
        0,
        process_request=check,
        subprotocols=["v2.chat", "chat"],
        compression="deflate",
        max_size=None,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"listening on 127.0.0.1:{port}", flush=True)
        await server.serve_forever()


asyncio.run(main())
