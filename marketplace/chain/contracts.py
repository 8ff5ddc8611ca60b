"""Typed wrappers of the four marketplace contracts: Token, Registry, Channels, Licenses.

Reached through `marketplace.chain.market.Market` (`market.registry`, ...), which holds the web3
connection, the deployment and the signing account. Every write returns `Sent` (its result and the
receipt of each transaction it sent, usually one). Transactions go through `Sender`: one that would
revert raises ContractReverted with the decoded custom error and its values when it is estimated,
before anything is sent; a read that reverts raises the same.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractCustomError, ContractLogicError, ContractPanicError
from web3.logs import DISCARD
from web3.types import TxReceipt

from marketplace.chain.devkeys import DEV_CHAIN_ID
from marketplace.chain.errors import ContractReverted, NotFoundOnChain
from marketplace.chain.events import uint_topic
from marketplace.chain.transactions import decode_revert
from marketplace.chain.views import ChannelInfo, ModelInfo, ModelStatus, token_pricing
from marketplace.errors import ConfigError
from marketplace.ipfs.cid import CID
from marketplace.payments.claimer import compact_signature
from marketplace.payments.eip712 import PERMIT, Domain, sign_digest
from marketplace.types import Address, ChannelId, LicenseId, ModelId, TokenAmount, TokenPricing

if TYPE_CHECKING:
    from marketplace.chain.market import Market
    from marketplace.chain.wallet import SmartWallet

__all__ = [
    "REVERTS",
    "ChannelState",
    "ChannelTerms",
    "Channels",
    "License",
    "Licenses",
    "Offer",
    "Registry",
    "Sent",
    "Token",
    "reverted",
]  # fmt: skip

T = TypeVar("T")
REVERTS = (ContractCustomError, ContractLogicError, ContractPanicError)  # what web3 raises for a revert
_RECLAIMED = 1  # PaymentChannels.RECLAIMED


@dataclass(frozen=True)
class Sent(Generic[T]):
    """What a write did: its result and the receipt of every transaction it sent (usually one)."""

    value: T
    receipts: tuple[TxReceipt, ...]

    @property
    def transaction_hash(self) -> str:
        return self.receipts[-1]["transactionHash"].to_0x_hex() if self.receipts else ""

    @property
    def gas_used(self) -> int:
        return sum(int(receipt["gasUsed"]) for receipt in self.receipts)



@dataclass(frozen=True)
class ChannelTerms:
    """A channel's fixed terms; their hash is the channel id."""

    payer: Address
    signer: Address
    payee: Address
    model_id: ModelId
    salt: int

    def as_tuple(self) -> tuple[Address, Address, Address, bytes, int]:
        return (self.payer, self.signer, self.payee, bytes(self.model_id), self.salt)

    @property
    def channel_id(self) -> ChannelId:
        encoded = abi_encode(["address", "address", "address", "bytes32", "uint256"], list(self.as_tuple()))
        return ChannelId(int.from_bytes(keccak(encoded), "big"))

    @classmethod
    def of(cls, info: ChannelInfo) -> ChannelTerms:
        return cls(Web3.to_checksum_address(info.payer), Web3.to_checksum_address(info.signer),
                   Web3.to_checksum_address(info.payee), ModelId(bytes(info.model_id)), info.salt)

    @classmethod
    def new(cls, payer: str, payee: str, model_id: bytes, *, signer: str | None = None) -> ChannelTerms:
        """Fresh terms with a random salt (the signer defaults to the payer)."""
        return cls(Web3.to_checksum_address(payer), Web3.to_checksum_address(signer or payer),
                   Web3.to_checksum_address(payee), ModelId(bytes(model_id)), int.from_bytes(os.urandom(16), "big"))


@dataclass(frozen=True)
class ChannelState:
    channel_id: ChannelId
    deposit: TokenAmount
    claimed: TokenAmount
    expiry: int  # unix seconds; the last real expiry is not kept on chain once reclaimed (it stores 1)

    @property
    def exists(self) -> bool:
        return self.expiry != 0

    @property
    def reclaimed(self) -> bool:
        return self.expiry == _RECLAIMED


