"""The per-token price options of `provider list-model` and `provider reprice` (metered models).

A metered model (an LLM priced by use) costs ``price per call + input tokens x price per input
token + output tokens x price per output token`` a call, with at most ``--max-output-tokens``
generated a call; consumers then pay with the `metered` scheme (docs/payment-protocol.md).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

import typer

from marketplace.errors import ConfigError
from marketplace.tokens import parse_tokens
from marketplace.types import TokenPricing

__all__ = ["InputTokenOption", "MaxOutputTokensOption", "OutputTokenOption", "token_pricing"]

_UINT32_MAX = 2**32 - 1

InputTokenOption = Annotated[
    str | None,
    typer.Option("--price-per-input-token", metavar="TOKENS",
                 help="Metered model: price per input (prompt) token in tokens, e.g. 0.000001, on top of the "
                      "price per call (0 with --price-per-output-token 0: flat again)."),
]
OutputTokenOption = Annotated[
    str | None,
    typer.Option("--price-per-output-token", metavar="TOKENS",
                 help="Metered model: price per output (generated) token in tokens, e.g. 0.000003."),
]
MaxOutputTokensOption = Annotated[
    int | None,
    typer.Option("--max-output-tokens", metavar="N",
                 help="Metered model: output tokens one call may generate at most (0: no cap but the consumer's)."),
]


def token_pricing(
    current: TokenPricing, per_input_token: str | None, per_output_token: str | None, max_output_tokens: int | None
) -> TokenPricing | None:
    """`current` with the options given applied; None if no option was given (nothing to change).

    ConfigError for a malformed price or a token cap out of range (before anything is sent)."""
    if per_input_token is None and per_output_token is None and max_output_tokens is None:
        return None
    change: dict[str, int] = {}
    if per_input_token is not None:
        change["per_input_token"] = parse_tokens(per_input_token, what="--price-per-input-token", allow_zero=True)
    if per_output_token is not None:
        change["per_output_token"] = parse_tokens(per_output_token, what="--price-per-output-token", allow_zero=True)
    if max_output_tokens is not None:
        if not 0 <= max_output_tokens <= _UINT32_MAX:
            raise ConfigError(f"--max-output-tokens must be between 0 and {_UINT32_MAX}, got {max_output_tokens}")
        change["max_output_tokens"] = max_output_tokens
    return replace(current, **change)
