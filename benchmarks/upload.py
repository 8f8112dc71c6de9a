"""`python -m benchmarks.upload URL KEY FILE CONTENT_TYPE`: POST one file to a service as a streamed
(chunked) body, the way a finance tool sends a provider's daily file, and print
`{"status", "seconds", "sent", "body"}` as JSON on stdout. Its own process, so the benchmark can
measure its memory apart from the service's; it never holds more of the file than one chunk."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson

CHUNK_BYTES = 256 * 1024


async def upload(url: str, key: str, file: Path, content_type: str) -> dict[str, object]:
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        with file.open("rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                sent += len(chunk)
                yield chunk

    timeout = aiohttp.ClientTimeout(total=1800)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        started = time.perf_counter()
        async with session.post(url, data=body(), headers={"Authorization": f"Bearer {key}",
                                                             "Content-Type": content_type}) as response:
            answer = await response.read()
        seconds = time.perf_counter() - started
    return {"status": response.status, "seconds": seconds, "sent": sent,
            "body": orjson.loads(answer) if answer else None}


def main(argv: list[str]) -> int:
    url, key, file, content_type = argv
    result = asyncio.run(upload(url, key, Path(file), content_type))
    sys.stdout.buffer.write(orjson.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
