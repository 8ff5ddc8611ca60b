"""Amounts of the payment token: `parse_tokens("0.002")` -> token units, `format_tokens` back.

Amounts are token units (`TokenAmount`, 18 decimals); prices, deposits and license prices are
uint96 on chain.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation, localcontext

from marketplace.errors import ConfigError
from marketplace.types import TokenAmount, TokenPricing

__all__ = ["TOKEN_DECIMALS", "UINT96_MAX", "format_pricing", "format_token_prices", "format_tokens", "parse_tokens"]

TOKEN_DECIMALS = 18
UINT96_MAX = 2**96 - 1  # prices, deposits and license prices are uint96 on chain


def parse_tokens(text: str | int | Decimal, *, what: str = "amount", allow_zero: bool = False,
                 maximum: int = UINT96_MAX) -> TokenAmount:
    """`"0.002"` -> 2 * 10**15 token units; ConfigError (naming `what`) unless exact, positive and small enough."""
    with localcontext() as context:
        context.prec = 100
        try:
            value = Decimal(str(text).strip()) * Decimal(10) ** TOKEN_DECIMALS
        except InvalidOperation:
            raise ConfigError(f"{what} must be a number of tokens such as 0.002, got {text!r}") from None
        if not value.is_finite() or value != value.to_integral_value():
            raise ConfigError(f"{what} must be a number of tokens with at most {TOKEN_DECIMALS} decimals, got {text!r}")
    units = int(value)
    if units < 0 or (units == 0 and not allow_zero):
        raise ConfigError(f"{what} must be more than 0 tokens, got {text}")
    if units > maximum:
        raise ConfigError(f"{what} of {text} tokens is too large (at most {format_tokens(maximum)})")
    return TokenAmount(units)


def format_tokens(amount: int) -> str:
    """Token units as a decimal number of tokens: 2 * 10**15 -> "0.002"."""
    whole, fraction = divmod(int(amount), 10**TOKEN_DECIMALS)
    decimals = f"{fraction:0{TOKEN_DECIMALS}d}".rstrip("0")
    return f"{whole}.{decimals}" if decimals else str(whole)


def format_pricing(pricing: TokenPricing, *, short: bool = False) -> str:
    """A model's prices in words: "0.002 MKT per call", plus the per-token prices of a metered model
    (`short`, for a table's price column in MKT: "0.002 + 0.000001/in + 0.000003/out token")."""
    if short:
        text = format_tokens(pricing.per_call)
        if pricing.metered:
            text += (f" + {format_tokens(pricing.per_input_token)}/in"
                     f" + {format_tokens(pricing.per_output_token)}/out token")
        return text
    return f"{format_tokens(pricing.per_call)} MKT per call{format_token_prices(pricing)}"


def format_token_prices(pricing: TokenPricing) -> str:
    """What a metered model charges on top of the call: " + 0.000001 MKT per input token + ..." ("" if flat)."""
    if not pricing.metered:
        return ""
    text = (f" + {format_tokens(pricing.per_input_token)} MKT per input token"
            f" + {format_tokens(pricing.per_output_token)} MKT per output token")
    if pricing.max_output_tokens:
        text += f" (at most {pricing.max_output_tokens:,} output tokens a call)"
    return text
