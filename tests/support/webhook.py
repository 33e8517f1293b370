"""A real local HTTP receiver for webhook deliveries, and the secret it checks."""

from __future__ import annotations

from aiohttp import web

from streams.local.servers import free_port

SECRET = b"s3cret-for-tests"


class Receiver:
    """A real HTTP server on a free port; ``fail_first`` answers 503 that many times."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.runner = web.AppRunner(app)

    async def start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        await self.runner.cleanup()
