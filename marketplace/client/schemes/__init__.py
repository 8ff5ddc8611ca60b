"""The client side of each x402 scheme, mirroring marketplace.payments.schemes: `channel`
(vouchers within our own record), `exact` (EIP-3009), `license`, `metered` (a channel voucher for
our record plus a cap, the charge checked against the stream), `trial` (free calls, used first).
`PaymentAuth` drives them."""

from marketplace.client.schemes.base import Attempt, SchemePayer
from marketplace.client.schemes.channel import ChannelAttempt, ChannelPayer
from marketplace.client.schemes.exact import ExactPayer
from marketplace.client.schemes.license import LicensePayer
from marketplace.client.schemes.metered import MeteredAttempt, MeteredPayer
from marketplace.client.schemes.trial import TrialAttempt, TrialPayer

__all__ = [
    "Attempt",
    "ChannelAttempt",
    "ChannelPayer",
    "ExactPayer",
    "LicensePayer",
    "MeteredAttempt",
    "MeteredPayer",
    "SchemePayer",
    "TrialAttempt",
    "TrialPayer",
]
