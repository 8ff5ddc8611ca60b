"""EIP-712 vouchers for PaymentChannels: `Voucher(uint256 channelId,uint256 amount)`.

The type string below is the single specification shared with the contract. Signing and
recovery hash with a precomputed domain separator and use coincurve directly, about five times
faster than eth-account's typed-data path; `typed_data()` gives the same message in the standard
JSON form for wallets and other implementations (a test proves both hash alike).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from coincurve import PublicKey
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address

from marketplace.errors import MarketplaceError

__all__ = [
    "DOMAIN_NAME",
    "DOMAIN_VERSION",
    "VOUCHER_TYPE",
    "VoucherDomain",
    "InvalidSignature",
    "sign_voucher",
    "recover_signer",
]

DOMAIN_NAME = "ModelMarketplace"
DOMAIN_VERSION = "1"
VOUCHER_TYPE = "Voucher(uint256 channelId,uint256 amount)"
_DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
_VOUCHER_TYPEHASH = keccak(text=VOUCHER_TYPE)
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


class InvalidSignature(MarketplaceError):
    """A signature that is malformed, malleable or does not recover to a key."""


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big")


@dataclass(frozen=True)
class VoucherDomain:
    """The EIP-712 domain of one PaymentChannels deployment."""

    chain_id: int
    verifying_contract: str
    separator: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        contract = bytes.fromhex(to_checksum_address(self.verifying_contract)[2:])
        separator = keccak(
            keccak(text=_DOMAIN_TYPE)
            + keccak(text=DOMAIN_NAME)
            + keccak(text=DOMAIN_VERSION)
            + _word(self.chain_id)
            + contract.rjust(32, b"\0")
        )
        object.__setattr__(self, "separator", separator)

    def digest(self, channel_id: int, amount: int) -> bytes:
        """The 32-byte EIP-712 hash a voucher signature signs."""
        struct_hash = keccak(_VOUCHER_TYPEHASH + _word(channel_id) + _word(amount))
        return keccak(b"\x19\x01" + self.separator + struct_hash)

    def typed_data(self, channel_id: int, amount: int) -> dict[str, object]:
        """The voucher as standard EIP-712 JSON (eth_signTypedData_v4, ethers, eth-account)."""
        return {
            "types": {
                "EIP712Domain": [
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "string"},
                    {"name": "chainId", "type": "uint256"},
                    {"name": "verifyingContract", "type": "address"},
                ],
                "Voucher": [{"name": "channelId", "type": "uint256"}, {"name": "amount", "type": "uint256"}],
            },
            "primaryType": "Voucher",
            "domain": {
                "name": DOMAIN_NAME,
                "version": DOMAIN_VERSION,
                "chainId": self.chain_id,
                "verifyingContract": to_checksum_address(self.verifying_contract),
            },
            "message": {"channelId": channel_id, "amount": amount},
        }


def sign_voucher(account: LocalAccount, domain: VoucherDomain, channel_id: int, amount: int) -> bytes:
    """A 65-byte signature (r, s, v with v in {27, 28}, low s) of the voucher."""
    signed = account.unsafe_sign_hash(domain.digest(channel_id, amount))
    return bytes(signed.signature)


def recover_signer(domain: VoucherDomain, channel_id: int, amount: int, signature: bytes) -> str:
    """The checksummed address that signed the voucher; InvalidSignature if it is not canonical."""
    if len(signature) != 65:
        raise InvalidSignature(f"a signature has 65 bytes, got {len(signature)}")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    v = signature[64]
    if v not in (27, 28):
        raise InvalidSignature(f"signature v must be 27 or 28, got {v}")
    if not (0 < r < _SECP256K1_N and 0 < s <= _SECP256K1_N // 2):
        raise InvalidSignature("signature r/s out of range or malleable (high s)")
    try:
        public = PublicKey.from_signature_and_message(
            signature[:64] + bytes([v - 27]), domain.digest(channel_id, amount), hasher=None
        )
    except Exception as error:  # coincurve raises a bare Exception for unrecoverable signatures
        raise InvalidSignature(f"signature does not recover to a key ({error})") from None
    return to_checksum_address(keccak(public.format(compressed=False)[1:])[-20:])
