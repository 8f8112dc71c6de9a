"""Raw HTTP/1.1 over a real socket, for tests of what arrives in pieces, slowly, or not at all.

aiohttp's client always sends a request whole; these helpers write the head and the body in as many
writes as a test likes, with pauses between them, and read back the answer or the server's close.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson

from tests.conftest import Api

# How long a helper waits for the server before the test fails (a safety net, not a measurement).
PATIENCE_S = 20.0


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


class Wire:
    """One TCP connection to a test service."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, api: Api) -> Wire:
        reader, writer = await asyncio.open_connection(api.client.host, api.client.port)
        return cls(reader, writer)

    async def send(self, *parts: bytes, pause_s: float = 0.05) -> None:
        """Each part in its own write, drained, with a pause before the next."""
        for i, part in enumerate(parts):
            if i:
                await asyncio.sleep(pause_s)
            self.writer.write(part)
            await self.writer.drain()

    async def send_while_open(self, *parts: bytes) -> bool:
        """Send the parts unless the server ends the connection first (it may, once it has refused)."""
        try:
            await self.send(*parts, pause_s=0)
        except ConnectionError:
            return False
        return True

    async def answer(self) -> Answer:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), PATIENCE_S)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), PATIENCE_S)
        return Answer(int(status_line.split()[1]), headers, body)

    async def closed_by_server(self) -> bool:
        """Whether the server ends the connection (EOF or reset) before PATIENCE_S, reading what comes."""
        try:
            async with asyncio.timeout(PATIENCE_S):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        return True

    def close(self) -> None:
        self.writer.close()


def head(method: str, path: str, api: Api, headers: dict[str, str] | None = None, *,
         length: int | None = None, chunked: bool = False) -> bytes:
    """A request head with the api's key; Content-Length `length` or chunked framing."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {api.client.host}:{api.client.port}"]
    if api.key:
        lines.append(f"Authorization: Bearer {api.key}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


LAST_CHUNK = b"0\r\n\r\n"


def halves(data: bytes, at: int | None = None) -> tuple[bytes, bytes]:
    at = len(data) // 2 if at is None else at
    return data[:at], data[at:]


async def exchange(api: Api, method: str, path: str, body: bytes, *parts: bytes,
                   headers: dict[str, str] | None = None, pause_s: float = 0.05) -> Answer:
    """One request whose body (Content-Length framed) is sent as `parts` (default: two halves)."""
    wire = await Wire.open(api)
    try:
        await wire.send(head(method, path, api, headers, length=len(body)), *(parts or halves(body)),
                        pause_s=pause_s)
        return await wire.answer()
    finally:
        wire.close()
