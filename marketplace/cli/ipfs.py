"""`marketplace ipfs ...`: model artifacts in IPFS (add, get, pin, gc, CAR import/export)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from marketplace.cli.console import LazyConsole
from marketplace.ipfs import artifacts
from marketplace.ipfs.artifacts import StoreKind
from marketplace.ipfs.cid import CID
from marketplace.ipfs.importer import DEFAULT_PROFILE, PROFILES, ImportParams, scan_size
from marketplace.ipfs.store import BlockStore

if TYPE_CHECKING:
    from marketplace.ipfs.local import LocalStore

__all__ = ["app"]

app = typer.Typer(
    help=(
        "Model artifacts in IPFS. Files become UnixFS DAGs with the same CIDs as Kubo and ipfs-car; "
        "every block read from any store is re-hashed against its CID."
    ),
    no_args_is_help=True,
)
out = LazyConsole()
err = LazyConsole(stderr=True)

PROGRESS_THRESHOLD = 64 * 1024 * 1024
Profile = Enum("Profile", {name: name for name in PROFILES}, type=str)  # type: ignore[misc]  # members from PROFILES

StoreOption = Annotated[
    StoreKind,
    typer.Option(
        "--store",
        case_sensitive=False,
        envvar="MARKETPLACE_IPFS_STORE",
        help="Where blocks live: the embedded store (local), a Kubo node's RPC API (kubo), "
        "or a trustless gateway, read-only (gateway).",
    ),
]
ApiOption = Annotated[
    str | None,
    typer.Option(
        "--api",
        envvar="MARKETPLACE_IPFS_API",
        help="URL of the Kubo RPC API (default http://127.0.0.1:5001) or of the gateway "
        "(default http://127.0.0.1:8080).",
    ),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Marketplace data directory; the embedded store is its ipfs/ folder "
        "(default $MARKETPLACE_DATA_DIR, else the user data directory).",
    ),
]
CidArgument = Annotated[str, typer.Argument(metavar="CID", help="CIDv0 (Qm...) or CIDv1 (b...).")]


def _local(data_dir: Path | None) -> LocalStore:
    from marketplace.ipfs.local import LocalStore  # not for `add --only-hash`

    return LocalStore(data_dir / "ipfs" if data_dir else None)


def _open(store: StoreKind, api: str | None, data_dir: Path | None) -> BlockStore:
    return _local(data_dir) if store is StoreKind.LOCAL else artifacts.open_store(store, api=api)


def _cache(store: StoreKind, data_dir: Path | None) -> LocalStore | None:
    """Blocks read from a gateway are verified into the embedded store, then read from there."""
    return _local(data_dir) if store is StoreKind.GATEWAY else None


@contextmanager
def _progress_bar(total: int, description: str) -> Iterator[Callable[[int], None] | None]:
    """A transient bar on a terminal's stderr for imports of PROGRESS_THRESHOLD bytes or more;
    None otherwise (a pipe would show nothing, so rich.progress is not even imported)."""
    if total < PROGRESS_THRESHOLD or not err.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, TimeRemainingColumn(), console=err.console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda count: progress.advance(task, count)


def _params(
    profile: Profile | None,
    cid_version: int | None,
    raw_leaves: bool | None,
    chunk_size: int | None,
    max_links: int | None,
) -> ImportParams:
    base = PROFILES[profile.value if profile else DEFAULT_PROFILE]
    changes: dict[str, object] = {}
    if cid_version is not None:
        changes["cid_version"] = cid_version
        changes["raw_leaves"] = cid_version == 1  # as `ipfs add --cid-version`
    if raw_leaves is not None:
        changes["raw_leaves"] = raw_leaves
    if chunk_size is not None:
        changes["chunk_size"] = chunk_size
    if max_links is not None:
        changes["max_links"] = max_links
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]  # each value typed above


@app.command()
def add(
    path: Annotated[Path, typer.Argument(help="File or directory (a model folder) to import.")],
    only_hash: Annotated[
        bool, typer.Option("--only-hash", "-n", help="Only compute the CID; store nothing.")
    ] = False,
    profile: Annotated[
        Profile | None,
        typer.Option(
            help=f"Importer settings: kubo-v0 (Kubo legacy, CIDv0), kubo-v1 (`ipfs add --cid-version 1`) "
            f"or ipfs-car (`ipfs-car pack`); default {DEFAULT_PROFILE}. The options below override it."
        ),
    ] = None,
    cid_version: Annotated[
        int | None, typer.Option(help="CID version 0 or 1; alone it also sets --raw-leaves for 1, as Kubo does.")
    ] = None,
    raw_leaves: Annotated[
        bool | None, typer.Option("--raw-leaves/--no-raw-leaves", help="Leaves as raw blocks, not dag-pb.")
    ] = None,
    chunk_size: Annotated[int | None, typer.Option(help="Bytes per leaf (at most 1 MiB).")] = None,
    max_links: Annotated[int | None, typer.Option(help="Children per inner node of the DAG.")] = None,
    wrap: Annotated[
        bool,
        typer.Option(help="Put a file in a directory under its name (as `ipfs-car pack` and `ipfs add -w`)."),
    ] = False,
    hidden: Annotated[bool, typer.Option(help="Include files and folders whose name starts with '.'.")] = False,
    pin: Annotated[bool, typer.Option(help="Pin the import so gc keeps it.")] = True,
    store: StoreOption = StoreKind.LOCAL,
    api: ApiOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Import PATH and print its CID (last line of stdout)."""
    params = _params(profile, cid_version, raw_leaves, chunk_size, max_links)
    with _progress_bar(scan_size(path, hidden=hidden), "hashing" if only_hash else "importing") as advance:
        if only_hash:
            imported = artifacts.add_path(None, path, params, wrap=wrap, hidden=hidden, progress=advance)
        else:
            with _open(store, api, data_dir) as target:
                imported = artifacts.add_path(target, path, params, wrap=wrap, hidden=hidden, pin=pin, progress=advance)
    out.print(str(imported.cid), highlight=False)


