"""EIP-712 vouchers for PaymentChannels: `Voucher(uint256 channelId,uint256 amount)` (eip712.VOUCHER).

One paid call recovers one voucher: the digest uses the domain's precomputed separator and
`recover_signer_address` compares raw 20-byte addresses (no checksum text); `typed_data()` gives
the same message in the standard JSON form for wallets and other implementations (a test proves
both hash alike, and that the contract's VOUCHER_TYPEHASH is ours).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eth_account.signers.local import LocalAccount

from marketplace.payments.eip712 import (
    DOMAIN_VERSION,
    MARKETPLACE_DOMAIN_NAME,
    VOUCHER,
    Domain,
    checksum_address,
    recover_address,
    sign_digest,
)

__all__ = ["VoucherDomain", "recover_signer", "recover_signer_address", "sign_voucher"]


@dataclass(frozen=True)
class VoucherDomain:
    """The EIP-712 domain of one PaymentChannels deployment."""

    chain_id: int
    verifying_contract: str
    eip712: Domain = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        domain = Domain(MARKETPLACE_DOMAIN_NAME, DOMAIN_VERSION, self.chain_id, self.verifying_contract)
        object.__setattr__(self, "eip712", domain)

    def digest(self, channel_id: int, amount: int) -> bytes:
        """The 32-byte EIP-712 hash a voucher signature signs."""
        return self.eip712.digest(VOUCHER, channel_id, amount)

    def typed_data(self, channel_id: int, amount: int) -> dict[str, Any]:
        """The voucher as standard EIP-712 JSON (eth_signTypedData_v4, ethers, eth-account)."""
        return self.eip712.typed_data(VOUCHER, {"channelId": channel_id, "amount": amount})


def sign_voucher(account: LocalAccount | bytes, domain: VoucherDomain, channel_id: int, amount: int) -> bytes:
    """A 65-byte signature (r, s, v with v in {27, 28}, low s) of the voucher."""
    return sign_digest(account, domain.digest(channel_id, amount))


def recover_signer_address(domain: VoucherDomain, channel_id: int, amount: int, signature: bytes) -> bytes:
    """The raw 20-byte address that signed the voucher (the hot path: no checksum text)."""
    return recover_address(domain.digest(channel_id, amount), signature)


def recover_signer(domain: VoucherDomain, channel_id: int, amount: int, signature: bytes) -> str:
    """The checksummed address that signed the voucher; InvalidSignature if it is not canonical."""
    return checksum_address(recover_address(domain.digest(channel_id, amount), signature))
