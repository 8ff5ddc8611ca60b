"""Deployment: the record it writes, staleness detection, and one-line errors from the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from marketplace.chain.anvil import Anvil
from marketplace.chain.compiled import CONTRACT_NAMES
from marketplace.chain.deploy import Deployment, deploy_contracts
from marketplace.chain.devkeys import dev_account
from marketplace.chain.errors import DeploymentNotFound
from marketplace.chain.keys import PASSWORD_ENV, PRIVATE_KEY_ENV

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "deploy.py"


def run_deploy(*args: str, env: dict[str, str] | None = None, tmp: Path) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in (PRIVATE_KEY_ENV, PASSWORD_ENV)}
    environment |= {"MARKETPLACE_DATA_DIR": str(tmp)} | (env or {})
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=environment, capture_output=True, text=True, timeout=120
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    assert message.startswith("error:")
    for needle in needles:
        assert needle in message


def test_deploy_writes_a_record_that_loads_back(w3: Web3, tmp_path: Path, snapshot: None) -> None:
    deployment = deploy_contracts(w3, dev_account(1))
    path = deployment.save(tmp_path)
    assert path == tmp_path / "31337.json"
    assert set(json.loads(path.read_text())["addresses"]) == set(CONTRACT_NAMES)
    loaded = Deployment.load(tmp_path, w3)
    assert loaded == deployment
    for name in CONTRACT_NAMES:
        assert len(w3.eth.get_code(loaded.addresses[name])) > 0
    assert loaded.contract(w3, "ModelRegistry").functions.paymentToken().call() == loaded.addresses["MarketToken"]


def test_a_record_from_a_reset_chain_is_refused_as_stale(tmp_path: Path) -> None:
    with Anvil() as node:
        w3 = Web3(Web3.HTTPProvider(node.url))
        deploy_contracts(w3, dev_account(0)).save(tmp_path)
    with Anvil() as fresh:  # same chain id, different history
        with pytest.raises(DeploymentNotFound, match="stale"):
            Deployment.load(tmp_path, Web3(Web3.HTTPProvider(fresh.url)))


def test_missing_record(w3: Web3, tmp_path: Path) -> None:
    with pytest.raises(DeploymentNotFound, match="deploy first"):
        Deployment.load(tmp_path, w3)


def test_script_deploys_with_an_env_key(anvil: Anvil, tmp_path: Path, snapshot: None) -> None:
    key = dev_account(2).key.to_0x_hex()
    result = run_deploy("--rpc-url", anvil.url, "--chain-id", "31337", env={PRIVATE_KEY_ENV: key}, tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in CONTRACT_NAMES:
        assert name in result.stdout
    assert (tmp_path / "deployments" / "31337.json").exists()
    assert key[2:] not in result.stdout + result.stderr


def test_script_deploys_with_a_keystore(anvil: Anvil, tmp_path: Path, snapshot: None) -> None:
    keystore = tmp_path / "deployer.json"
    keystore.write_text(json.dumps(Account.encrypt(dev_account(3).key, "pw", iterations=2)))
    result = run_deploy("--rpc-url", anvil.url, "--keystore", str(keystore), env={PASSWORD_ENV: "pw"}, tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    assert dev_account(3).address in json.loads((tmp_path / "deployments" / "31337.json").read_text())["deployer"]


def test_unreachable_rpc(tmp_path: Path) -> None:
    result = run_deploy("--rpc-url", "http://127.0.0.1:9", env={PRIVATE_KEY_ENV: "0x" + "11" * 32}, tmp=tmp_path)
    assert_one_line_error(result, "no Ethereum JSON-RPC node answers at http://127.0.0.1:9")


def test_wrong_chain_id(anvil: Anvil, tmp_path: Path) -> None:
    result = run_deploy("--rpc-url", anvil.url, "--chain-id", "1", env={PRIVATE_KEY_ENV: "0x" + "11" * 32},
                        tmp=tmp_path)
    assert_one_line_error(result, "serves chain id 31337, expected 1")


def test_missing_key(anvil: Anvil, tmp_path: Path) -> None:
    assert_one_line_error(run_deploy("--rpc-url", anvil.url, tmp=tmp_path), "no signing key", PRIVATE_KEY_ENV)


def test_insufficient_funds(anvil: Anvil, tmp_path: Path) -> None:
    pauper = Account.create()
    result = run_deploy("--rpc-url", anvil.url, env={PRIVATE_KEY_ENV: pauper.key.to_0x_hex()}, tmp=tmp_path)
    assert_one_line_error(result, pauper.address, "holds 0 wei")


def test_an_unexpected_failure_is_one_line_too(tmp_path: Path) -> None:
    # a node that accepts the connection but answers garbage: not a MarketplaceError, still no traceback
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    def answer_garbage() -> None:
        for _ in range(4):
            connection, _ = server.accept()
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{\"x\": 1}")
            connection.close()

    threading.Thread(target=answer_garbage, daemon=True).start()
    result = run_deploy("--rpc-url", f"http://127.0.0.1:{port}", env={PRIVATE_KEY_ENV: "0x" + "11" * 32}, tmp=tmp_path)
    server.close()
    assert result.returncode in (1, 2) and "Traceback" not in result.stderr
    assert result.stderr.startswith("error:")
