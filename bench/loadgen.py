"""A lean HTTP/1.1 load generator: N keep-alive connections, each POSTing in a loop.

aiohttp's client costs about as much CPU per request as the server under test, and on a
2-core machine the load generator shares the CPU with the daemon; raw asyncio streams
with pre-built request bytes keep the client's share small and the figure about the server.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import attrs


@attrs.frozen(kw_only=True)
class LoadResult:
    requests: int
    seconds: float
    statuses: dict[int, int]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def _request(host: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in headers.items()),
        "",
        "",
    ]
    return "\r\n".join(lines).encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return status, body


async def post_all(
    base_url: str,
    path: str,
    bodies: list[dict[str, Any]],
    *,
    headers: dict[str, str],
    connections: int = 32,
    on_answer: Callable[[int, bytes], None] | None = None,
) -> LoadResult:
    """POST every body (JSON) over ``connections`` keep-alive connections; the rate."""
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    payloads = [_request(f"{host}:{port}", path, json.dumps(b).encode(), headers) for b in bodies]
    statuses: Counter[int] = Counter()
    next_index = iter(range(len(payloads)))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for i in next_index:
                writer.write(payloads[i])
                status, body = await _read_response(reader)
                statuses[status] += 1
                if on_answer is not None:
                    on_answer(status, body)
        finally:
            writer.close()
            await writer.wait_closed()

    started = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(connections):
            tg.create_task(connection())
    elapsed = time.perf_counter() - started
    return LoadResult(requests=len(payloads), seconds=elapsed, statuses=dict(statuses))
