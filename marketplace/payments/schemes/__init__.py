"""x402 payment schemes served by the daemon: `channel` (vouchers), `exact` (EIP-3009), `license`,
`trial` (free calls per consumer).

Each scheme offers a model in a 402 and admits a decoded PAYMENT-SIGNATURE for a call of that
model (`base.Scheme`, `base.Admission`); the daemon holds them in a `SchemeRegistry`. See
docs/architecture.md ("Schemes") and docs/payment-protocol.md for the wire format and every code.
"""

from marketplace.payments.schemes.base import (
    Admission,
    Charge,
    OfferContext,
    PaidRequest,
    PaymentScheme,
    Scheme,
    payment_required,
)
from marketplace.payments.schemes.channel import ChannelScheme, VerifiedVoucher
from marketplace.payments.schemes.exact import ExactScheme, Settlement, VerifiedAuthorization
from marketplace.payments.schemes.license import LicenseScheme, VerifiedLicense
from marketplace.payments.schemes.registry import SchemeRegistry
from marketplace.payments.schemes.trial import TrialScheme, TrialTerms, VerifiedTrial

__all__ = [
    "Admission",
    "ChannelScheme",
    "Charge",
    "ExactScheme",
    "LicenseScheme",
    "OfferContext",
    "PaidRequest",
    "PaymentScheme",
    "Scheme",
    "SchemeRegistry",
    "Settlement",
    "TrialScheme",
    "TrialTerms",
    "VerifiedAuthorization",
    "VerifiedLicense",
    "VerifiedTrial",
    "VerifiedVoucher",
    "payment_required",
]
