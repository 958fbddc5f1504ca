"""ASGI entry point: HTTP goes to Django, WebSockets to the Channels routes of ``calls``.

Production serves it with uvicorn (``manage.py serve``, deploy/); ``manage.py runserver``
with daphne (development).
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

from voiceagent.env import exit_on_configuration_error

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceagent.settings")

# Under uvicorn or daphne, a malformed variable ends the process with one line naming it
# (status 1) rather than a traceback through the server's import of this module.
exit_on_configuration_error()

# Build Django first: the routing below imports models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from calls.routing import websocket_urlpatterns  # noqa: E402
from voiceagent.daphne_tuning import configure_daphne  # noqa: E402

configure_daphne()

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # No AllowedHostsOriginValidator here: Twilio may send no Origin header; media
        # sockets authenticate with Twilio's signature and a single-use token instead.
        # The staff live page's socket has its own session and Origin checks (calls/routing.py).
        # type: ignore: types-channels' URLRouter wants a URLPattern subtype re_path never returns.
        "websocket": URLRouter(websocket_urlpatterns),  # type: ignore[arg-type]
    }
)