@dataclass(frozen=True)
class Offer:
    offer_id: int
    model_id: ModelId
    tier: str
    price: TokenAmount
    duration: int  # seconds; 0 = perpetual
    max_supply: int  # 0 = unlimited
    sold: int
    transferable: bool
    active: bool
    royalty_bps: int


@dataclass(frozen=True)
class License:
    license_id: LicenseId
    owner: Address
    offer_id: int
    model_id: ModelId
    expires_at: int  # 0 = never
    transferable: bool
    valid: bool



def reverted(fn: ContractFunction, error: Exception, contract: str | None = None) -> ContractReverted:
    """The ContractReverted of a web3 revert error raised by `fn`, its custom error decoded."""
    name, values = decode_revert(fn.contract_abi, getattr(error, "data", None))
    return ContractReverted(contract or str(fn.address), fn.fn_name, name, values)


def _address_topic(address: str) -> str:
    return "0x" + bytes.fromhex(address[2:]).rjust(32, b"\0").hex()



class _Wrapper:
    name = ""

    def __init__(self, market: Market) -> None:
        self.market = market
        self.contract: Contract = market.deployment.contract(market.w3, self.name)

    @property
    def address(self) -> Address:
        return Web3.to_checksum_address(self.contract.address)

    def _call(self, fn: ContractFunction) -> Any:
        try:
            return fn.call()
        except REVERTS as error:
            raise reverted(fn, error, self.name) from None

    def _send(self, fn: ContractFunction, via: SmartWallet | None = None) -> TxReceipt:
        """Send `fn` from our account, or (`via`) have the smart wallet our account owns make the call."""
        return via.execute(fn) if via is not None else self.market.sender.transact(fn)

    def _logs(self, receipt: TxReceipt, event: str) -> list[Any]:
        return list(getattr(self.contract.events, event)().process_receipt(receipt, errors=DISCARD))


class Token(_Wrapper):
    """MarketToken: ERC-20 (18 decimals) with ERC-2612 permit and ERC-3009."""

    name = "MarketToken"

    def balance(self, address: str) -> TokenAmount:
        return TokenAmount(self._call(self.contract.functions.balanceOf(Web3.to_checksum_address(address))))

    def allowance(self, owner: str, spender: str) -> TokenAmount:
        fn = self.contract.functions.allowance(Web3.to_checksum_address(owner), Web3.to_checksum_address(spender))
        return TokenAmount(self._call(fn))

    def approve(self, spender: str, amount: int, *, via: SmartWallet | None = None) -> Sent[None]:
        fn = self.contract.functions.approve(Web3.to_checksum_address(spender), amount)
        return Sent(None, (self._send(fn, via),))

    def ensure_allowance(self, spender: str, amount: int, *, via: SmartWallet | None = None) -> tuple[TxReceipt, ...]:
        """Approve `spender` for `amount` of ours (or `via`'s) unless it may already spend that much."""
        if self.allowance(via.address if via is not None else self.market.address, spender) >= amount:
            return ()
        return self.approve(spender, amount, via=via).receipts

    def mint(self, to: str, amount: int) -> Sent[None]:
        """Mint demo tokens (the token's owner only); refused off the local chain id 31337."""
        if self.market.chain_id != DEV_CHAIN_ID:
            raise ConfigError(
                f"minting demo tokens is for the local chain id {DEV_CHAIN_ID}, not {self.market.chain_id}"
            )
        return Sent(None, (self._send(self.contract.functions.mint(Web3.to_checksum_address(to), amount)),))

    def sign_permit(self, spender: str, value: int, deadline: int) -> tuple[int, bytes, bytes]:
        """(v, r, s) of an ERC-2612 permit by our account, in the token's own EIP-712 domain."""
        account = self.market.account
        assert account is not None  # market.sender raised otherwise
        _, name, version, chain_id, verifying, _, _ = self._call(self.contract.functions.eip712Domain())
        nonce = self._call(self.contract.functions.nonces(account.address))
        digest = Domain(name, version, chain_id, verifying).digest(PERMIT, account.address, spender, value, nonce,
                                                                   deadline)
        signature = sign_digest(account, digest)
        return signature[64], signature[:32], signature[32:64]


