"""The payment schemes a daemon serves, by name: what `PaidCalls` dispatches on."""

from __future__ import annotations

from collections.abc import Iterable

from marketplace.chain.views import ModelInfo
from marketplace.errors import PaymentRejected
from marketplace.payments.schemes.base import OfferContext, Scheme
from marketplace.payments.x402 import PaymentRequirements

__all__ = ["SchemeRegistry"]


class SchemeRegistry:
    """Schemes by name, in the order a 402 offers them."""

    def __init__(self, schemes: Iterable[Scheme]) -> None:
        self._schemes = {scheme.name: scheme for scheme in schemes}
        self.names = frozenset(self._schemes)

    def __getitem__(self, name: str) -> Scheme:
        return self._schemes[name]

    def for_model(self, name: str, model: ModelInfo) -> Scheme:
        """The scheme `name` (one of `names`) if it pays for `model`, else PaymentRejected
        `unsupported_scheme` (a flat price never pays for a metered model, nor the reverse)."""
        scheme = self._schemes[name]
        if not scheme.serves(model):
            raise PaymentRejected("unsupported_scheme",
                                  f"scheme {name!r} does not pay for model 0x{model.model_id.hex()}")
        return scheme

    async def offers(self, model: ModelInfo, context: OfferContext) -> list[PaymentRequirements]:
        """The entry of a 402's `accepts` of every scheme that `serves` `model`."""
        return [await scheme.offer(model, context) for scheme in self._schemes.values() if scheme.serves(model)]
