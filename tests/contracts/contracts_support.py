"""Helpers for the contract tests: sending, reverts decoded to custom errors, events, time, signatures.

Everything here talks to a real Anvil whose default accounts are unlocked, so transactions are sent with
`{"from": address}` and Anvil signs them. Signatures (vouchers, permits, ERC-3009 authorizations) are made
locally with eth-account's typed-data encoder (not `marketplace/`'s hashing) from the message types declared
once in `marketplace.payments.eip712` (test_eip712_types.py proves them the contracts').
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError, ContractLogicError, Web3RPCError
from web3.logs import DISCARD
from web3.types import TxReceipt

from marketplace.payments.eip712 import MESSAGE_TYPES, PERMIT, Domain
from marketplace.payments.vouchers import VoucherDomain

__all__ = [
    "DEPOSIT",
    "SECP256K1_N",
    "TOKEN",
    "Channel",
    "Deployed",
    "Deployer",
    "Escrow",
    "Reverted",
    "advance_time",
    "authorization_signature",
    "channel_id_of",
    "compact",
    "events",
    "expect_revert",
    "malleate",
    "now",
    "permit_signature",
    "register_errors",
    "send",
    "set_next_timestamp",
    "sign_voucher",
    "voucher_digest",
    "voucher_typed_data",
]

TOKEN = 10**18
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

_TOKEN_DOMAIN = ("Market Token", "1")

# selector -> (name, [types]) for every custom error of every compiled contract (filled by the conftest)
_ERRORS: dict[bytes, tuple[str, list[str]]] = {
    bytes.fromhex("08c379a0"): ("Error", ["string"]),
    bytes.fromhex("4e487b71"): ("Panic", ["uint256"]),
}


def _abi_type(param: dict[str, Any]) -> str:
    if param["type"].startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in param["components"]) + ")" + param["type"][5:]
    return str(param["type"])


def register_errors(abi: list[dict[str, Any]]) -> None:
    """Learn the custom errors of an ABI, so that reverts of any contract can be decoded."""
    for item in abi:
        if item.get("type") == "error":
            types = [_abi_type(p) for p in item["inputs"]]
            _ERRORS[keccak(text=f"{item['name']}({','.join(types)})")[:4]] = (item["name"], types)


def _normalize(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("0x") and len(value) == 42:
        return to_checksum_address(value)
    if isinstance(value, (bytes, bytearray, HexBytes)):
        return bytes(value)
    if isinstance(value, (list, tuple)):
        return tuple(_normalize(v) for v in value)
    return value


def decode_error(data: bytes) -> tuple[str, tuple[Any, ...]]:
    """Revert data -> (error name, decoded arguments)."""
    if len(data) < 4:
        return ("<empty revert>", ())
    entry = _ERRORS.get(data[:4])
    if entry is None:
        return (f"<unknown error 0x{data[:4].hex()}>", (data[4:].hex(),))
    name, types = entry
    return name, tuple(_normalize(v) for v in abi_decode(types, data[4:]))


def _revert_data(error: BaseException) -> bytes:
    data = getattr(error, "data", None)
    if isinstance(data, dict):
        data = data.get("data")
    if data is None and isinstance(error, Web3RPCError):
        rpc = getattr(error, "rpc_response", None) or {}
        data = (rpc.get("error") or {}).get("data")
    if isinstance(data, str):
        return bytes(HexBytes(data))
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    return b""


@dataclass
class Reverted:
    """What `expect_revert` caught: the error name and its decoded arguments."""

    name: str = ""
    args: tuple[Any, ...] = field(default_factory=tuple)
    data: bytes = b""


@contextmanager
def expect_revert(error: str, *args: Any) -> Iterator[Reverted]:
    """Assert that the block reverts with custom error `error` (and, if given, exactly these arguments).

    Arguments compare after normalization (addresses checksummed, bytes as bytes); `unittest.mock.ANY` matches
    anything. Works for `.call()`, `.transact()` and `.estimate_gas()`.
    """
    caught = Reverted()
    try:
        yield caught
    except (ContractCustomError, ContractLogicError, Web3RPCError) as raised:
        caught.data = _revert_data(raised)
        caught.name, caught.args = decode_error(caught.data)
    else:
        pytest.fail(f"expected a revert with {error}{args or ''}, but the call succeeded")
    assert caught.name == error, f"expected {error}{args or ''}, got {caught.name}{caught.args}"
    if args:
        assert caught.args == tuple(_normalize(a) for a in args), f"{error}: got {caught.args}, expected {args}"


def send(fn: Any, sender: str, *, gas: int | None = None, value: int = 0) -> TxReceipt:
    """Send `fn` from an unlocked account and wait for the receipt (which must be a success)."""
    tx: dict[str, Any] = {"from": sender, "value": value}
    if gas is not None:
        tx["gas"] = gas
    tx_hash = fn.transact(tx)
    receipt = fn.w3.eth.wait_for_transaction_receipt(tx_hash)
    assert receipt["status"] == 1, f"{fn.fn_name} failed"
    return receipt


def _plain(value: Any) -> Any:
    """Struct arguments (web3 AttributeDicts) as tuples of their fields, so they compare with call results."""
    if isinstance(value, Mapping):
        return tuple(_plain(v) for v in value.values())
    return value


def events(contract: Contract, name: str, receipt: TxReceipt) -> list[dict[str, Any]]:
    """The decoded arguments of every `name` event `contract` emitted in the receipt (structs as tuples)."""
    found = contract.events[name]().process_receipt(receipt, errors=DISCARD)
    return [{k: _plain(v) for k, v in e["args"].items()} for e in found if e["address"] == contract.address]


def now(w3: Web3) -> int:
    return int(w3.eth.get_block("latest")["timestamp"])


def advance_time(w3: Web3, seconds: int) -> int:
    """Move the chain's clock forward and mine a block; returns the new block time."""
    w3.provider.make_request("evm_increaseTime", [seconds])
    w3.provider.make_request("evm_mine", [])
    return now(w3)


