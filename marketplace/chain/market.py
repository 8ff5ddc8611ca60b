"""The marketplace as one object for the tools (CLI, consumer SDK, scripts): `Market`.

    market = Market(w3, deployment, account)           # account=None: reads only
    sent = market.registry.register_model(salt=salt, payee=..., price=..., metadata=cid, artifact=cid)
    sent = market.channels.open_with_permit(terms, deposit, expiry)   # ONE transaction (ERC-2612 permit)
    sent = market.licenses.buy(offer_id, max_price=offer.price)    # never more than the price agreed to
    market.catalog()                                    # every model (endpoint, versions) and channel

The typed contract wrappers are in `marketplace.chain.contracts`. The catalog is folded from events
by `ChainStateCache` (the daemon's own view of models and channels), plus the artifact version
history. Amounts are token units (`TokenAmount`, 18 decimals): `parse_tokens("0.002")`,
`format_tokens` (from `marketplace.tokens`, light enough for the command line's start).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3, Web3
from web3.contract.contract import ContractFunction
from web3.exceptions import Web3RPCError
from web3.providers.rpc import AsyncHTTPProvider

from marketplace.chain.contracts import (
    REVERTS,
    Channels,
    Licenses,
    Registry,
    Sent,
    Token,
    reverted,
)
from marketplace.chain.deploy import Deployment
from marketplace.chain.errors import ChainError, InsufficientFunds, MissingKey, NotFoundOnChain
from marketplace.chain.events import Event, EventReader, EventSource
from marketplace.chain.state import ChainStateCache
from marketplace.chain.transactions import Sender
from marketplace.chain.views import ChannelInfo, ModelInfo
from marketplace.ipfs.cid import CID
from marketplace.tokens import TOKEN_DECIMALS, UINT96_MAX, format_tokens, parse_tokens  # re-exported
from marketplace.types import Address, ModelId

__all__ = [
    "TOKEN_DECIMALS",
    "UINT96_MAX",
    "ArtifactVersion",
    "Catalog",
    "ListedModel",
    "Market",
    "format_tokens",
    "parse_tokens",
]  # fmt: skip

T = TypeVar("T")


@dataclass(frozen=True)
class ArtifactVersion:
    version: int
    cid: CID
    block_number: int
    transaction_hash: str


@dataclass(frozen=True)
class ListedModel:
    """A model as its events tell it: the latest state (`info`, with the endpoint) and every artifact version."""

    info: ModelInfo
    versions: tuple[ArtifactVersion, ...]

    @property
    def model_id(self) -> ModelId:
        return ModelId(self.info.model_id)

    @property
    def metadata_cid(self) -> CID:
        return CID(1, self.info.metadata_codec, self.info.metadata_digest)

    @property
    def artifact_cid(self) -> CID:
        return CID(1, self.info.artifact_codec, self.info.artifact_digest)


@dataclass(frozen=True)
class Catalog:
    models: dict[bytes, ListedModel]
    channels: dict[int, ChannelInfo]
    block_number: int

    def model(self, model_id: bytes, chain_id: int) -> ListedModel:
        try:
            return self.models[bytes(model_id)]
        except KeyError:
            raise NotFoundOnChain("model", "0x" + bytes(model_id).hex(), chain_id) from None



def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run async chain reads from sync code, even when the caller's thread runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()



class Market:
    """The four contracts of one deployment, read through `w3` and written as `account`."""

    def __init__(self, w3: Web3, deployment: Deployment, account: LocalAccount | None = None) -> None:
        self.w3, self.deployment, self.account = w3, deployment, account
        self.chain_id: int = deployment.chain_id
        self._sender = Sender(w3, account) if account is not None else None
        self.token = Token(self)
        self.registry = Registry(self)
        self.channels = Channels(self)
        self.licenses = Licenses(self)

    @property
    def url(self) -> str:
        return str(getattr(self.w3.provider, "endpoint_uri", ""))

    @property
    def sender(self) -> Sender:
        if self._sender is None:
            raise MissingKey("this needs a signing account: pass --account NAME (see `marketplace account list`)")
        return self._sender

    @property
    def address(self) -> Address:
        return Web3.to_checksum_address(self.sender.address)

    def now(self) -> int:
        """The latest block's timestamp: the time the contracts judge expiries by."""
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def eth_balance(self, address: str) -> int:
        return int(self.w3.eth.get_balance(Web3.to_checksum_address(address)))

    def send_eth(self, to: str, amount: int) -> Sent[None]:
        """Send `amount` wei of the native currency (gas money) from our account."""
        receipt = self.sender.pay(to, amount)
        return Sent(None, (receipt,))

    def require_gas(self, fn: ContractFunction, what: str) -> int:
        """Estimate `fn` from our account and check we can pay its gas; the estimated gas.

        A call that would revert raises ContractReverted here, before anything is sent."""
        balance = self.eth_balance(self.sender.address)
        try:
            tx = fn.build_transaction({"from": self.sender.address})
        except REVERTS as error:
            raise reverted(fn, error) from None
        except Web3RPCError as error:  # some nodes refuse to estimate for an account without ETH
            if "insufficient funds" in str(error).lower():
                raise InsufficientFunds(self.sender.address, 1, balance, what=what) from None
            raise ChainError(f"the node refused to estimate {what}: {error}") from None
        needed = int(tx["gas"]) * int(tx.get("maxFeePerGas", tx.get("gasPrice", 0)))
        if balance < needed:
            raise InsufficientFunds(self.sender.address, needed, balance, what=what)
        return int(tx["gas"])

    def events(self, contract: str, names: Iterable[str], topics: Sequence[str | None] = ()) -> list[Event]:
        """Decoded events of one contract since the deployment, in chain order (`topics`: indexed filters)."""

        async def read() -> list[Event]:
            w3 = AsyncWeb3(AsyncHTTPProvider(self.url))
            try:
                reader = EventReader(w3, [EventSource.of(self.deployment, contract, names)])
                return await reader.read(self.deployment.start_block, topics=topics)
            finally:
                await w3.provider.disconnect()

        return _run(read())

    def catalog(self) -> Catalog:
        """Every model (latest state, endpoint, artifact versions) and every channel, from events."""

        async def read() -> Catalog:
            state = ChainStateCache.connect(self.url, self.deployment)
            try:
                await state.start(follow=False)
                source = EventSource.of(self.deployment, "ModelRegistry", ["ArtifactPublished"])
                reader = EventReader(state.w3, [source])
                published = await reader.read(self.deployment.start_block, state.block_number)
                models, channels, block = state.models(), state.channels(), state.block_number
            finally:
                await state.stop()
            versions: dict[bytes, list[ArtifactVersion]] = {}
            for event in published:
                cid = CID(1, int(event.args["artifact"]["codec"]), bytes(event.args["artifact"]["digest"]))
                versions.setdefault(bytes(event.args["modelId"]), []).append(
                    ArtifactVersion(int(event.args["version"]), cid, event.block_number, event.transaction_hash))
            listed = {m.model_id: ListedModel(m, tuple(versions.get(m.model_id, ()))) for m in models}
            return Catalog(listed, {c.channel_id: c for c in channels}, block)

        return _run(read())