class Registry(_Wrapper):
    """ModelRegistry: list, update, reprice, pause and retire models."""

    name = "ModelRegistry"

    def model_id_of(self, owner: str, salt: bytes) -> ModelId:
        return ModelId(keccak(abi_encode(["address", "bytes32"], [Web3.to_checksum_address(owner), salt])))

    def register_fn(self, *, salt: bytes, payee: str, price: int, metadata: CID, artifact: CID,
                    endpoint: str = "") -> ContractFunction:
        """The registerModel call (for `Market.require_gas` before anything is sent)."""
        return self.contract.functions.registerModel(
            salt, Web3.to_checksum_address(payee), price, (metadata.codec, metadata.digest),
            (artifact.codec, artifact.digest), endpoint)

    def register_model(self, *, salt: bytes, payee: str, price: int, metadata: CID, artifact: CID,
                       endpoint: str = "") -> Sent[ModelId]:
        fn = self.register_fn(salt=salt, payee=payee, price=price, metadata=metadata, artifact=artifact,
                              endpoint=endpoint)
        receipt = self._send(fn)
        return Sent(self.model_id_of(self.market.address, salt), (receipt,))

    def publish_artifact(self, model_id: bytes, artifact: CID) -> Sent[int]:
        """A new artifact version (the history is append-only); its version number."""
        receipt = self._send(self.contract.functions.publishArtifact(model_id, (artifact.codec, artifact.digest)))
        return Sent(int(self._logs(receipt, "ArtifactPublished")[0]["args"]["version"]), (receipt,))

    def set_metadata(self, model_id: bytes, metadata: CID) -> Sent[None]:
        fn = self.contract.functions.setMetadata(model_id, (metadata.codec, metadata.digest))
        return Sent(None, (self._send(fn),))

    def set_price(self, model_id: bytes, price: int) -> Sent[None]:
        return Sent(None, (self._send(self.contract.functions.setPrice(model_id, price)),))

    def set_token_prices(self, model_id: bytes, prices: TokenPricing) -> Sent[None]:
        """Set the per-token prices (the per-call price is `set_price`'s; zero token prices: flat again)."""
        values = (prices.per_input_token, prices.per_output_token, prices.max_output_tokens)
        return Sent(None, (self._send(self.contract.functions.setTokenPrices(model_id, values)),))

    def set_endpoint(self, model_id: bytes, endpoint: str) -> Sent[None]:
        return Sent(None, (self._send(self.contract.functions.setEndpoint(model_id, endpoint)),))

    def set_paused(self, model_id: bytes, paused: bool) -> Sent[None]:
        return Sent(None, (self._send(self.contract.functions.setPaused(model_id, paused)),))

    def retire(self, model_id: bytes) -> Sent[None]:
        return Sent(None, (self._send(self.contract.functions.retire(model_id)),))

    def get_model(self, model_id: bytes) -> ModelInfo:
        """The model as stored; `endpoint` is "" (it lives in events: see `Market.catalog`)."""
        raw = self._call(self.contract.functions.getModel(model_id))
        owner, price, payee, metadata_codec, artifact_codec, version, status, metadata_digest, artifact_digest = raw
        if status == ModelStatus.NONE:
            raise NotFoundOnChain("model", "0x" + bytes(model_id).hex(), self.market.chain_id)
        token_prices = (int(value) for value in self._call(self.contract.functions.tokenPricesOf(model_id)))
        return ModelInfo(bytes(model_id), owner, payee, int(price), ModelStatus(status), int(metadata_codec),
                         bytes(metadata_digest), int(artifact_codec), bytes(artifact_digest), int(version), "",
                         token_pricing(int(price), *token_prices))


