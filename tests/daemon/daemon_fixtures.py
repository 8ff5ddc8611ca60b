"""A provider with a registered ONNX model, a funded consumer, and the daemon serving it."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account.signers.local import LocalAccount
from web3 import Web3

from marketplace.chain.transactions import Sender
from marketplace.daemon.app import create_app
from marketplace.daemon.settings import DaemonSettings
from marketplace.ipfs import PROFILES
from marketplace.ipfs.artifacts import add_bytes, add_path, open_store
from marketplace.metadata import ModelMetadata
from marketplace.payments.eip712 import CLOSE_REQUEST, sign_digest
from marketplace.payments.vouchers import VoucherDomain, sign_voucher
from marketplace.payments.x402 import PaymentPayload, PaymentRequirements, parse_payment_required
from marketplace.runners.demo_models import ModelSpec, train_iris_classifier

PRICE = 2 * 10**15  # 0.002 MKT per call
TOKENS = 10**18


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Listing:
    model_id: bytes
    spec: ModelSpec
    provider: LocalAccount
    data_dir: Path
    deployments_dir: Path

    @property
    def model_hex(self) -> str:
        return "0x" + self.model_id.hex()


def register_model(
    w3: Web3,
    registry: Any,
    provider: LocalAccount,
    *,
    price: int = PRICE,
    metadata: tuple[int, bytes] = (0x55, b"\x01" * 32),
    artifact: tuple[int, bytes] = (0x55, b"\x02" * 32),
    endpoint: str = "http://127.0.0.1/daemon",
) -> bytes:
    """Register a model owned and paid to `provider`; its id. The default CIDs point nowhere:
    enough for a model served by an upstream runner, which never reads IPFS."""
    salt = os.urandom(32)
    Sender(w3, provider).transact(registry.functions.registerModel(salt, provider.address, price, metadata, artifact,
                                                                   endpoint))
    return bytes(registry.functions.modelIdOf(provider.address, salt).call())


def list_iris(w3: Web3, contracts: Any, provider: LocalAccount, data_dir: Path) -> Listing:
    """`provider` lists an iris classifier: artifact and metadata in a local IPFS store under
    `data_dir`, the deployment record in `data_dir/deployments` (what a daemon's settings name)."""
    return list_spec(w3, contracts, provider, data_dir, train_iris_classifier(data_dir / "iris.onnx"))


def list_spec(w3: Web3, contracts: Any, provider: LocalAccount, data_dir: Path, spec: ModelSpec) -> Listing:
    """`provider` lists the model of `spec` as `list_iris` does."""
    store = open_store("local", data_dir=data_dir / "ipfs")
    with store:
        artifact = add_path(store, spec.path, PROFILES["kubo-v1"]).cid
        metadata = ModelMetadata.model_validate(spec.metadata())
        meta_cid = add_bytes(store, metadata.to_json_bytes(), PROFILES["kubo-v1"]).cid
    model_id = register_model(w3, contracts.registry, provider, metadata=(meta_cid.codec, meta_cid.digest),
                              artifact=(artifact.codec, artifact.digest))
    deployments_dir = data_dir / "deployments"
    contracts.deployment.save(deployments_dir)
    return Listing(model_id, spec, provider, data_dir, deployments_dir)


@pytest.fixture(scope="module")
def listing(
    w3: Web3, contracts: Any, dev_accounts: list[LocalAccount], tmp_path_factory: pytest.TempPathFactory
) -> Listing:
    """Provider dev_accounts[1] lists an iris classifier (artifact + metadata in a local IPFS store)."""
    return list_iris(w3, contracts, dev_accounts[1], tmp_path_factory.mktemp("daemon-data"))


@dataclass
class Channel:
    channel_id: int
    payer: LocalAccount
    deposit: int
    domain: VoucherDomain
    terms: tuple[Any, ...] = ()  # (payer, signer, payee, model id, nonce), where the test opened it

    def voucher(self, amount: int) -> dict[str, str]:
        signature = sign_voucher(self.payer, self.domain, self.channel_id, amount)
        return {"channelId": f"0x{self.channel_id:064x}", "amount": str(amount), "signature": "0x" + signature.hex()}

    def close_request(self, deadline: int, *, signer: LocalAccount | None = None,
                      channel_id: int | None = None) -> dict[str, Any]:
        """The body of `POST /v1/channels/{id}/close`: a CloseRequest signed by the payer (or `signer`)."""
        digest = self.domain.eip712.digest(CLOSE_REQUEST, self.channel_id if channel_id is None else channel_id,
                                           deadline)
        return {"deadline": deadline, "signature": "0x" + sign_digest(signer or self.payer, digest).hex()}


def open_channel_on(
    w3: Web3,
    contracts: Any,
    minter: LocalAccount,
    payer: LocalAccount,
    payee: str,
    model_id: bytes,
    deposit: int,
    *,
    lifetime: int = 86_400,
) -> Channel:
    """`minter` (the token's owner) funds `payer`, who opens a channel to `payee` for `model_id`."""
    Sender(w3, minter).transact(contracts.token.functions.mint(payer.address, deposit))
    sender = Sender(w3, payer)
    sender.transact(contracts.token.functions.approve(contracts.channels.address, deposit))
    terms = (payer.address, payer.address, payee, model_id, int.from_bytes(os.urandom(8), "big"))
    expiry = w3.eth.get_block("latest")["timestamp"] + lifetime
    sender.transact(contracts.channels.functions.open(terms, deposit, expiry))
    channel_id = contracts.channels.functions.channelIdOf(terms).call()
    return Channel(channel_id, payer, deposit, VoucherDomain(w3.eth.chain_id, contracts.channels.address), terms)


@pytest.fixture(scope="module")
def open_channel(
    w3: Web3, contracts: Any, dev_accounts: list[LocalAccount], listing: Listing
) -> Callable[..., Channel]:
    """Open a channel from `payer` (default dev_accounts[2]) to the model's payee."""

    def _open(deposit: int = 10 * PRICE, *, payer: LocalAccount | None = None, lifetime: int = 86_400,
              model_id: bytes | None = None, payee: str | None = None) -> Channel:
        return open_channel_on(w3, contracts, dev_accounts[0], payer or dev_accounts[2],
                               payee or listing.provider.address, model_id or listing.model_id, deposit,
                               lifetime=lifetime)

    return _open


@pytest.fixture(scope="module")
def settings(anvil: Any, listing: Listing, tmp_path_factory: pytest.TempPathFactory) -> DaemonSettings:
    db = tmp_path_factory.mktemp("ledger") / "ledger.db"
    return DaemonSettings(
        data_dir=listing.data_dir,
        rpc_url=anvil.url,
        chain_id=31337,
        deployments_dir=listing.deployments_dir,
        database_url=f"sqlite:///{db}",
        private_key=listing.provider.key.to_0x_hex(),
        models=[{"model_id": listing.model_hex}],
        chain_poll_seconds=0.1,
        claim_interval_seconds=3600,
        public_url="http://daemon.test",  # the name the tests' HTTP client reaches the app under
    )


@asynccontextmanager
async def running_daemon(settings: DaemonSettings) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to a daemon app in-process (startup and shutdown run); the app is
    `client.app`, its services `client.app.state.services`."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://daemon.test") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@pytest.fixture(scope="module")
async def daemon(settings: DaemonSettings) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the daemon app in-process (startup and shutdown run)."""
    async with running_daemon(settings) as client:
        yield client


def pay_header(requirements: PaymentRequirements, payload: dict[str, Any]) -> str:
    """A PAYMENT-SIGNATURE value: `payload` under the `accepts` entry the client chose."""
    return PaymentPayload(accepted=requirements, payload=payload).header()


def requirements_of(response: httpx.Response, scheme: str) -> PaymentRequirements:
    """The `accepts` entry of `scheme` in a 402's PAYMENT-REQUIRED."""
    required = parse_payment_required(response.headers["PAYMENT-REQUIRED"])
    return next(r for r in required.accepts if r.scheme == scheme)


async def wait_for_channel(client: httpx.AsyncClient, channel_id: int, timeout: float = 10.0) -> None:
    state = client.app.state.services.state  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while state.channel(channel_id) is None and time.monotonic() < deadline:
        await state.refresh_channel(channel_id)
