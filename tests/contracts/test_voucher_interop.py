"""Vouchers signed by two independent EIP-712 implementations are accepted on-chain.

eth-account (Python) and ethers.js (npm, run with node), given the typed data marketplace.payments.eip712
declares, must agree with the contract on the digest, and each signature must claim successfully.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from contracts_support import TOKEN, Escrow, voucher_digest, voucher_typed_data
from eth_account import Account
from hexbytes import HexBytes

SCRIPT = Path(__file__).parent.parent / "payments" / "sign_typed.mjs"  # ethers.js, given typed-data JSON


def _ethers_sign(key: bytes, chain_id: int, escrow: str, channel_id: int, amount: int) -> dict[str, str]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is required to run the ethers.js signer (it is how npm's toolchain runs here)")
    typed = voucher_typed_data(chain_id, escrow, channel_id, amount)
    typed["message"] = {name: str(value) for name, value in typed["message"].items()}  # JSON numbers are doubles
    request = {"privateKey": "0x" + key.hex(), "typedData": typed}
    done = subprocess.run(
        [node, str(SCRIPT)], input=json.dumps(request), capture_output=True, text=True, timeout=60, cwd=SCRIPT.parent
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_python_and_ethers_vouchers_both_claim(escrow: Escrow) -> None:
    channel = escrow.open()
    key = escrow.signer.key

    python_signed = Account.sign_typed_data(
        key, full_message=voucher_typed_data(escrow.chain_id, escrow.channels.address, channel.id, 2 * TOKEN)
    )
    ethers_signed = _ethers_sign(key, escrow.chain_id, escrow.channels.address, channel.id, 5 * TOKEN)

    assert ethers_signed["address"] == escrow.signer.address
    on_chain_digest = escrow.channels.functions.voucherDigest(channel.id, 5 * TOKEN).call()
    assert HexBytes(ethers_signed["digest"]) == on_chain_digest
    assert voucher_digest(escrow.chain_id, escrow.channels.address, channel.id, 5 * TOKEN) == on_chain_digest
    assert bytes(python_signed.message_hash) == escrow.channels.functions.voucherDigest(channel.id, 2 * TOKEN).call()

    escrow.claim(channel, 2 * TOKEN, signature=bytes(python_signed.signature))
    escrow.claim(channel, 5 * TOKEN, signature=bytes(HexBytes(ethers_signed["signature"])))
    assert escrow.state(channel)[1] == 5 * TOKEN


def test_both_implementations_produce_the_same_deterministic_signature(escrow: Escrow) -> None:
    """RFC 6979 nonces: equal digests and keys give byte-identical signatures, a strong agreement check."""
    key, escrow_address = escrow.signer.key, escrow.channels.address
    for channel_id, amount in [(0, 1), (2**256 - 1, 2**96 - 1), (123456789, 10**18)]:
        python_signed = Account.sign_typed_data(
            key, full_message=voucher_typed_data(escrow.chain_id, escrow_address, channel_id, amount)
        )
        ethers_signed = _ethers_sign(key, escrow.chain_id, escrow_address, channel_id, amount)
        assert bytes(python_signed.signature) == bytes(HexBytes(ethers_signed["signature"]))
