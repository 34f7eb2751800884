"""A real WebSocket conversation through the proxy: aiohttp's client and server (RFC 6455 handshake,
masked client frames, text and binary messages, ping/pong, a close handshake) with Steelyard between."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from proxy_support import Harness, make_state
from steelyard.config.desired import BackendEndpoint


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(autoping=True)
    await ws.prepare(request)
    async for message in ws:
        if message.type == aiohttp.WSMsgType.TEXT:
            await ws.send_str(f"echo: {message.data} (via {request.headers.get('X-Forwarded-For')})")
        elif message.type == aiohttp.WSMsgType.BINARY:
            await ws.send_bytes(message.data[::-1])
    return ws


async def test_websocket_echo_through_the_proxy() -> None:
    app = web.Application()
    app.router.add_get("/ws", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with Harness(make_state([BackendEndpoint("127.0.0.1", port)])) as h, \
                aiohttp.ClientSession() as session:
            timeout = aiohttp.ClientWSTimeout(ws_receive=5, ws_close=5)
            async with session.ws_connect(f"http://127.0.0.1:{h.port}/ws", timeout=timeout) as ws:
                await ws.send_str("hello")
                reply = await asyncio.wait_for(ws.receive(), 5)
                assert reply.type == aiohttp.WSMsgType.TEXT
                assert reply.data == "echo: hello (via 127.0.0.1)"  # the upgrade request was forwarded
                big = bytes(range(256)) * 512  # 128 KiB: several reads each way
                await ws.send_bytes(big)
                reply = await asyncio.wait_for(ws.receive(), 5)
                assert reply.type == aiohttp.WSMsgType.BINARY and reply.data == big[::-1]
                await ws.ping(b"are you there")
                await ws.send_str("after ping")
                reply = await asyncio.wait_for(ws.receive(), 5)
                assert reply.data.startswith("echo: after ping")
            assert ws.closed and ws.close_code == aiohttp.WSCloseCode.OK
            assert h.proxy.stats.tunnels == 1
    finally:
        await runner.cleanup()
