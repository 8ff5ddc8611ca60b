"""A stand-in trustless gateway (specs.ipfs.tech/http-gateways/trustless-gateway).

`GET /ipfs/{cid}` with `?format=raw` / `Accept: application/vnd.ipld.raw` serves one block,
with `?format=car` / `Accept: application/vnd.ipld.car` a CARv1 of the DAG in depth-first order
(`dups` as asked, default n). 404 when the root block is missing, 400 without a format (strict
trustless mode), 405 for other methods. Switches for tests: `tamper` (a set of CIDs served
altered), `drop` (CIDs left out of CARs).
"""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Self
from urllib.parse import parse_qs, urlsplit

from standin_server import BackgroundServer, MemoryBlocks, flip_first_byte

from marketplace.errors import MarketplaceError
from marketplace.ipfs.car import block_prefix, encode_header
from marketplace.ipfs.cid import CID

RAW = "application/vnd.ipld.raw"
CAR = "application/vnd.ipld.car"


class GatewayStandin:
    def __init__(self) -> None:
        self.blocks = MemoryBlocks()
        self.tamper: set[CID] = set()
        self.drop: set[CID] = set()
        self.requests: list[str] = []
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self._reply(405, "text/plain", b"method not allowed")

            do_PUT = do_DELETE = do_POST

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                standin.requests.append(self.path)
                query = {key: values[-1] for key, values in parse_qs(url.query).items()}
                accept = self.headers.get("Accept", "")
                wanted = query.get("format") or ("car" if CAR in accept else "raw" if RAW in accept else None)
                if not url.path.startswith("/ipfs/") or wanted not in ("raw", "car"):
                    self._reply(400, "text/plain", b"only trustless responses: ask for format=raw or format=car")
                    return
                try:
                    cid = CID.parse(url.path.removeprefix("/ipfs/"))
                except MarketplaceError:
                    self._reply(400, "text/plain", b"invalid CID")
                    return
                root = standin.blocks.get(cid)
                if root is None:
                    self._reply(404, "text/plain", b"block not found")
                    return
                if wanted == "raw":
                    self._reply(200, RAW, standin._served(cid, root))
                    return
                dups = query.get("car-dups") or ("y" if "dups=y" in accept else "n")
                self.send_response(200)
                self.send_header("Content-Type", f"{CAR}; version=1; order=dfs; dups={dups}")
                self.send_header("Content-Disposition", f'attachment; filename="{cid}.car"')
                self.end_headers()
                self.wfile.write(encode_header([cid]))
                for block_cid, data in standin.blocks.dfs(cid, dups=dups == "y"):
                    if block_cid not in standin.drop:
                        self.wfile.write(block_prefix(block_cid, len(data)) + standin._served(block_cid, data))

            def _reply(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = BackgroundServer(Handler)
        self.url = self._server.url

    def _served(self, cid: CID, data: bytes) -> bytes:
        return flip_first_byte(data) if cid in self.tamper else data

    def __enter__(self) -> Self:
        self._server.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._server.__exit__(kind, error, trace)
