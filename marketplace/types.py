"""Domain types shared across the marketplace, so signatures say what a value means."""

from __future__ import annotations

from typing import NewType

from eth_typing import ChecksumAddress

__all__ = ["Address", "ModelId", "ChannelId", "LicenseId", "TokenAmount", "Wei"]

Address = ChecksumAddress
ModelId = NewType("ModelId", bytes)  # 32 bytes: keccak256(abi.encode(owner, salt))
ChannelId = NewType("ChannelId", int)  # uint256(keccak256(abi.encode(ChannelTerms)))
LicenseId = NewType("LicenseId", int)  # ERC-721 token id
TokenAmount = NewType("TokenAmount", int)  # smallest units of the payment token
Wei = NewType("Wei", int)  # native currency, for gas
