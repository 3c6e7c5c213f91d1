"""Drives `ringws serve --jwt-secret ... --jwt-cookie session --publish token --publish-key KEY`
with real clients: Python `websockets` upgrading with a token in a header and in a cookie
(and refused without one), and `http.client` publishing over one kept-alive connection.
Prints one `ok:` line per scenario; any failure raises and exits non-zero.

usage: admission.py ws://HOST:PORT TOKEN PUBLISH_KEY
"""
import http.client
import sys
import urllib.parse

from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

URL, TOKEN, KEY = sys.argv[1], sys.argv[2], sys.argv[3]


def ok(name):
    print(f"ok: {name}", flush=True)


def refused_without_a_token():
    try:
        connect(URL + "/pubsub/prices.eur", open_timeout=10)
    except InvalidStatus as err:
        response = err.response
        assert response.status_code == 401, response.status_code
        assert response.headers["WWW-Authenticate"].startswith("Bearer"), response.headers
        assert b"no token" in response.body, response.body
    else:
        raise AssertionError("upgraded without a token")
    ok("no token: 401 with a Bearer challenge")


def token_in_a_header_and_a_cookie_then_a_backend_publishes_over_keep_alive():
    header = {"Authorization": f"Bearer {TOKEN}"}
    cookie = {"Cookie": f"theme=dark; session={TOKEN}"}
    with connect(URL + "/pubsub/prices.eur", additional_headers=header) as a, connect(
        URL + "/pubsub/prices.eur", additional_headers=cookie
    ) as b:
        host = urllib.parse.urlsplit(URL).netloc
        backend = http.client.HTTPConnection(host, timeout=10)
        sockets = set()
        for n in range(3):
            backend.request(
                "POST",
                "/publish/prices.eur",
                body=f"1.08{n}".encode(),
                headers={"Authorization": f"Bearer {KEY}", "Content-Type": "text/plain"},
            )
            response = backend.getresponse()
            body = response.read()
            assert response.status == 200, (response.status, body)
            assert b'"subscribers":2' in body, body
            sockets.add(id(backend.sock))
        assert len(sockets) == 1, "the connection was not kept alive"
        for ws in (a, b):
            assert [ws.recv(timeout=10) for _ in range(3)] == ["1.080", "1.081", "1.082"]
        # The token allows publishing on prices.eur: a client's message reaches the other.
        a.send("from a client")
        assert b.recv(timeout=10) == "from a client"
        backend.close()
    ok("tokens from a header and a cookie; three publishes over one kept-alive connection")


refused_without_a_token()
token_in_a_header_and_a_cookie_then_a_backend_publishes_over_keep_alive()
print("all scenarios passed", flush=True)
