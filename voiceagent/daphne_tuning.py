"""A WebSocket option of Daphne's that its command line does not expose.

Daphne leaves autobahn's closing-handshake timeout at autobahn's default of 1 s. Autobahn arms
that timeout on a txaio batched timer, which rounds the deadline down to a whole second, so
the server dropped a connection anywhere from 0 to 1 s after its close frame: a peer that took
longer to answer (Twilio's edge is tens to hundreds of ms away) got a reset instead of a clean
close. When the timer fired in the same loop round as the close, the frame itself was discarded
and the peer saw 1006 (the benchmark's rare "dropped after stop" calls, tests/test_e2e_close.py).
"""

from __future__ import annotations

import sys
from typing import Any

# Rounded down like any autobahn timeout: the server waits 4 to 5 s for the peer's answer.
CLOSE_HANDSHAKE_TIMEOUT = 5.0


def configure_daphne() -> None:
    """Make daphne's WebSocket factory wait ``CLOSE_HANDSHAKE_TIMEOUT`` for the peer's close.

    Called while the ASGI application is imported, which daphne (its command line and
    ``runserver``) does before it builds the factory. Under another ASGI server, nothing."""
    server = sys.modules.get("daphne.server")
    if server is None:
        return
    daphne_factory: Any = vars(server)["WebSocketFactory"]  # daphne ships no types
    if getattr(daphne_factory, "close_handshake_timeout", None):
        return

    class WebSocketFactory(daphne_factory):  # type: ignore[misc]  # a class of untyped daphne's
        close_handshake_timeout = CLOSE_HANDSHAKE_TIMEOUT

        def resetProtocolOptions(self) -> None:  # autobahn names it
            super().resetProtocolOptions()
            self.closeHandshakeTimeout = self.close_handshake_timeout

    vars(server)["WebSocketFactory"] = WebSocketFactory
