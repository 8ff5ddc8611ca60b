"""`marketplace provider ...`: listing end to end, validation before any transaction, versions,
reprice/pause/retire with decoded custom errors, and one-line errors from the real command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_fixtures import Cli, find
from eth_account import Account
from web3 import Web3

from marketplace.accounts import AccountStore
from marketplace.chain.market import Market
from marketplace.chain.views import ModelStatus
from marketplace.cli import ipfs as ipfs_cli
from marketplace.errors import ConfigError, ContractReverted, InsufficientFunds
from marketplace.ipfs import CID
from marketplace.metadata import ModelMetadata
from marketplace.runners.demo_models import ModelSpec, train_iris_classifier
from marketplace.types import TokenPricing

PROVIDER = "dev5"
CID_TEXT = r"(b[a-z2-7]{20,})"


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelSpec, Path]:
    folder = tmp_path_factory.mktemp("iris")
    spec = train_iris_classifier(folder / "iris.onnx")
    schema = folder / "schema.json"
    schema.write_text(json.dumps(spec.input_schema))
    return spec, schema


def list_iris(cli: Cli, iris: tuple[ModelSpec, Path], *extra: str, price: str = "0.002") -> tuple[str, Any]:
    spec, schema = iris
    result = cli("provider", "list-model", str(spec.path), "--name", spec.name, "--description", spec.description,
                 "--price", price, "--input-schema", str(schema), "--endpoint", "http://127.0.0.1:8000",
                 "--example-input", json.dumps(spec.example_input), "--account", PROVIDER, *extra)
    return find(r"listed model (0x[0-9a-f]{64})", result.stdout), result


def only_hash(cli: Cli, path: Path) -> str:
    from typer.testing import CliRunner

    return CliRunner().invoke(ipfs_cli.app, ["add", "--only-hash", str(path)]).stdout.strip()


def test_list_model_imports_both_cids_and_registers_the_model(
    cli: Cli, iris: tuple[ModelSpec, Path], market_of: Callable[[Any], Market], tmp_path: Path,
) -> None:
    spec, _ = iris
    model_hex, result = list_iris(cli, iris)
    artifact = find(rf"artifact\s+{CID_TEXT}", result.stdout)
    metadata = find(rf"metadata\s+{CID_TEXT}", result.stdout)
    assert artifact == only_hash(cli, spec.path)  # the same CID as `marketplace ipfs add --only-hash`
    meta_file = tmp_path / "metadata.json"
    metadata_doc = ModelMetadata(name=spec.name, description=spec.description, format="onnx",
                                 input_schema=spec.input_schema, example_input=spec.example_input)
    meta_file.write_bytes(metadata_doc.to_json_bytes())
    assert metadata == only_hash(cli, meta_file)
    assert (cli.data_dir / "ipfs").is_dir()  # both are in the embedded store, pinned
    model = market_of(None).registry.get_model(bytes.fromhex(model_hex[2:]))
    assert model.owner == "0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc"  # dev5
    assert model.price == 2 * 10**15 and model.status is ModelStatus.ACTIVE and model.artifact_version == 1
    assert str(CID(1, model.artifact_codec, model.artifact_digest)) == artifact
    assert str(CID(1, model.metadata_codec, model.metadata_digest)) == metadata
    listed = market_of(None).catalog().model(bytes.fromhex(model_hex[2:]), 31337)
    assert listed.info.endpoint == "http://127.0.0.1:8000"
    shown = cli("consumer", "show", model_hex).stdout
    assert spec.name in shown and artifact in shown and "0.002 MKT per call" in shown
    assert model_hex in cli("consumer", "models", "--search", "iris").stdout


def test_bad_input_is_refused_before_any_transaction(
    cli: Cli, iris: tuple[ModelSpec, Path], w3: Web3, tmp_path: Path,
) -> None:
    spec, schema = iris
    bad_schema = tmp_path / "bad.json"
    bad_schema.write_text(json.dumps({"type": "object", "properties": {"x": {"type": 12}}}))
    base = ["provider", "list-model", str(spec.path), "--name", "m", "--account", PROVIDER]
    block = w3.eth.block_number
    missing = cli.fails(*base[:2], str(tmp_path / "nope.onnx"), *base[3:], "--price", "1", "--input-schema",
                        str(schema), error=ConfigError)
    assert "does not exist" in str(missing)
    invalid = cli.fails(*base, "--price", "1", "--input-schema", str(bad_schema), error=ConfigError)
    assert "not a valid JSON Schema at properties/x/type" in str(invalid)
    for price in ("0", "-1", "abc", "0.0000000000000000001"):
        cli.fails(*base, "--price", price, "--input-schema", str(schema), error=ConfigError)
    mismatch = cli.fails(*base, "--price", "1", "--input-schema", str(schema), "--example-input", '{"inputs": 3}',
                         error=ConfigError)
    assert "does not match the input schema" in str(mismatch)
    # an account without ETH: the gas check refuses before importing or sending anything
    broke = Account.create()
    AccountStore(cli.config_dir / "keystores", scrypt_n=2**4).import_key("broke", broke.key.hex(), "pw")
    no_gas = cli.fails("provider", "list-model", str(spec.path), "--name", "m", "--price", "1", "--input-schema",
                       str(schema), "--account", "broke", "--data-dir", str(tmp_path / "untouched"),
                       error=InsufficientFunds, MARKETPLACE_PASSWORD="pw")
    assert broke.address in str(no_gas) and "registerModel" in str(no_gas)
    assert not (tmp_path / "untouched").exists()  # nothing was imported either
    assert w3.eth.block_number == block  # and no transaction was sent


def test_a_refused_transaction_prints_its_decoded_custom_error(cli: Cli, iris: tuple[ModelSpec, Path]) -> None:
    salt = os.urandom(32).hex()
    list_iris(cli, iris, "--salt", salt)
    again = cli.fails("provider", "list-model", str(iris[0].path), "--name", "again", "--price", "1",
                      "--input-schema", str(iris[1]), "--salt", salt, "--account", PROVIDER, error=ContractReverted)
    assert again.error == "ModelRegistryModelExists"
    assert str(again).startswith("registerModel on 0x") and "ModelRegistryModelExists(modelId=0x" in str(again)


def test_update_model_appends_a_version_and_keeps_the_history(
    cli: Cli, iris: tuple[ModelSpec, Path], market_of: Callable[[Any], Market], tmp_path: Path,
) -> None:
    model_hex, result = list_iris(cli, iris)
    first = find(rf"artifact\s+{CID_TEXT}", result.stdout)
    new_artifact = tmp_path / "iris-v2.onnx"
    new_artifact.write_bytes(iris[0].path.read_bytes() + b"\0")
    updated = cli("provider", "update-model", model_hex, str(new_artifact), "--account", PROVIDER).stdout
    second = find(rf"artifact version 2 is {CID_TEXT}", updated)
    assert second == only_hash(cli, new_artifact)
    versions = market_of(None).catalog().model(bytes.fromhex(model_hex[2:]), 31337).versions
    assert [(v.version, str(v.cid)) for v in versions] == [(1, first), (2, second)]
    shown = cli("consumer", "show", model_hex).stdout
    assert first in shown and second in shown and "(version 2)" in shown
    stranger = cli.fails("provider", "update-model", model_hex, str(new_artifact), "--account", "dev6",
                         error=ContractReverted)
    assert stranger.error == "ModelRegistryNotOwner"


def test_reprice_pause_resume_and_retire(
    cli: Cli, iris: tuple[ModelSpec, Path], market_of: Callable[[Any], Market],
) -> None:
    model_hex, _ = list_iris(cli, iris)
    model_id = bytes.fromhex(model_hex[2:])
    registry = market_of(None).registry
    assert "0.0035 MKT per call" in cli("provider", "reprice", model_hex, "0.0035", "--account", PROVIDER).stdout
    assert registry.get_model(model_id).price == 35 * 10**14
    cli("provider", "pause", model_hex, "--account", PROVIDER)
    assert registry.get_model(model_id).status is ModelStatus.PAUSED
    unchanged = cli.fails("provider", "pause", model_hex, "--account", PROVIDER, error=ContractReverted)
    assert unchanged.error == "ModelRegistryPausedUnchanged" and unchanged.values["paused"] is True
    assert model_hex not in cli("consumer", "models").stdout  # paused models are hidden by default
    assert model_hex in cli("consumer", "models", "--all").stdout
    cli("provider", "resume", model_hex, "--account", PROVIDER)
    assert registry.get_model(model_id).status is ModelStatus.ACTIVE
    cli("provider", "retire", model_hex, "--account", PROVIDER, input="n\n", ok=False)  # asks first
    assert registry.get_model(model_id).status is ModelStatus.ACTIVE
    cli("provider", "retire", model_hex, "--yes", "--account", PROVIDER)
    assert registry.get_model(model_id).status is ModelStatus.RETIRED
    retired = cli.fails("provider", "reprice", model_hex, "0.01", "--account", PROVIDER, error=ContractReverted)
    assert retired.error == "ModelRegistryModelRetired"


def test_the_real_command_prints_one_red_line_and_no_traceback(cli: Cli, tmp_path: Path) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text("{}")
    result = subprocess.run(
        [sys.executable, "-m", "marketplace.cli", "provider", "list-model", str(tmp_path / "missing.onnx"),
         "--name", "m", "--price", "0.1", "--input-schema", str(schema), "--account", "dev1"],
        env=os.environ | {k: v for k, v in cli.env.items() if v is not None}, capture_output=True, text=True,
        timeout=120, check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: model file {tmp_path / 'missing.onnx'} does not exist"
    assert "Traceback" not in result.stderr + result.stdout


def test_per_token_prices_are_listed_shown_and_repriced(
    cli: Cli, iris: tuple[ModelSpec, Path], market_of: Callable[[Any], Market], w3: Web3,
) -> None:
    token_options = ("--price-per-input-token", "0.000001", "--price-per-output-token", "0.000003",
                     "--max-output-tokens", "256")
    model_hex, result = list_iris(cli, iris, *token_options)
    metered = "0.002 MKT per call + 0.000001 MKT per input token + 0.000003 MKT per output token (at most 256"
    assert metered in " ".join(result.stdout.split())
    model_id = bytes.fromhex(model_hex[2:])
    registry = market_of(None).registry
    assert registry.get_model(model_id).token_pricing == TokenPricing(2 * 10**15, 10**12, 3 * 10**12, 256)
    assert metered in " ".join(cli("consumer", "show", model_hex).stdout.split())
    listing = "".join(cli("consumer", "models", "--search", model_hex).stdout.split())
    assert "0.002+0.000001/in+0.000003/outtoken" in listing.replace("│", "")

    # Options not given keep their value; the per-call price carries over into the per-token pricing.
    out = cli("provider", "reprice", model_hex, "--price-per-output-token", "0.000004", "--account", PROVIDER).stdout
    assert "+ 0.000004 MKT per output token" in " ".join(out.split())
    cli("provider", "reprice", model_hex, "0.003", "--account", PROVIDER)
    assert registry.get_model(model_id).token_pricing == TokenPricing(3 * 10**15, 10**12, 4 * 10**12, 256)
    flat = cli("provider", "reprice", model_hex, "--price-per-input-token", "0", "--price-per-output-token", "0",
               "--account", PROVIDER).stdout
    assert "now costs 0.003 MKT per call" in flat and "token" not in flat.split("now costs")[1]
    assert registry.get_model(model_id).token_pricing is None

    block = w3.eth.block_number
    for bad in (("--max-output-tokens", "-1"), ("--max-output-tokens", str(2**32)), ("--price-per-input-token", "x"),
                ()):
        cli.fails("provider", "reprice", model_hex, *bad, "--account", PROVIDER, error=ConfigError)
    assert w3.eth.block_number == block  # refused before any transaction
