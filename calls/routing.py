from __future__ import annotations

from channels.auth import AuthMiddlewareStack
from channels.security.websocket import AllowedHostsOriginValidator
from django.urls import re_path

from calls import consumers, live_page, web_phone

websocket_urlpatterns = [
    # Twilio may or may not append a slash; accept both. The optional last segment is a
    # worker's WORKER_ROUTE, for the proxy (any worker serves any route). Authenticated by
    # Twilio's signature and a single-use token, never by a session: no auth middleware here.
    # type: ignore: django-stubs' re_path takes Django views only; channels routes ASGI apps with it.
    re_path(r"^media-stream(?:/[A-Za-z0-9_-]{1,32})?/?$", consumers.MediaStreamConsumer.as_asgi()),  # type: ignore[arg-type]
    # Staff browsers, authenticated by their Django session. The Origin check stops another
    # site from opening this socket with a signed-in staff member's cookie.
    re_path(
        r"^ws/live/?$",
        AllowedHostsOriginValidator(AuthMiddlewareStack(live_page.LiveCallsConsumer.as_asgi())),
    ),
    # The staff web phone: Twilio's media protocol from a browser, authenticated like /ws/live.
    re_path(
        r"^ws/phone/?$",
        AllowedHostsOriginValidator(AuthMiddlewareStack(web_phone.WebPhoneConsumer.as_asgi())),
    ),
]
