"""A TCP proxy a test puts in front of a server (the chain node, PostgreSQL) to make it fail for
real: `forward`, `refuse` (every connection reset at once: the server is down), `stall`
(connections accepted, bytes read, nothing ever answered: a hung server) or `freeze` (open
connections kept but nothing passes either way, new ones stall: a server hung mid-query).
Switching to `refuse` or `stall` cuts every open connection, as a crash or a failover would;
`forward` after `freeze` lets the held bytes through. It runs on its own thread and loop, so it
keeps working while the test's loop waits on the daemon."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Literal

__all__ = ["TcpProxy"]

Mode = Literal["forward", "refuse", "stall", "freeze"]


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode: Mode = "forward"
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        self._server = self._run(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def set_mode(self, mode: Mode) -> None:
        """From now on connections are handled so."""
        self._run(self._switch(mode))

    def _run(self, coroutine):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _switch(self, mode: Mode) -> None:
        self.mode = mode
        if mode == "freeze":
            self._flowing.clear()
            return
        self._flowing.set()
        if mode != "forward":
            for writer in list(self._open):
                writer.transport.abort()
            self._open.clear()

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._switch("refuse")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            if self.mode == "refuse":
                return
            if self.mode in ("stall", "freeze"):
                while await reader.read(65536):
                    pass
                return
            up_reader, upstream = await asyncio.open_connection(*self.target)
            self._open.add(upstream)
            await asyncio.gather(self._pipe(reader, upstream), self._pipe(up_reader, writer))
        except OSError:
            pass
        finally:
            for end in (writer, upstream):
                if end is not None:
                    self._open.discard(end)
                    end.transport.abort()

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                await self._flowing.wait()
                sink.write(data)
                await sink.drain()
            sink.transport.abort()
