"""WebSocket consumers. Placeholder until the media bridge lands."""

from __future__ import annotations

from channels.generic.websocket import AsyncWebsocketConsumer


class MediaStreamConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.close(code=4501)
