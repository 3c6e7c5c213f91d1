"""Drives a running `ringws serve` (echo, started with `--subprotocol chat`) with the Python
`websockets` client and checks every answer. Prints one `ok:` line per scenario; any failure
raises and exits non-zero.

usage: client.py ws://HOST:PORT [--deflate [--shared]]
       client.py wss://HOST:PORT --ca CA.pem [--deflate [--shared]]

With --deflate the server runs with permessage-deflate on, and the scenarios run over every
window size and context-takeover mode the client can ask for; --shared says the server runs
`--deflate shared`, so every subscriber's compression can be shared. Over wss:// the server's
certificate must chain to the CA in --ca.
"""
import os
import ssl
import sys
import threading
import urllib.request

from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.sync.client import connect as ws_connect

URL = sys.argv[1]
DEFLATE = "--deflate" in sys.argv
BIG = 16 * 1024 * 1024
TLS = TLS13 = None
if "--ca" in sys.argv:
    CA = sys.argv[sys.argv.index("--ca") + 1]
    TLS13 = ssl.create_default_context(cafile=CA)
    # The sync client reads its socket in a thread of its own while the caller writes, and
    # two threads sharing one OpenSSL connection race when TLS 1.3 session tickets arrive:
    # about one request in a hundred is lost under load (the server never receives it; a
    # one-thread client over the same server loses none). TLS 1.2 sends its ticket inside
    # the handshake, so the sync scenarios run over 1.2, and the asyncio one (one thread)
    # over 1.3.
    TLS = ssl.create_default_context(cafile=CA)
    TLS.maximum_version = ssl.TLSVersion.TLSv1_2


def connect(url, **options):
    if TLS is not None:
        options["ssl"] = TLS
    return ws_connect(url, **options)


def ok(name):
    print(f"ok: {name}", flush=True)


def echo_text_and_binary():
    with connect(URL + "/py", subprotocols=["chat"]) as ws:
        assert ws.subprotocol == "chat", ws.subprotocol
        ws.send("Grüße, 世界 👋")
        assert ws.recv(timeout=10) == "Grüße, 世界 👋"
        ws.send(bytes(range(256)))
        assert ws.recv(timeout=10) == bytes(range(256))
        ws.send("")
        assert ws.recv(timeout=10) == ""
    ok("text, binary and empty messages echo")


def fragmented():
    with connect(URL + "/py") as ws:
        ws.send(["frag", "mented ", "Grüße"])
        assert ws.recv(timeout=10) == "fragmented Grüße"
        ws.send([b"\x00\x01", b"", b"\x02"])
        assert ws.recv(timeout=10) == b"\x00\x01\x02"
    ok("fragmented messages reassemble")


