"""Any trustless HTTP gateway, read-only: blocks by `?format=raw`, whole DAGs by `?format=car`.

Nothing a gateway sends is trusted: every block is re-hashed against its CID before it is used
or stored, so a gateway serving wrong bytes is caught (`ArtifactIntegrityError`) and the bytes
are dropped.
"""

from __future__ import annotations

import io

from marketplace.errors import ConfigError
from marketplace.ipfs.car import CarReader
from marketplace.ipfs.cid import CID
from marketplace.ipfs.errors import ArtifactNotFound, StoreError
from marketplace.ipfs.http import (
    ResponseStream,
    make_client,
    read_block_body,
    unreachable_as_error,
)
from marketplace.ipfs.local import LocalStore
from marketplace.ipfs.store import BlockStore, BlockWriter, GcReport

__all__ = ["CAR_MEDIA_TYPE", "DEFAULT_GATEWAY", "RAW_MEDIA_TYPE", "GatewayStore"]

DEFAULT_GATEWAY = "http://127.0.0.1:8080"
RAW_MEDIA_TYPE = "application/vnd.ipld.raw"
CAR_MEDIA_TYPE = "application/vnd.ipld.car"


class GatewayStore(BlockStore):
    """Reads from the trustless gateway at `url` (e.g. a Kubo gateway on port 8080)."""

    def __init__(self, url: str = DEFAULT_GATEWAY, *, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.where = f"gateway {self.url}"
        self._client = make_client(self.url, timeout)

    def close(self) -> None:
        self._client.close()

    def _fetch(self, cid: CID) -> bytes:
        action = f"serve block {cid}"
        with unreachable_as_error(self.where):
            headers = {"Accept": RAW_MEDIA_TYPE}
            with self._client.stream("GET", f"/ipfs/{cid}", params={"format": "raw"}, headers=headers) as response:
                self._check(response.status_code, cid, action)
                return read_block_body(response, self.where, action)

    def fetch_dag(self, root: CID, into: LocalStore) -> int:
        """Copy the whole DAG under `root` into `into` with one CAR request; return blocks stored.

        Blocks are verified one by one as they stream in, stored unpinned (a later gc may drop
        them), and the DAG is checked complete before returning.
        """
        action = f"serve the DAG of {root}"
        headers = {"Accept": f"{CAR_MEDIA_TYPE}; version=1; order=dfs; dups=n"}
        params = {"format": "car", "dag-scope": "all"}
        count = 0
        with into.writer() as writer, unreachable_as_error(self.where):
            with self._client.stream("GET", f"/ipfs/{root}", params=params, headers=headers) as response:
                self._check(response.status_code, root, action)
                for cid, data in CarReader(io.BufferedReader(ResponseStream(response), 1 << 20), self.where):
                    writer.put(cid, (data,))
                    count += 1
            writer.commit([root], pin=False)
        try:
            for _ in into.reachable(root):
                pass
        except ArtifactNotFound as missing:
            raise StoreError(self.where, action, f"its CAR lacks block {missing.cid}") from None
        return count

    def _check(self, status: int, cid: CID, action: str) -> None:
        if status == 404:
            raise ArtifactNotFound(cid, self.where)
        if status != 200:
            raise StoreError(self.where, action, f"HTTP {status}")

    def writer(self) -> BlockWriter:
        raise ConfigError(f"{self.where} is read-only: add with --store local or --store kubo")

    def pin(self, cid: CID) -> None:
        raise ConfigError(f"{self.where} is read-only: it cannot pin")

    def unpin(self, cid: CID) -> None:
        raise ConfigError(f"{self.where} is read-only: it cannot unpin")

    def gc(self) -> GcReport:
        raise ConfigError(f"{self.where} is read-only: it has no garbage to collect")