def set_next_timestamp(w3: Web3, timestamp: int) -> None:
    w3.provider.make_request("evm_setNextBlockTimestamp", [timestamp])


def voucher_typed_data(chain_id: int, escrow: str, channel_id: int, amount: int) -> dict[str, Any]:
    return VoucherDomain(chain_id, escrow).typed_data(channel_id, amount)


def voucher_digest(chain_id: int, escrow: str, channel_id: int, amount: int) -> bytes:
    """The EIP-712 digest of a voucher: keccak256(0x1901 || domainSeparator || structHash)."""
    message = encode_typed_data(full_message=voucher_typed_data(chain_id, escrow, channel_id, amount))
    return keccak(b"\x19" + message.version + message.header + message.body)


def sign_voucher(key: bytes, chain_id: int, escrow: str, channel_id: int, amount: int) -> bytes:
    """A 65-byte `r || s || v` EIP-712 voucher signature, made with eth-account."""
    message = encode_typed_data(full_message=voucher_typed_data(chain_id, escrow, channel_id, amount))
    return bytes(Account.sign_message(message, key).signature)


def compact(signature: bytes) -> tuple[bytes, bytes]:
    """65-byte `r || s || v` -> ERC-2098 `(r, yParityAndS)`."""
    r, s, v = signature[:32], int.from_bytes(signature[32:64], "big"), signature[64]
    return r, ((v - 27) << 255 | s).to_bytes(32, "big")


def malleate(signature: bytes) -> bytes:
    """The other valid ECDSA signature of the same message: s' = n - s, v flipped (refused by OpenZeppelin)."""
    r, s, v = signature[:32], int.from_bytes(signature[32:64], "big"), signature[64]
    return r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])


def channel_id_of(terms: tuple[str, str, str, bytes, int]) -> int:
    """`uint256(keccak256(abi.encode(terms)))`, computed in Python."""
    return int.from_bytes(
        keccak(abi_encode(["address", "address", "address", "bytes32", "uint256"], list(terms))), "big"
    )


