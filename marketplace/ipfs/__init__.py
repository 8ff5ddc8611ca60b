"""IPFS artifacts: UnixFS importer, CIDs, CAR files and block stores (embedded, Kubo, gateway).

    importer.Importer   files/directories -> UnixFS DAG (same CIDs as Kubo and ipfs-car)
    reader.DagReader    DAG -> file bytes / directory tree, every block verified
    car                 CARv1 read/write
    store.BlockStore    interface; local.LocalStore, kubo.KuboStore, gateway.GatewayStore
    artifacts           add/get/import/export over any store (what the CLI and daemon call)
"""

from marketplace.ipfs.artifacts import (
    StoreKind,
    add_bytes,
    add_path,
    export_car,
    get,
    import_car,
    open_store,
)
from marketplace.ipfs.cid import CID
from marketplace.ipfs.importer import (
    DEFAULT_PROFILE,
    PROFILES,
    Imported,
    Importer,
    ImportParams,
)
from marketplace.ipfs.reader import DagReader
from marketplace.ipfs.store import BlockStore

__all__ = [
    "CID",
    "DEFAULT_PROFILE",
    "PROFILES",
    "BlockStore",
    "DagReader",
    "ImportParams",
    "Imported",
    "Importer",
    "StoreKind",
    "add_bytes",
    "add_path",
    "export_car",
    "get",
    "import_car",
    "open_store",
]
