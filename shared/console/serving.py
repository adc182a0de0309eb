"""uvicorn's server for the console: it ends the open event streams before it drains.

uvicorn waits for the responses in flight before it runs the app's lifespan shutdown,
and an event stream never finishes on its own: every open page would hold the shutdown
for `timeout_graceful_shutdown` and then be cut off mid-response. Ending the streams
first lets each one finish cleanly (its browser reconnects to the next console).
"""

from __future__ import annotations

import socket

import uvicorn

from shared.console.feed import AlertFeed


class ConsoleServer(uvicorn.Server):
    """`uvicorn.Server` that closes the console's alert feed as its shutdown begins."""

    def __init__(self, config: uvicorn.Config, feed: AlertFeed) -> None:
        super().__init__(config)
        self.feed = feed

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self.feed.close()
        await super().shutdown(sockets)
