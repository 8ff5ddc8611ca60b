"""x402 payment schemes served by the daemon: `channel` (vouchers), `exact` (EIP-3009), `license`.

Each scheme turns a model into its `accepts` entry of a 402 and checks a decoded PAYMENT-SIGNATURE
for a call of that model; see docs/payment-protocol.md for the wire format and every error code.
"""

from marketplace.payments.schemes.base import PaidRequest, PaymentScheme, payment_required
from marketplace.payments.schemes.channel import ChannelScheme, VerifiedVoucher
from marketplace.payments.schemes.exact import ExactScheme, Settlement, VerifiedAuthorization
from marketplace.payments.schemes.license import LicenseScheme, VerifiedLicense

__all__ = [
    "PaidRequest",
    "PaymentScheme",
    "payment_required",
    "ChannelScheme",
    "VerifiedVoucher",
    "ExactScheme",
    "VerifiedAuthorization",
    "Settlement",
    "LicenseScheme",
    "VerifiedLicense",
]
