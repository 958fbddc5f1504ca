from __future__ import annotations

from django.urls import re_path

from calls import consumers

websocket_urlpatterns = [
    # Twilio may or may not append a slash; accept both.
    re_path(r"^media-stream/?$", consumers.MediaStreamConsumer.as_asgi()),
]