class Channels(_Wrapper):
    """PaymentChannels: open (with permit, one transaction), top up, extend, reclaim, read."""

    name = "PaymentChannels"

    def channel_id_of(self, terms: ChannelTerms) -> ChannelId:
        """The id the contract derives from `terms` (`terms.channel_id` computes the same locally)."""
        return ChannelId(self._call(self.contract.functions.channelIdOf(terms.as_tuple())))

    def open_with_permit(self, terms: ChannelTerms, amount: int, expiry: int, *,
                         permit_seconds: int = 3600) -> Sent[ChannelId]:
        """Open a channel funded with `amount` in ONE transaction: the ERC-2612 permit is signed
        here with our key and `openWithPermit` approves and opens at once."""
        deadline = self.market.now() + permit_seconds
        v, r, s = self.market.token.sign_permit(self.address, amount, deadline)
        fn = self.contract.functions.openWithPermit(terms.as_tuple(), amount, expiry, deadline, v, r, s)
        return Sent(terms.channel_id, (self._send(fn),))

    def open(self, terms: ChannelTerms, amount: int, expiry: int, *, via: SmartWallet | None = None) -> Sent[ChannelId]:
        """Open a channel funded with `amount`, approving the escrow first unless it may already take
        it: how a smart wallet (`via`, the payer of `terms`) opens one, since it signs no permit."""
        receipts = self.market.token.ensure_allowance(self.address, amount, via=via)
        receipt = self._send(self.contract.functions.open(terms.as_tuple(), amount, expiry), via)
        return Sent(terms.channel_id, (*receipts, receipt))

    def top_up(self, channel_id: int, amount: int, *, via: SmartWallet | None = None) -> Sent[TokenAmount]:
        """Add `amount` (approving the escrow first unless it may already take it); the new deposit."""
        receipts = self.market.token.ensure_allowance(self.address, amount, via=via)
        receipt = self._send(self.contract.functions.topUp(channel_id, amount), via)
        deposit = int(self._logs(receipt, "ChannelToppedUp")[0]["args"]["newDeposit"])
        return Sent(TokenAmount(deposit), (*receipts, receipt))

    def extend(self, terms: ChannelTerms, new_expiry: int, *, via: SmartWallet | None = None) -> Sent[None]:
        return Sent(None, (self._send(self.contract.functions.extend(terms.as_tuple(), new_expiry), via),))

    def reclaim(self, terms: ChannelTerms, *, via: SmartWallet | None = None) -> Sent[TokenAmount]:
        """After expiry: take back what was not claimed (to the payer); the amount refunded."""
        receipt = self._send(self.contract.functions.reclaim(terms.as_tuple()), via)
        return Sent(TokenAmount(int(self._logs(receipt, "ChannelReclaimed")[0]["args"]["refunded"])), (receipt,))

    def close_cooperatively(self, terms: ChannelTerms, payout: int, deadline: int,
                            payee_signature: bytes) -> Sent[TokenAmount]:
        """Close now with the payee's CloseChannel(payout, deadline) signature (65 bytes); the amount refunded."""
        r, vs = compact_signature(payee_signature)
        receipt = self._send(self.contract.functions.closeCooperatively(terms.as_tuple(), payout, deadline, r, vs))
        return Sent(TokenAmount(int(self._logs(receipt, "ChannelClosed")[0]["args"]["refunded"])), (receipt,))

    def get_channel(self, channel_id: int) -> ChannelState:
        deposit, claimed, expiry = self._call(self.contract.functions.getChannel(channel_id))
        return ChannelState(ChannelId(channel_id), TokenAmount(deposit), TokenAmount(claimed), int(expiry))

    def terms_of(self, channel_id: int) -> ChannelTerms:
        """The terms of a channel, from its ChannelOpened event."""
        events = self.market.events(self.name, ["ChannelOpened"], [uint_topic(channel_id)])
        if not events:
            raise NotFoundOnChain("channel", f"{channel_id:#x}", self.market.chain_id)
        args = events[0].args
        return ChannelTerms(args["payer"], args["signer"], args["payee"], ModelId(bytes(args["modelId"])),
                            int(args["salt"]))

    def opened_by(self, payer: str) -> list[ChannelTerms]:
        """Every channel `payer` opened, oldest first."""
        events = self.market.events(self.name, ["ChannelOpened"], [None, _address_topic(payer)])
        return [ChannelTerms(e.args["payer"], e.args["signer"], e.args["payee"], ModelId(bytes(e.args["modelId"])),
                             int(e.args["salt"])) for e in events]


