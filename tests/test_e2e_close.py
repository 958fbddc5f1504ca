"""End to end: the close handshake when our server closes a media socket (after ``stop``, on
an error, when the agent hangs up).

Daphne leaves autobahn's closing-handshake timeout at 1 s, and autobahn arms it on a batched
timer that rounds the deadline down to a whole second: the server dropped the connection 0 to
1 s after its close frame, before a distant or busy peer could answer, and, when the timer fired
in the same loop round, before the frame had even left (the peer saw 1006). See
voiceagent/daphne_tuning.py. Production's uvicorn waits 10 s (an exact timer) for the peer's
answer: the same test runs on both."""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import time

import pytest
from websockets.client import ClientProtocol
from websockets.uri import parse_uri

from calls.fakes.twilio_caller import twilio_signature
from calls.processes import PRODUCTION_SERVER
from tests.conftest import AUTH_TOKEN

pytestmark = pytest.mark.e2e

# Longer than the old timeout could ever be: a peer this slow always lost its clean close.
PEER_ANSWERS_AFTER = 1.2


@pytest.mark.parametrize("server_name", [PRODUCTION_SERVER, "daphne"])
def test_a_slow_peer_still_completes_the_close_handshake(live, start_server, server_name):
    server = start_server(server_name)
    url = "ws" + server.url.removeprefix("http") + "/media-stream"
    protocol = ClientProtocol(parse_uri(url))
    request = protocol.connect()
    request.headers["X-Twilio-Signature"] = twilio_signature(AUTH_TOKEN, url, {})
    protocol.send_request(request)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:

        def flush() -> None:
            for data in protocol.data_to_send():
                if data:
                    sock.sendall(data)

        def receive() -> None:
            data = sock.recv(65536)
            if data:
                protocol.receive_data(data)
            else:
                protocol.receive_eof()

        flush()
        while protocol.handshake_exc is None and not protocol.events_received():
            receive()
        assert protocol.handshake_exc is None
        # A stop before any start: the server closes the socket itself, with 1000.
        stop = {
            "event": "stop",
            "sequenceNumber": "1",
            "streamSid": "MZ" + secrets.token_hex(16),
            "stop": {"accountSid": "AC" + secrets.token_hex(16), "callSid": "CA" + secrets.token_hex(16)},
        }
        protocol.send_text(json.dumps(stop).encode())
        flush()
        while protocol.close_rcvd is None:
            receive()
        assert protocol.close_rcvd.code == 1000
        time.sleep(PEER_ANSWERS_AFTER)  # the scenario: this peer answers the close late
        # The close frame in reply, queued by the protocol when the server's arrived. A server
        # that gave up has reset the connection by now: ConnectionResetError or BrokenPipeError.
        flush()
        # Once it has the reply, the server drops the connection at once (autobahn with a
        # reset), as servers do after a close handshake: the handshake is complete either way.
        with contextlib.suppress(ConnectionResetError):
            while protocol.state is not protocol.state.CLOSED:
                receive()
    assert "closing handshake timeout" not in server.log()
