"""Shared helpers for the x402 scheme tests: an in-memory ChainState, and on-chain set-up helpers.

Imported by the test modules (tests/payments/conftest.py belongs to the ledger tests).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time as _time
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from eth_account.signers.local import LocalAccount
from web3 import Web3

from marketplace.chain.transactions import Sender
from marketplace.chain.views import ChannelInfo, ModelInfo, ModelStatus
from marketplace.payments.x402 import PaymentPayload, PaymentRequirements, ResourceInfo, parse_payment_signature

T = TypeVar("T")

CHAIN_ID = 31337
ESCROW = "0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0"
TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
LICENSES = "0xCf7Ed3AccA5a467e9e704C703E8D87F634fB0Fc9"
MODEL_A = bytes.fromhex("aa" * 32)
MODEL_B = bytes.fromhex("bb" * 32)
PRICE = 2_000_000_000_000_000  # 0.002 tokens
RESOURCE = ResourceInfo(
    url="http://daemon.test/v1/models/aa/infer", description="inference", mime_type="application/json"
)
TOKENS = 10**18


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one coroutine to completion (the scheme tests need no event-loop plugin)."""
    return asyncio.run(coro)


def make_model(model_id: bytes = MODEL_A, *, payee: str, price: int = PRICE, owner: str | None = None) -> ModelInfo:
    return ModelInfo(
        model_id=model_id,
        owner=owner or payee,
        payee=payee,
        price=price,
        status=ModelStatus.ACTIVE,
        metadata_codec=0x55,
        metadata_digest=bytes(range(32)),
        artifact_codec=0x70,
        artifact_digest=bytes(range(32, 64)),
        artifact_version=3,
        endpoint="http://model.test",
    )


@dataclass
class FakeChainState:
    """An in-memory ChainState: `cached` is the daemon's view, `chain` what a refresh would read."""

    chain_id: int = CHAIN_ID
    escrow: str = ESCROW
    token: str = TOKEN
    licenses: str = LICENSES
    cached: dict[int, ChannelInfo] = field(default_factory=dict)
    chain: dict[int, ChannelInfo] = field(default_factory=dict)
    models: dict[bytes, ModelInfo] = field(default_factory=dict)
    refreshes: list[int] = field(default_factory=list)
    time: int | None = None  # chain time; None: the wall clock
    block_number: int = 0  # the block the cached view holds

    def now(self) -> int:
        return int(_time.time()) if self.time is None else self.time

    def channel(self, channel_id: int) -> ChannelInfo | None:
        return self.cached.get(channel_id)

    def model(self, model_id: bytes) -> ModelInfo | None:
        return self.models.get(model_id)

    async def refresh_channel(self, channel_id: int) -> ChannelInfo | None:
        self.refreshes.append(channel_id)
        info = self.chain.get(channel_id)
        if info is None:
            self.cached.pop(channel_id, None)
        else:
            self.cached[channel_id] = info
        return info

    def put(self, info: ChannelInfo, *, on_chain_only: bool = False) -> ChannelInfo:
        self.chain[info.channel_id] = info
        if not on_chain_only:
            self.cached[info.channel_id] = info
        return info

    def top_up(self, channel_id: int, added: int) -> None:
        """A top-up the chain saw but the cache has not (yet)."""
        self.chain[channel_id] = replace(self.chain[channel_id], deposit=self.chain[channel_id].deposit + added)


def make_channel(
    channel_id: int,
    *,
    payer: str,
    signer: str,
    payee: str,
    model_id: bytes = MODEL_A,
    deposit: int = 100 * PRICE,
    expiry: int,
    reclaimed: bool = False,
) -> ChannelInfo:
    return ChannelInfo(
        channel_id=channel_id,
        payer=payer,
        signer=signer,
        payee=payee,
        model_id=model_id,
        salt=channel_id,
        deposit=deposit,
        claimed=0,
        expiry=expiry,
        reclaimed=reclaimed,
    )


def paid(
    requirements: PaymentRequirements,
    payload: dict[str, Any],
    schemes: tuple[str, ...] = ("channel", "exact", "license"),
) -> PaymentPayload:
    """Encode a payment the way a client sends it, then decode it the way the daemon does."""
    header = PaymentPayload(accepted=requirements, payload=payload, resource=RESOURCE).header()
    return parse_payment_signature(header, schemes=schemes)


# --- on-chain set-up -------------------------------------------------------------------------


def chain_time(w3: Web3) -> int:
    return int(w3.eth.get_block("latest")["timestamp"])


