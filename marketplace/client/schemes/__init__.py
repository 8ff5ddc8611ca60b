"""The client side of each x402 scheme, mirroring marketplace.payments.schemes: `channel`
(vouchers within our own record), `exact` (EIP-3009), `license`. `PaymentAuth` drives them."""

from marketplace.client.schemes.base import Attempt, SchemePayer
from marketplace.client.schemes.channel import ChannelAttempt, ChannelPayer
from marketplace.client.schemes.exact import ExactPayer
from marketplace.client.schemes.license import LicensePayer

__all__ = [
    "Attempt",
    "ChannelAttempt",
    "ChannelPayer",
    "ExactPayer",
    "LicensePayer",
    "SchemePayer",
]
