"""A stand-in for Kubo's RPC API, following its documented behaviour (no Kubo binary installs here).

Implemented: `version`, `block/get`, `dag/import`, `pin/add`, `pin/rm`, as an offline Kubo node
answers them (docs.ipfs.tech/reference/kubo/rpc):
- POST only: any other method gets 405; an unknown command 404 "404 page not found".
- Arguments in the query string (`arg=...`, flags as `name=true`); a missing argument is a 400.
- Errors: HTTP 500 with `{"Message": ..., "Code": 0, "Type": "error"}`.
- `dag/import` takes the CAR as a multipart/form-data file part and streams NDJSON, chunked:
  `{"Root": {"Cid": {"/": cid}, "PinErrorMsg": ""}}` per root, then `{"Stats": {...}}` with stats=true.
- `block/get` answers raw bytes as text/plain.
Switches for tests: `tamper` (block/get serves altered bytes) and `lie_about_root` (dag/import
reports another root than the CAR's).
"""

from __future__ import annotations

import io
import json
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Self
from urllib.parse import parse_qs, urlsplit

from standin_server import BackgroundServer, MemoryBlocks, flip_first_byte

from marketplace.errors import MarketplaceError
from marketplace.ipfs.car import CarReader
from marketplace.ipfs.cid import CID

KUBO_VERSION = {"Version": "0.32.1", "Commit": "", "Repo": "16", "System": "amd64/linux", "Golang": "go1.23.3"}


class _Fail(Exception):
    def __init__(self, status: int, message: str, code: int = 0) -> None:
        self.status, self.message, self.code = status, message, code


def _multipart_file(content_type: str, body: bytes) -> bytes:
    """The content of the first part of a multipart/form-data body."""
    if "boundary=" not in content_type:
        raise _Fail(400, "file argument 'path' is required", 1)
    boundary = content_type.split("boundary=", 1)[1].split(";")[0].strip('"').encode()
    start = body.index(b"--" + boundary + b"\r\n") + len(boundary) + 4
    content = body.index(b"\r\n\r\n", start) + 4
    return body[content : body.index(b"\r\n--" + boundary, content)]


class KuboStandin:
    def __init__(self) -> None:
        self.blocks = MemoryBlocks()
        self.pins: set[CID] = set()
        self.commands: list[str] = []
        self.tamper = False
        self.lie_about_root: CID | None = None
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._text(405, "405 - Method Not Allowed")

            do_PUT = do_DELETE = do_HEAD = do_GET

            def do_POST(self) -> None:
                url = urlsplit(self.path)
                query = {key: values[-1] for key, values in parse_qs(url.query).items()}
                command = url.path.removeprefix("/api/v0/")
                standin.commands.append(command)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                route = {
                    "version": standin._version,
                    "block/get": standin._block_get,
                    "dag/import": standin._dag_import,
                    "pin/add": standin._pin_add,
                    "pin/rm": standin._pin_rm,
                }.get(command)
                if route is None or not url.path.startswith("/api/v0/"):
                    self._text(404, "404 page not found")
                    return
                try:
                    route(self, query, body)
                except _Fail as fail:
                    payload = {"Message": fail.message, "Code": fail.code, "Type": "error"}
                    self._send(fail.status, "application/json", json.dumps(payload).encode())

            def _text(self, status: int, text: str) -> None:
                self._send(status, "text/plain; charset=utf-8", text.encode())

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def stream_ndjson(self, items: list[dict[str, object]]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Chunked-Output", "1")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Trailer", "X-Stream-Error")
                self.end_headers()
                for item in items:
                    line = json.dumps(item).encode() + b"\n"
                    self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")

        self._server = BackgroundServer(Handler)
        self.url = self._server.url

    def __enter__(self) -> Self:
        self._server.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._server.__exit__(kind, error, trace)

    # --- commands -------------------------------------------------------------------------

    @staticmethod
    def _arg(query: dict[str, str]) -> CID:
        if "arg" not in query:
            raise _Fail(400, 'argument "cid" is required', 1)
        try:
            return CID.parse(query["arg"])
        except MarketplaceError as error:
            raise _Fail(500, f"invalid path {query['arg']!r}: {error}") from None

    def _not_found(self, cid: CID) -> _Fail:
        return _Fail(500, f"block was not found locally (offline): ipld: could not find {cid}")

    def _version(self, handler: BaseHTTPRequestHandler, query: dict[str, str], body: bytes) -> None:
        handler._send(200, "application/json", json.dumps(KUBO_VERSION).encode())  # type: ignore[attr-defined]

    def _block_get(self, handler: BaseHTTPRequestHandler, query: dict[str, str], body: bytes) -> None:
        cid = self._arg(query)
        data = self.blocks.get(cid)
        if data is None:
            raise self._not_found(cid)
        handler._send(200, "text/plain", flip_first_byte(data) if self.tamper else data)  # type: ignore[attr-defined]

    def _dag_import(self, handler: BaseHTTPRequestHandler, query: dict[str, str], body: bytes) -> None:
        car = _multipart_file(handler.headers.get("Content-Type", ""), body)
        try:
            reader = CarReader(io.BytesIO(car), "upload")
            blocks = list(reader)
        except MarketplaceError as error:
            raise _Fail(500, f"failed to import CAR: {error}") from None
        for cid, data in blocks:
            self.blocks.put(cid, data)
        items: list[dict[str, object]] = []
        for root in reader.roots:
            message = ""
            if query.get("pin-roots", "true") == "true":
                missing = self.blocks.missing(root)
                if missing is None:
                    self.pins.add(root)
                else:
                    message = f"block was not found locally (offline): ipld: could not find {missing}"
            shown = self.lie_about_root or root
            items.append({"Root": {"Cid": {"/": str(shown)}, "PinErrorMsg": message}})
        if query.get("stats") == "true":
            size = sum(len(data) for _, data in blocks)
            items.append({"Stats": {"BlockCount": len(blocks), "BlockBytesCount": size}})
        handler.stream_ndjson(items)  # type: ignore[attr-defined]

    def _pin_add(self, handler: BaseHTTPRequestHandler, query: dict[str, str], body: bytes) -> None:
        cid = self._arg(query)
        missing = self.blocks.missing(cid)
        if missing is not None:
            raise self._not_found(missing)
        self.pins.add(cid)
        handler._send(200, "application/json", json.dumps({"Pins": [str(cid)]}).encode())  # type: ignore[attr-defined]

    def _pin_rm(self, handler: BaseHTTPRequestHandler, query: dict[str, str], body: bytes) -> None:
        cid = self._arg(query)
        if cid not in self.pins:
            raise _Fail(500, "not pinned or pinned indirectly")
        self.pins.discard(cid)
        handler._send(200, "application/json", json.dumps({"Pins": [str(cid)]}).encode())  # type: ignore[attr-defined]
