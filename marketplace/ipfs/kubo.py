"""Any Kubo node through its RPC API (`/api/v0`, POST only, as Kubo requires).

Imports never ask Kubo to chunk anything: we build the DAG ourselves, send it as a CAR to
`dag/import`, and check that the root Kubo reports is the CID we computed. Reads use
`block/get` and are re-hashed like every other read. Errors come back as HTTP 500 with
`{"Message": ..., "Code": 0, "Type": "error"}`; they become `StoreError`, or `ArtifactNotFound`
when Kubo says the block is missing.
"""

from __future__ import annotations

import json
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import httpx

from marketplace.errors import ConfigError
from marketplace.ipfs.car import block_prefix, encode_header
from marketplace.ipfs.cid import CID
from marketplace.ipfs.errors import ArtifactNotFound, StoreError
from marketplace.ipfs.http import make_client, read_block_body, unreachable_as_error
from marketplace.ipfs.store import BlockStore, BlockWriter, Buffer, GcReport

__all__ = ["DEFAULT_API", "KuboStore"]

DEFAULT_API = "http://127.0.0.1:5001"
_UPLOAD_CHUNK = 1024 * 1024


class KuboStore(BlockStore):
    """Blocks in a Kubo node reached at `api` (the RPC address, not the gateway)."""

    def __init__(self, api: str = DEFAULT_API, *, timeout: float = 60.0) -> None:
        self.api = api.rstrip("/")
        self.where = f"Kubo RPC at {self.api}"
        self._client = make_client(self.api + "/api/v0/", timeout)

    def close(self) -> None:
        self._client.close()

    def version(self) -> str:
        """The Kubo version string (also a cheap reachability check)."""
        return str(self._call("version", "report its version").get("Version", "?"))

    def _fetch(self, cid: CID) -> bytes:
        request = self._client.stream("POST", "block/get", params={"arg": str(cid)})
        with unreachable_as_error(self.where), request as response:
            if response.status_code != 200:
                response.read()
                self._raise(response, f"get block {cid}", cid)
            return read_block_body(response, self.where, f"get block {cid}")

    def writer(self) -> KuboWriter:
        return KuboWriter(self)

    def pin(self, cid: CID) -> None:
        answer = self._call("pin/add", f"pin {cid}", params={"arg": str(cid), "recursive": "true"}, cid=cid)
        if not any(CID.parse(text) == cid for text in answer.get("Pins") or []):
            raise StoreError(self.where, f"pin {cid}", f"it answered {answer!r}")

    def unpin(self, cid: CID) -> None:
        self._call("pin/rm", f"unpin {cid}", params={"arg": str(cid)}, cid=cid)

    def gc(self) -> GcReport:
        raise ConfigError("garbage collection of a Kubo node is done on the node: `ipfs repo gc`")

    # --- plumbing -----------------------------------------------------------------------------

    def _call(self, command: str, action: str, *, cid: CID | None = None, **kwargs: Any) -> dict[str, Any]:
        with unreachable_as_error(self.where):
            response = self._client.post(command, **kwargs)
        if response.status_code != 200:
            self._raise(response, action, cid)
        try:
            answer = response.json()
        except ValueError:
            raise StoreError(self.where, action, f"it answered non-JSON {response.text[:200]!r}") from None
        return answer if isinstance(answer, dict) else {}

    def _raise(self, response: httpx.Response, action: str, cid: CID | None) -> None:
        try:
            message = str(response.json().get("Message", ""))
        except (ValueError, AttributeError):
            message = response.text.strip()[:200]
        message = message or f"HTTP {response.status_code}"
        if cid is not None and ("not found" in message or "could not find" in message):
            raise ArtifactNotFound(cid, self.where)
        raise StoreError(self.where, action, f"HTTP {response.status_code}: {message}")

    def import_car(self, body: Iterator[bytes], size: int, roots: Sequence[CID], *, pin: bool) -> None:
        """POST a CAR (given as chunks totalling `size` bytes) to `dag/import`, check the roots."""
        boundary = uuid.uuid4().hex
        head = (
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"import.car\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()

        def content() -> Iterator[bytes]:
            yield head
            yield from body
            yield tail

        action = f"import {', '.join(map(str, roots))}"
        headers = {
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(head) + size + len(tail)),
        }
        params = {"pin-roots": "true" if pin else "false", "stats": "true"}
        request = self._client.stream("POST", "dag/import", params=params, headers=headers, content=content())
        with unreachable_as_error(self.where), request as response:
            if response.status_code != 200:
                response.read()
                self._raise(response, action, None)
            reported = self._import_roots(response, action)
        for root in roots if pin else ():
            if root not in reported:
                raise StoreError(self.where, action, f"it reported roots {sorted(map(str, reported))}, not {root}")
            if reported[root]:
                raise StoreError(self.where, action, f"pinning {root} failed: {reported[root]}")

    def _import_roots(self, response: httpx.Response, action: str) -> dict[CID, str]:
        """Parse dag/import's NDJSON: `{"Root": {"Cid": {"/": ...}, "PinErrorMsg": ...}}` lines."""
        roots: dict[CID, str] = {}
        for line in response.iter_lines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:
                raise StoreError(self.where, action, f"it streamed non-JSON {line[:200]!r}") from None
            if item.get("Type") == "error":
                raise StoreError(self.where, action, str(item.get("Message")))
            if "Root" in item:
                root = item["Root"]
                roots[CID.parse(root["Cid"]["/"])] = root.get("PinErrorMsg") or ""
        trailer_error = response.headers.get("X-Stream-Error")
        if trailer_error:
            raise StoreError(self.where, action, trailer_error)
        return roots


class KuboWriter(BlockWriter):
    """Spools blocks in CAR framing to a temp file; `commit` uploads them in one `dag/import`."""

    def __init__(self, store: KuboStore) -> None:
        self._store = store
        self._spool = tempfile.TemporaryFile(prefix="marketplace-car-")
        self._size = 0
        self._seen: set[bytes] = set()
        self._mutex = threading.Lock()

    def put(self, cid: CID, parts: Sequence[Buffer]) -> None:
        size = sum(len(part) for part in parts)
        prefix = block_prefix(cid, size)
        with self._mutex:
            if bytes(cid) in self._seen:
                return
            self._seen.add(bytes(cid))
            self._spool.write(prefix)
            for part in parts:
                self._spool.write(part)
            self._size += len(prefix) + size

    def commit(self, roots: Sequence[CID], *, pin: bool = True) -> None:
        header = encode_header(roots)
        self._spool.seek(0)

        def body() -> Iterator[bytes]:
            yield header
            while chunk := self._spool.read(_UPLOAD_CHUNK):
                yield chunk

        self._store.import_car(body(), len(header) + self._size, roots, pin=pin)

    def close(self) -> None:
        self._spool.close()
