"""A minimal HTTP/1.1 keep-alive client on asyncio streams, for load generation.

httpx costs several times more CPU per request than the services' own handling of a small
request; on a 2-core machine the load generator shares the cores with what it measures, so
it must be as cheap as possible. Only what the benchmark needs: Content-Length bodies (the
services answer with Content-Length), no chunked requests, no TLS, no redirects."""

from __future__ import annotations

import asyncio
import time


KEEP_ALIVE = 4.0  # seconds a connection may sit idle before reuse (uvicorn closes idle ones after 5 s)


class Connection:
    def __init__(self, host: str, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.host, self.port = host, port
        self.reader, self.writer = reader, writer
        self.last_used = time.monotonic()

    @property
    def stale(self) -> bool:
        """Idle long enough that the server may have closed it: do not reuse."""
        return time.monotonic() - self.last_used > KEEP_ALIVE or self.writer.is_closing()

    @classmethod
    async def open(cls, host: str, port: int) -> "Connection":
        reader, writer = await asyncio.open_connection(host, port, limit=2 ** 24)
        return cls(host, port, reader, writer)

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, bytes]:
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        if body or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("connection closed by the server")
        status = int(status_line.split(b" ", 2)[1])
        length = 0
        chunked = False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        self.last_used = time.monotonic()
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readline()).strip().split(b";")[0], 16)
                if size == 0:
                    await self.reader.readline()
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readline()
            return status, b"".join(parts)
        return status, await self.reader.readexactly(length) if length else b""

    def close(self) -> None:
        self.writer.close()
