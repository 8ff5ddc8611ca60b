"""The client side of each x402 scheme, mirroring marketplace.payments.schemes: `channel`
(vouchers within our own record), `exact` (EIP-3009), `license`, `trial` (free calls, used first).
`PaymentAuth` drives them."""

from marketplace.client.schemes.base import Attempt, SchemePayer
from marketplace.client.schemes.channel import ChannelAttempt, ChannelPayer
from marketplace.client.schemes.exact import ExactPayer
from marketplace.client.schemes.license import LicensePayer
from marketplace.client.schemes.trial import TrialAttempt, TrialPayer

__all__ = [
    "Attempt",
    "ChannelAttempt",
    "ChannelPayer",
    "ExactPayer",
    "LicensePayer",
    "SchemePayer",
    "TrialAttempt",
    "TrialPayer",
]
