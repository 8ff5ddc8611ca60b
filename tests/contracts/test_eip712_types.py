"""The contracts' EIP-712 types are the ones marketplace.payments.eip712 declares, read from the contracts.

Three independent readings, none a string copied into this file: the type strings the Solidity sources
hash (`keccak256("...")` in contracts/*.sol and the OpenZeppelin units they import), the 32-byte
constants the deployed bytecode pushes, and the contracts' public getters.
"""

from __future__ import annotations

import re
from typing import Any

from web3 import Web3

from marketplace.chain.build import source_units
from marketplace.payments.eip712 import (
    CANCEL_AUTHORIZATION,
    CLOSE_CHANNEL,
    EIP712_DOMAIN,
    MESSAGE_TYPES,
    PERMIT,
    RECEIVE_WITH_AUTHORIZATION,
    TRANSFER_WITH_AUTHORIZATION,
    VOUCHER,
    Domain,
    StructType,
)
from marketplace.payments.vouchers import VoucherDomain

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.DOTALL)
_HASHED_LITERAL = re.compile(r'keccak256\(\s*((?:"[^"]*"\s*)+)\)')  # adjacent literals concatenate
_STRUCT_TYPE = re.compile(r"(\w+)\((\w+ \w+(?:,\w+ \w+)*)\)")  # `Name(type field,...)`; an event has no names

ON_CHAIN = {  # contract -> the messages it verifies
    "PaymentChannels": (VOUCHER, CLOSE_CHANNEL),
    "MarketToken": (PERMIT, TRANSFER_WITH_AUTHORIZATION, RECEIVE_WITH_AUTHORIZATION, CANCEL_AUTHORIZATION),
}


def _solidity_type_strings() -> dict[str, str]:
    """{primary type name: type string} of every EIP-712 type string the compiled sources hash."""
    found: dict[str, str] = {}
    for unit, text in source_units().items():
        for literal in _HASHED_LITERAL.finditer(_COMMENT.sub("", text)):
            hashed = "".join(re.findall(r'"([^"]*)"', literal.group(1)))
            struct = _STRUCT_TYPE.fullmatch(hashed)
            if struct is not None:
                assert found.setdefault(struct.group(1), hashed) == hashed, f"{unit}: two {struct.group(1)} types"
    return found


def _push32_constants(code: bytes) -> set[bytes]:
    """The operands of every PUSH32 in EVM code (walking the opcodes, so PUSH data is never read as code)."""
    constants, pc = set(), 0
    while pc < len(code):
        opcode = code[pc]
        if 0x60 <= opcode <= 0x7F:  # PUSH1..PUSH32
            size = opcode - 0x5F
            if size == 32:
                constants.add(bytes(code[pc + 1 : pc + 33]))
            pc += size
        pc += 1
    return constants


def test_every_type_the_solidity_sources_hash_is_declared_in_python() -> None:
    solidity = _solidity_type_strings()
    expected = {struct.name for messages in ON_CHAIN.values() for struct in messages} | {"EIP712Domain"}
    assert set(solidity) == expected  # a new typehash in a contract fails here until eip712.py declares it
    for name, type_string in solidity.items():
        ours = EIP712_DOMAIN if name == "EIP712Domain" else MESSAGE_TYPES[name]
        assert ours.type_string == type_string
        assert ours.typehash == Web3.keccak(text=type_string)


def test_the_deployed_bytecode_pushes_our_typehashes(w3: Web3, contracts: Any) -> None:
    for name, messages in ON_CHAIN.items():
        constants = _push32_constants(bytes(w3.eth.get_code(contracts.addresses[name])))
        for struct in (*messages, EIP712_DOMAIN):
            assert struct.typehash in constants, f"{name} does not use {struct.name}'s typehash"


def test_public_typehash_getters_and_domain_separators(w3: Web3, contracts: Any, chain_id: int) -> None:
    getters: dict[str, tuple[Any, StructType]] = {
        "VOUCHER_TYPEHASH": (contracts.channels, VOUCHER),
        "TRANSFER_WITH_AUTHORIZATION_TYPEHASH": (contracts.token, TRANSFER_WITH_AUTHORIZATION),
        "RECEIVE_WITH_AUTHORIZATION_TYPEHASH": (contracts.token, RECEIVE_WITH_AUTHORIZATION),
        "CANCEL_AUTHORIZATION_TYPEHASH": (contracts.token, CANCEL_AUTHORIZATION),
    }
    for getter, (contract, struct) in getters.items():
        assert bytes(getattr(contract.functions, getter)().call()) == struct.typehash
    _, name, version, _, token, _, _ = contracts.token.functions.eip712Domain().call()
    separator = bytes(contracts.token.functions.DOMAIN_SEPARATOR().call())
    assert separator == Domain(name, version, chain_id, token).separator
    vouchers = VoucherDomain(chain_id, contracts.channels.address)
    _, name, version, _, escrow, _, _ = contracts.channels.functions.eip712Domain().call()
    assert vouchers.eip712 == Domain(name, version, chain_id, escrow)
    assert bytes(contracts.channels.functions.voucherDigest(7, 10**18).call()) == vouchers.digest(7, 10**18)