@app.command()
def get(
    cid: CidArgument,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the file or directory (must not exist).")
    ],
    store: StoreOption = StoreKind.LOCAL,
    api: ApiOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Fetch CID to OUTPUT, verifying every block (from a gateway: one CAR, cached in the local store)."""
    root = CID.parse(cid)
    with _open(store, api, data_dir) as source:
        artifacts.get(source, root, output, cache=_cache(store, data_dir))
    err.print(f"wrote {root} to {output}", highlight=False)


@app.command("export-car")
def export_car(
    cid: CidArgument,
    output: Annotated[Path, typer.Option("--output", "-o", help="The .car file to write.")],
    store: StoreOption = StoreKind.LOCAL,
    api: ApiOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Write the DAG under CID to a CARv1 file whose root is CID."""
    root = CID.parse(cid)
    with _open(store, api, data_dir) as source:
        size = artifacts.export_car(source, root, output, cache=_cache(store, data_dir))
    err.print(f"wrote {size} bytes to {output}", highlight=False)


@app.command("import-car")
def import_car(
    car: Annotated[Path, typer.Argument(help="A CARv1 file (from `ipfs dag export`, `ipfs-car pack`, ...).")],
    store: StoreOption = StoreKind.LOCAL,
    api: ApiOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Import every block of a CAR file (each one verified) and pin its roots; print the roots."""
    with _open(store, api, data_dir) as target:
        roots = artifacts.import_car(target, car)
    for root in roots:
        out.print(str(root), highlight=False)


@app.command("pin")
def pin_(
    cid: CidArgument,
    store: StoreOption = StoreKind.LOCAL,
    api: ApiOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Pin the whole DAG under CID, which must be complete in the store."""
    root = CID.parse(cid)
    with _open(store, api, data_dir) as target:
        target.pin(root)
    out.print(f"pinned {root}", highlight=False)


@app.command()
def unpin(
    cid: CidArgument,
    store: StoreOption = StoreKind.LOCAL,
    api: ApiOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Remove the pin of CID (its blocks go at the next gc unless another pin reaches them)."""
    root = CID.parse(cid)
    with _open(store, api, data_dir) as target:
        target.unpin(root)
    out.print(f"unpinned {root}", highlight=False)


@app.command()
def gc(store: StoreOption = StoreKind.LOCAL, api: ApiOption = None, data_dir: DataDirOption = None) -> None:
    """Delete the blocks of the embedded store that no pin reaches."""
    with _open(store, api, data_dir) as target:
        report = target.gc()
    out.print(
        f"removed {report.removed_blocks} blocks ({report.removed_bytes} bytes), kept {report.kept_blocks}",
        highlight=False,
    )