def permit_signature(
    key: bytes, chain_id: int, token: str, owner: str, spender: str, value: int, nonce: int, deadline: int
) -> tuple[int, bytes, bytes]:
    """An ERC-2612 permit for MarketToken, as (v, r, s)."""
    data = Domain(*_TOKEN_DOMAIN, chain_id, token).typed_data(
        PERMIT, {"owner": owner, "spender": spender, "value": value, "nonce": nonce, "deadline": deadline}
    )
    signed = Account.sign_message(encode_typed_data(full_message=data), key)
    return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")


def authorization_signature(key: bytes, chain_id: int, token: str, primary_type: str, message: dict[str, Any]) -> bytes:
    """An ERC-3009 signature (`TransferWithAuthorization`, `ReceiveWithAuthorization` or `CancelAuthorization`)."""
    data = Domain(*_TOKEN_DOMAIN, chain_id, token).typed_data(MESSAGE_TYPES[primary_type], message)
    return bytes(Account.sign_message(encode_typed_data(full_message=data), key).signature)


# --- channels -------------------------------------------------------------------------------------------------------

DEPOSIT = 10 * TOKEN


@dataclass(frozen=True)
class Channel:
    terms: tuple[str, str, str, bytes, int]
    id: int
    expiry: int

    @property
    def payer(self) -> str:
        return self.terms[0]

    @property
    def payee(self) -> str:
        return self.terms[2]


@dataclass
class Escrow:
    """The escrow under test, its token, and the cast of accounts."""

    w3: Web3
    channels: Contract
    token: Contract
    chain_id: int
    payer: str
    payee: str
    relayer: str
    stranger: str
    signer: LocalAccount
    model_id: bytes

    def terms(self, salt: int = 0, *, payer: str | None = None, payee: str | None = None, signer: str | None = None):
        return (payer or self.payer, signer or self.signer.address, payee or self.payee, self.model_id, salt)

    def open(self, salt: int = 0, deposit: int = DEPOSIT, duration: int = 30 * 24 * 3600, **who: Any) -> Channel:
        terms = self.terms(salt, **who)
        send(self.token.functions.approve(self.channels.address, deposit), terms[0])
        expiry = now(self.w3) + duration
        send(self.channels.functions.open(terms, deposit, expiry), terms[0])
        return Channel(terms, channel_id_of(terms), expiry)

    def voucher(self, channel: Channel, amount: int, key: bytes | None = None) -> bytes:
        return sign_voucher(key or self.signer.key, self.chain_id, self.channels.address, channel.id, amount)

    def claim(
        self,
        channel: Channel,
        amount: int,
        sender: str | None = None,
        signature: bytes | None = None,
        *,
        payout: int | None = None,
    ):
        """Claim the voucher for `amount` (signed now unless given), for `payout` (default: the whole voucher)."""
        signature = self.voucher(channel, amount) if signature is None else signature
        payout = amount if payout is None else payout
        return send(self.channels.functions.claim(channel.terms, amount, payout, signature), sender or self.relayer)

    def state(self, channel: Channel) -> tuple[int, int, int]:
        return tuple(self.channels.functions.getChannel(channel.id).call())  # type: ignore[return-value]

    def balance(self, who: str) -> int:
        return int(self.token.functions.balanceOf(who).call())


# --- deployment -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deployer:
    """Deploys compiled contracts from an unlocked account."""

    w3: Web3
    compiled: dict[str, dict[str, Any]]
    sender: str

    def deploy(self, name: str, *args: Any) -> Contract:
        artifact = self.compiled[name]
        factory = self.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        receipt = send(factory.constructor(*args), self.sender)
        return self.w3.eth.contract(address=receipt["contractAddress"], abi=artifact["abi"])

    def at(self, name: str, address: str) -> Contract:
        return self.w3.eth.contract(address=address, abi=self.compiled[name]["abi"])


@dataclass(frozen=True)
class Deployed:
    token: Contract
    registry: Contract
    channels: Contract
    licenses: Contract

    @property
    def addresses(self) -> dict[str, str]:
        return {
            "MarketToken": self.token.address,
            "ModelRegistry": self.registry.address,
            "PaymentChannels": self.channels.address,
            "Licenses": self.licenses.address,
        }