def mint(contracts: Any, w3: Web3, owner: LocalAccount, to: str, amount: int) -> None:
    Sender(w3, owner).transact(contracts.token.functions.mint(to, amount))


def register_model(contracts: Any, w3: Web3, owner: LocalAccount, *, payee: str, price: int = PRICE) -> ModelInfo:
    """Register a model on the deployed registry; its ModelInfo as the chain has it."""
    salt = os.urandom(32)
    metadata, artifact = (0x55, os.urandom(32)), (0x70, os.urandom(32))
    registry = contracts.registry
    Sender(w3, owner).transact(
        registry.functions.registerModel(salt, payee, price, metadata, artifact, "http://model.test")
    )
    model_id = registry.functions.modelIdOf(owner.address, salt).call()
    return ModelInfo(
        model_id=bytes(model_id),
        owner=owner.address,
        payee=payee,
        price=price,
        status=ModelStatus.ACTIVE,
        metadata_codec=metadata[0],
        metadata_digest=metadata[1],
        artifact_codec=artifact[0],
        artifact_digest=artifact[1],
        artifact_version=1,
        endpoint="http://model.test",
    )


@dataclass
class DeployedChainState:
    """A ChainState over the session deployment: channel terms recorded when opened, state read live."""

    w3: Web3
    contracts: Any
    terms: dict[int, tuple[str, str, str, bytes, int]] = field(default_factory=dict)
    models: dict[bytes, ModelInfo] = field(default_factory=dict)
    cached: dict[int, ChannelInfo] = field(default_factory=dict)

    @property
    def chain_id(self) -> int:
        return CHAIN_ID

    @property
    def escrow(self) -> str:
        return self.contracts.addresses["PaymentChannels"]

    @property
    def token(self) -> str:
        return self.contracts.addresses["MarketToken"]

    @property
    def licenses(self) -> str:
        return self.contracts.addresses["Licenses"]

    def now(self) -> int:
        return chain_time(self.w3)

    @property
    def block_number(self) -> int:
        return int(self.w3.eth.block_number)

    def channel(self, channel_id: int) -> ChannelInfo | None:
        return self.cached.get(channel_id)

    def model(self, model_id: bytes) -> ModelInfo | None:
        return self.models.get(model_id)

    async def refresh_channel(self, channel_id: int) -> ChannelInfo | None:
        terms = self.terms.get(channel_id)
        if terms is None:
            return None
        deposit, claimed, expiry = await asyncio.to_thread(self.contracts.channels.functions.channels(channel_id).call)
        payer, signer, payee, model_id, salt = terms
        info = ChannelInfo(channel_id, payer, signer, payee, model_id, salt, deposit, claimed, expiry, expiry == 1)
        self.cached[channel_id] = info
        return info

    def open_channel(
        self, payer: LocalAccount, *, signer: str, payee: str, model_id: bytes, deposit: int, lifetime: int = 7 * 86400
    ) -> int:
        """Approve and open a channel from `payer`; returns its id (the cache learns it on refresh)."""
        sender = Sender(self.w3, payer)
        channels = self.contracts.channels
        sender.transact(self.contracts.token.functions.approve(channels.address, deposit))
        salt = int.from_bytes(os.urandom(16), "big")
        terms = (payer.address, signer, payee, model_id, salt)
        sender.transact(channels.functions.open(terms, deposit, chain_time(self.w3) + lifetime))
        channel_id = int(channels.functions.channelIdOf(terms).call())
        self.terms[channel_id] = (payer.address, signer, payee, model_id, salt)
        return channel_id


# --- another EIP-712 implementation ----------------------------------------------------------

SIGN_TYPED_SCRIPT = Path(__file__).with_name("sign_typed.mjs")


def ethers_sign(account: LocalAccount, typed_data: dict[str, Any]) -> tuple[bytes, bytes]:
    """(signature, digest) of `typed_data` by ethers.js (npm `ethers`, Wallet.signTypedData) in node."""
    message = {k: str(v) if isinstance(v, int) else v for k, v in typed_data["message"].items()}
    request = {"privateKey": account.key.to_0x_hex(), "typedData": {**typed_data, "message": message}}
    done = subprocess.run(
        ["node", str(SIGN_TYPED_SCRIPT)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    answer = json.loads(done.stdout)
    assert answer["address"] == account.address
    return bytes.fromhex(answer["signature"][2:]), bytes.fromhex(answer["digest"][2:])