class Licenses(_Wrapper):
    """Licenses: offers per model, ERC-721 licenses bought with the token."""

    name = "Licenses"

    def create_offer(self, model_id: bytes, *, tier: str, price: int, duration: int, max_supply: int = 0,
                     transferable: bool = True, royalty_bps: int = 0) -> Sent[int]:
        encoded = tier.encode()
        if not encoded or len(encoded) > 32:
            raise ConfigError(f"a license tier is 1 to 32 bytes of text, got {tier!r}")
        fn = self.contract.functions.createOffer(model_id, encoded.ljust(32, b"\0"), price, duration, max_supply,
                                                 transferable, royalty_bps)
        receipt = self._send(fn)
        return Sent(int(self._logs(receipt, "OfferCreated")[0]["args"]["offerId"]), (receipt,))

    def offer(self, offer_id: int) -> Offer:
        raw = self._call(self.contract.functions.offers(offer_id))
        model_id, tier, price, duration, max_supply, sold, transferable, active, royalty = raw
        if bytes(model_id) == bytes(32):
            raise NotFoundOnChain("license offer", offer_id, self.market.chain_id)
        return Offer(offer_id, ModelId(bytes(model_id)), bytes(tier).rstrip(b"\0").decode(errors="replace"),
                     TokenAmount(price), int(duration), int(max_supply), int(sold), bool(transferable), bool(active),
                     int(royalty))

    def offers_for(self, model_id: bytes) -> list[Offer]:
        events = self.market.events(self.name, ["OfferCreated"], [None, "0x" + bytes(model_id).hex()])
        return [self.offer(int(event.args["offerId"])) for event in events]

    def buy(self, offer_id: int, recipient: str | None = None, *, max_price: int) -> Sent[LicenseId]:
        """Buy a license for `recipient` (default: us) at the offer's price, at most `max_price` (the
        price the buyer agreed to; approved first if needed): a price raised meanwhile reverts with
        LicensesPriceAboveMax instead of being charged."""
        receipts = self.market.token.ensure_allowance(self.address, max_price) if max_price else ()
        to = Web3.to_checksum_address(recipient or self.market.address)
        receipt = self._send(self.contract.functions.buy(offer_id, to, max_price))
        license_id = LicenseId(int(self._logs(receipt, "LicensePurchased")[0]["args"]["licenseId"]))
        return Sent(license_id, (*receipts, receipt))

    def transfer(self, license_id: int, to: str) -> Sent[None]:
        fn = self.contract.functions.transferFrom(self.market.address, Web3.to_checksum_address(to), license_id)
        return Sent(None, (self._send(fn),))

    def is_valid(self, license_id: int) -> bool:
        return bool(self._call(self.contract.functions.isValid(license_id)))

    def license_of(self, license_id: int) -> License:
        if not self._exists(license_id):
            raise NotFoundOnChain("license", license_id, self.market.chain_id)
        offer_id, model_id, expires_at, transferable = self._call(self.contract.functions.licenseOf(license_id))
        owner = self._call(self.contract.functions.ownerOf(license_id))
        return License(LicenseId(license_id), owner, int(offer_id), ModelId(bytes(model_id)), int(expires_at),
                       bool(transferable), self.is_valid(license_id))

    def valid_license_of(self, holder: str, model_id: bytes) -> LicenseId | None:
        found = int(self._call(self.contract.functions.validLicenseOf(Web3.to_checksum_address(holder), model_id)))
        return LicenseId(found) if found else None

    def licenses_of(self, holder: str) -> list[License]:
        address = Web3.to_checksum_address(holder)
        count = int(self._call(self.contract.functions.balanceOf(address)))
        ids = [int(self._call(self.contract.functions.tokenOfOwnerByIndex(address, i))) for i in range(count)]
        return [self.license_of(license_id) for license_id in ids]

    def _exists(self, license_id: int) -> bool:
        try:
            self._call(self.contract.functions.ownerOf(license_id))
        except ContractReverted as error:
            if error.error == "ERC721NonexistentToken":
                return False
            raise
        return True
