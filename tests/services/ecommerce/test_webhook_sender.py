"""The sender's connections to one receiver: never more than its per-host share, each kept alive."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestServer

from services.ecommerce.delivery import Sender
from shared.settings import Settings
from tests.polling import eventually


async def test_one_receiver_gets_at_most_its_connections_and_each_is_reused() -> None:
    in_flight, most, peers = 0, 0, set()
    release = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        nonlocal in_flight, most
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        in_flight += 1
        most = max(most, in_flight)
        await release.wait()
        in_flight -= 1
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    sender = Sender(Settings(_env_file=None, webhook_allow_hosts=[f"127.0.0.1:{server.port}"],  # type: ignore[call-arg]
                             webhook_connections_per_host=3))
    await sender.start()
    try:
        url = f"http://127.0.0.1:{server.port}/hook"
        sends = [asyncio.create_task(sender.send(url, b"{}", {})) for _ in range(9)]
        await eventually(lambda: asyncio.sleep(0, result=in_flight >= 3 or None))
        await asyncio.sleep(0.2)  # the other six wait for a connection instead of opening more
        assert most == 3
        release.set()
        outcomes = await asyncio.gather(*sends)
    finally:
        await sender.close()
        await server.close()
    assert all(o.ok for o in outcomes), outcomes
    assert most == 3 and len(peers) == 3  # nine requests over three kept-alive connections
