"""`marketplace ipfs ...`: commands, options, and one-line errors with the right exit codes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from gateway_standin import GatewayStandin
from kubo_standin import KuboStandin
from standin_server import MemoryBlocks
from typer.testing import CliRunner, Result

from marketplace.cli import ipfs as ipfs_cli
from marketplace.cli.console import LazyConsole
from marketplace.errors import ConfigError
from marketplace.ipfs.cid import CID
from marketplace.ipfs.errors import InvalidCid
from marketplace.ipfs.importer import PROFILES, Importer, ImportParams

runner = CliRunner()
EMPTY = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"  # the empty file, raw leaf


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(os.urandom(700_000))
    return path


def invoke(data_dir: Path, *args: str) -> Result:
    return runner.invoke(ipfs_cli.app, list(args), env={"MARKETPLACE_DATA_DIR": str(data_dir)})


def _cid_of(path: Path, params: ImportParams = PROFILES["kubo-v1"], **options: bool) -> str:
    with Importer(params) as importer:
        return str(importer.add_path(path, **options).cid)


def test_add_prints_the_cid_last_and_get_writes_it_back(data_dir: Path, weights: Path, tmp_path: Path) -> None:
    added = invoke(data_dir, "add", str(weights))
    assert added.exit_code == 0, added.output
    cid = added.stdout.strip().splitlines()[-1]
    assert cid == _cid_of(weights)
    fetched = invoke(data_dir, "get", cid, "-o", str(tmp_path / "copy.onnx"))
    assert fetched.exit_code == 0
    assert (tmp_path / "copy.onnx").read_bytes() == weights.read_bytes()


def test_only_hash_stores_nothing(data_dir: Path, weights: Path) -> None:
    result = invoke(data_dir, "add", "--only-hash", str(weights))
    assert result.stdout.strip() == _cid_of(weights)
    assert not (data_dir / "ipfs").exists()


def test_local_commands_load_no_http_client_nor_progress_bar(data_dir: Path, weights: Path) -> None:
    """`ipfs add` starts fast: httpx (Kubo, gateway) and rich.progress load only when used, and
    `--only-hash` loads the importer alone (not the store, its ctypes and platformdirs, nor CAR)."""
    store_modules = ["ctypes", "marketplace.ipfs.car", "marketplace.ipfs.local", "platformdirs"]
    script = (
        "import sys; from typer.testing import CliRunner; from marketplace.cli.ipfs import app; "
        "result = CliRunner().invoke(app, ['add', *sys.argv[1:]]); "
        "print(result.stdout.strip().splitlines()[-1]); "
        f"print(sorted(name for name in ('httpx', 'rich.progress', *{store_modules}) if name in sys.modules))"
    )
    env = {**os.environ, "MARKETPLACE_DATA_DIR": str(data_dir)}
    store_loads = ["ctypes", "marketplace.ipfs.local", "platformdirs"]  # the names are right: they do load
    for options, loaded in ((["--only-hash"], []), ([], store_loads)):
        command = [sys.executable, "-c", script, *options, str(weights)]
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        assert done.stdout.splitlines() == [_cid_of(weights), str(loaded)], done.stderr


def test_progress_never_reaches_stdout(
    data_dir: Path, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ipfs_cli, "PROGRESS_THRESHOLD", 0)
    monkeypatch.setattr(ipfs_cli, "err", LazyConsole(stderr=True, force_terminal=True))
    result = invoke(data_dir, "add", str(weights))
    assert result.stdout.splitlines() == [_cid_of(weights)]
    assert "importing" in result.stderr  # the bar was drawn, on stderr


@pytest.mark.parametrize(
    ("options", "params"),
    [
        (["--profile", "kubo-v0"], PROFILES["kubo-v0"]),
        (["--cid-version", "0"], PROFILES["kubo-v0"]),  # as `ipfs add --cid-version 0`
        (["--profile", "kubo-v0", "--cid-version", "1"], PROFILES["kubo-v1"]),
        (["--cid-version", "1", "--no-raw-leaves"], ImportParams(cid_version=1, raw_leaves=False)),
        (["--profile", "ipfs-car", "--chunk-size", "4096", "--max-links", "3"], ImportParams(1, True, 4096, 3)),
    ],
)
def test_profile_and_overrides(data_dir: Path, weights: Path, options: list[str], params: ImportParams) -> None:
    result = invoke(data_dir, "add", "-n", str(weights), *options)
    assert result.stdout.strip() == _cid_of(weights, params)


def test_car_pin_unpin_gc(data_dir: Path, weights: Path, tmp_path: Path) -> None:
    cid = invoke(data_dir, "add", str(weights), "--wrap").stdout.strip()
    assert invoke(data_dir, "export-car", cid, "-o", str(tmp_path / "m.car")).exit_code == 0
    other = tmp_path / "other"
    assert invoke(other, "import-car", str(tmp_path / "m.car")).stdout.split() == [cid]
    assert invoke(other, "get", cid, "-o", str(tmp_path / "dir")).exit_code == 0
    assert (tmp_path / "dir" / "model.onnx").read_bytes() == weights.read_bytes()
    assert invoke(other, "unpin", cid).stdout.strip() == f"unpinned {cid}"
    assert invoke(other, "gc").stdout.startswith("removed 5 blocks")
    assert invoke(data_dir, "gc").stdout.startswith("removed 0 blocks")
    assert invoke(data_dir, "pin", cid).stdout.strip() == f"pinned {cid}"


def _seed(gateway: GatewayStandin, blocks: MemoryBlocks, root: str) -> None:
    for cid, data in blocks.dfs(CID.parse(root), dups=False):
        gateway.blocks.put(cid, data)


def test_kubo_and_gateway_stores(data_dir: Path, weights: Path, tmp_path: Path, kubo: KuboStandin) -> None:
    cid = invoke(data_dir, "add", str(weights), "--store", "kubo", "--api", kubo.url).stdout.strip()
    assert cid == _cid_of(weights) and len(kubo.blocks) == 4 and kubo.pins == {CID.parse(cid)}
    with GatewayStandin() as gateway:
        _seed(gateway, kubo.blocks, cid)
        options = ["--store", "gateway", "--api", gateway.url]
        result = invoke(data_dir, "get", cid, "-o", str(tmp_path / "g.onnx"), *options)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "g.onnx").read_bytes() == weights.read_bytes()


def test_errors_raise_marketplace_errors(data_dir: Path, tmp_path: Path) -> None:
    missing = invoke(data_dir, "add", str(tmp_path / "absent.onnx"))
    assert missing.exit_code == 1 and isinstance(missing.exception, ConfigError)
    invalid = invoke(data_dir, "get", "QmNotACid", "-o", str(tmp_path / "x"))
    assert invalid.exit_code == 1 and isinstance(invalid.exception, InvalidCid)
    read_only = invoke(data_dir, "pin", EMPTY, "--store", "gateway")
    assert read_only.exit_code == 1 and isinstance(read_only.exception, ConfigError)


def test_usage_errors_exit_2(data_dir: Path) -> None:
    assert invoke(data_dir, "get", EMPTY).exit_code == 2
    assert invoke(data_dir, "add").exit_code == 2
    assert invoke(data_dir, "add", "x", "--profile", "kubo-v9").exit_code == 2


def _main(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real entry point, so MarketplaceError handling in main() is part of the test."""
    code = "from marketplace.cli.main import main; main()"
    env = {**os.environ, "MARKETPLACE_DATA_DIR": str(data_dir), "COLUMNS": "400"}
    command = [sys.executable, "-c", code, "ipfs", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False)


def test_unreachable_api_is_one_line_and_exit_1(data_dir: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = _main(data_dir, "pin", EMPTY, "--store", "kubo", "--api", f"http://127.0.0.1:{port}")
    assert result.returncode == 1 and result.stdout == ""
    expected = f"error: Kubo RPC at http://127.0.0.1:{port} is unavailable: [Errno 111] Connection refused"
    assert result.stderr.splitlines() == [expected]


def test_a_lying_gateway_is_one_line_and_exit_1(
    data_dir: Path, weights: Path, tmp_path: Path, kubo: KuboStandin
) -> None:
    cid = invoke(data_dir, "add", str(weights), "--store", "kubo", "--api", kubo.url).stdout.strip()
    with GatewayStandin() as gateway:
        _seed(gateway, kubo.blocks, cid)
        gateway.tamper.add(CID.parse(cid))
        options = ["--store", "gateway", "--api", gateway.url]
        result = _main(data_dir, "get", cid, "-o", str(tmp_path / "out.onnx"), *options)
    assert result.returncode == 1 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: bytes from gateway {gateway.url} for {cid} hash to ") and line.endswith(": refused")
    assert not (tmp_path / "out.onnx").exists()
