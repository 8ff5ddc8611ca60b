"""Fixtures for the contract tests, on the session's Anvil (tests/conftest.py).

The contracts are compiled here from the current sources (contracts/ and contracts/test/, with the settings of
marketplace.chain.build) rather than loaded from the committed artifacts: the tests then always exercise the
sources, and tests/chain/test_build.py proves the artifacts equal them. Compiler output is cached in pytest's
cache, keyed by a hash of the sources and settings, so only the first run after a change pays for solc.

Every test runs inside an EVM snapshot (`snapshot` from tests/conftest.py), so state and time never leak.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from contracts_support import TOKEN, Deployed, Deployer, Escrow, register_errors, send
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import Web3

from marketplace.chain.build import SETTINGS, SOLC_VERSION, compile_contracts
from marketplace.config import project_root

_CACHE_KEY = "marketplace/contracts-compiled"


def _source_digest() -> str:
    root = project_root()
    digest = hashlib.sha256()
    digest.update(json.dumps({"solc": SOLC_VERSION, "settings": SETTINGS}, sort_keys=True).encode())
    for path in sorted((root / "contracts").rglob("*.sol")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update((root / "node_modules/@openzeppelin/contracts/package.json").read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="session")
def compiled(request: pytest.FixtureRequest) -> dict[str, dict[str, Any]]:
    """{ContractName: artifact} for every contract, test-only ones included; errors registered for decoding."""
    digest = _source_digest()
    cache = getattr(request.config, "cache", None)  # None when run with -p no:cacheprovider
    cached = cache.get(_CACHE_KEY, None) if cache is not None else None
    if cached and cached.get("digest") == digest:
        artifacts: dict[str, dict[str, Any]] = cached["artifacts"]
    else:
        artifacts = compile_contracts(include_test=True)
        if cache is not None:
            cache.set(_CACHE_KEY, {"digest": digest, "artifacts": artifacts})
    for artifact in artifacts.values():
        register_errors(artifact["abi"])
    return artifacts


@pytest.fixture(scope="session")
def deployer(w3: Web3, compiled: dict[str, dict[str, Any]], dev_accounts: list[LocalAccount]) -> Deployer:
    return Deployer(w3, compiled, dev_accounts[0].address)


@pytest.fixture(scope="session")
def contracts(deployer: Deployer, dev_accounts: list[LocalAccount]) -> Deployed:
    """The four contracts, deployed as marketplace.chain.deploy does; every dev account holds 1,000,000 MKT."""
    owner = dev_accounts[0].address
    token = deployer.deploy("MarketToken", owner)
    registry = deployer.deploy("ModelRegistry", token.address)
    channels = deployer.deploy("PaymentChannels", token.address)
    licenses = deployer.deploy("Licenses", registry.address, token.address)
    for account in dev_accounts:
        send(token.functions.mint(account.address, 1_000_000 * TOKEN), owner)
    return Deployed(token, registry, channels, licenses)


@pytest.fixture(autouse=True)
def _isolated(contracts: Deployed, snapshot: None) -> Iterator[None]:
    """Deploy first (session), then snapshot around each test."""
    yield


@pytest.fixture(scope="session")
def chain_id(w3: Web3) -> int:
    return int(w3.eth.chain_id)


@pytest.fixture(scope="session")
def accounts(dev_accounts: list[LocalAccount]) -> list[str]:
    """Addresses of the unlocked dev accounts ([0] owns the token)."""
    return [a.address for a in dev_accounts]


@pytest.fixture(scope="session")
def hot_key() -> LocalAccount:
    """A voucher signing key that is not an Anvil account (a consumer's hot key)."""
    return Account.from_key(keccak(b"marketplace tests: voucher hot key"))


@pytest.fixture(scope="session")
def model_id() -> bytes:
    return keccak(b"marketplace tests: model")


@pytest.fixture
def escrow(
    w3: Web3, contracts: Deployed, chain_id: int, accounts: list[str], hot_key: LocalAccount, model_id: bytes
) -> Escrow:
    """The deployed PaymentChannels with a cast: payer, payee, relayer, stranger = accounts[1:5]."""
    return Escrow(w3, contracts.channels, contracts.token, chain_id, *accounts[1:5], hot_key, model_id)