def sixteen_mib():
    payload = bytes((i * 31) & 0xFF for i in range(256)) * (BIG // 256)
    with connect(URL + "/py", max_size=BIG + 1024) as ws:
        ws.send(payload)
        assert ws.recv(timeout=60) == payload
    ok("a 16 MiB message echoes")


def ping_pong():
    with connect(URL + "/py") as ws:
        waiter = ws.ping(b"are you there")
        assert waiter.wait(timeout=10), "no pong"
        latency = ws.ping(b"")
        assert latency.wait(timeout=10), "no pong to an empty ping"
    ok("pings get pongs")


def close_codes():
    with connect(URL + "/py") as ws:
        ws.close(code=4000, reason="bye now")
        received = ws.protocol.close_rcvd
    assert received is not None, "no close frame came back"
    assert received.code == 4000, received
    ok("a close is answered with the same code")


def many_at_once():
    if TLS is not None:
        return many_at_once_asyncio()
    errors = []

    def run(n):
        try:
            with connect(URL + f"/py/{n}") as ws:
                for i in range(100):
                    ws.send(f"{n}:{i}")
                    assert ws.recv(timeout=10) == f"{n}:{i}"
        except Exception as error:  # collected and re-raised below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    ok("32 clients at once, 100 messages each")


def many_at_once_asyncio():
    """Over TLS, the 32 clients run on asyncio, over TLS 1.3 (see TLS above)."""
    import asyncio
    from websockets.asyncio.client import connect as async_connect

    async def run(n):
        async with async_connect(URL + f"/py/{n}", ssl=TLS13) as ws:
            assert ws.transport.get_extra_info("ssl_object").version() == "TLSv1.3"
            for i in range(100):
                await ws.send(f"{n}:{i}")
                assert await asyncio.wait_for(ws.recv(), 10) == f"{n}:{i}"

    async def all_of_them():
        await asyncio.gather(*(run(n) for n in range(32)))

    asyncio.run(all_of_them())
    ok("32 clients at once over TLS (asyncio), 100 messages each")


def compressed(**params):
    """Every kind of message over one negotiated set of deflate parameters."""
    factory = ClientPerMessageDeflateFactory(**params)
    with connect(URL + "/py/deflate", extensions=[factory], compression=None, max_size=BIG) as ws:
        agreed = [type(e).__name__ for e in ws.protocol.extensions]
        assert agreed == ["PerMessageDeflate"], f"not negotiated with {params}: {agreed}"
        text = '{"symbol": "ACME", "price": 101.25, "note": "Grüße"} ' * 40
        for i in range(5):  # several messages: context takeover must carry between them
            ws.send(text + str(i))
            assert ws.recv(timeout=10) == text + str(i)
        noise = os.urandom(1 << 20)
        ws.send(noise)
        assert ws.recv(timeout=30) == noise
        ws.send(["frag", "mented " * 100, "end"])
        assert ws.recv(timeout=10) == "frag" + "mented " * 100 + "end"
        ws.send(b"")
        assert ws.recv(timeout=10) == b""
        ws.send("x")  # below the compression threshold
        assert ws.recv(timeout=10) == "x"
    ok(f"permessage-deflate {params or 'defaults'}")


def deflate_matrix():
    compressed()
    for bits in (9, 12, 15):
        compressed(server_max_window_bits=bits)
        compressed(client_max_window_bits=bits)
    compressed(server_no_context_takeover=True)
    compressed(client_no_context_takeover=True)
    compressed(server_no_context_takeover=True, client_no_context_takeover=True, server_max_window_bits=10)


def metric(name):
    page_url = URL.replace("ws", "http", 1) + "/metrics"
    with urllib.request.urlopen(page_url, timeout=10, context=TLS) as page:
        for line in page.read().decode().splitlines():
            if line.startswith(name + " "):
                return int(line.split()[1])
    raise AssertionError(f"{name} missing from /metrics")


def pubsub():
    """Subscribers with different compression settings on one topic all get every message
    published, in order; with --deflate shared, each message is compressed once per window
    size, not once per subscriber."""
    topic = URL + "/pubsub/py-" + os.urandom(4).hex()
    settings = [None, None]
    if DEFLATE:
        settings += [{}, {}, {"server_max_window_bits": 10}, {"server_max_window_bits": 10},
                     {"server_no_context_takeover": True}]
    subscribers = []
    for params in settings:
        extensions = None if params is None else [ClientPerMessageDeflateFactory(**params)]
        subscribers.append(connect(topic, extensions=extensions, compression=None, max_size=BIG))
    text = '{"symbol": "ACME", "price": 101.25, "note": "Grüße"} ' * 40
    messages = [text + str(i) for i in range(10)] + [os.urandom(1024), "x", b""]
    before = metric("ringws_pubsub_shared_compressions_total")
    with connect(topic) as publisher:
        for message in messages:
            publisher.send(message)
        for ws in subscribers:
            for message in messages:
                assert ws.recv(timeout=10) == message
            ws.close()
    compressions = metric("ringws_pubsub_shared_compressions_total") - before
    if "--shared" in sys.argv:
        # Windows 15 and 10 form two sharing groups; "x" and b"" stay below the threshold.
        assert compressions == 2 * 11, compressions
    ok(f"pub/sub to {len(subscribers)} subscribers, {compressions} shared compressions")


scenarios = [echo_text_and_binary, fragmented, sixteen_mib, ping_pong, close_codes, many_at_once, pubsub]
if DEFLATE:
    scenarios = [deflate_matrix, sixteen_mib, many_at_once, pubsub]
for scenario in scenarios:
    scenario()
print("python websockets: all scenarios passed", flush=True)
