"""The payment schemes a daemon serves, by name: what `PaidCalls` dispatches on."""

from __future__ import annotations

from collections.abc import Iterable

from marketplace.chain.views import ModelInfo
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

    async def offers(self, model: ModelInfo, context: OfferContext) -> list[PaymentRequirements]:
        """Every scheme's entry of a 402's `accepts` for `model` (a scheme may offer nothing for it)."""
        offers = [await scheme.offer(model, context) for scheme in self._schemes.values()]
        return [offer for offer in offers if offer is not None]
