"""OpenAI-compatible paid text routes: `POST /v1/chat/completions`, `POST /v1/completions`.

`model` is the 0x model id (`GET /v1/models` lists them, OpenAI's list); payment is the `metered`
scheme (docs/payment-protocol.md, "metered"). The list itself lives in routes/catalog.py.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from marketplace.daemon.discovery import paid_route
from marketplace.daemon.text_calls import TextCalls

__all__ = ["router"]

router = APIRouter(tags=["openai"])

_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"description": "The completion (JSON, or SSE with `stream: true`: chunks carry `x402_tokens`, then "
                         "`: x402-settlement {...}` and `data: [DONE]`); PAYMENT-RESPONSE: charge and receipt "
                         "(JSON) or the cap reserved (SSE)."},
    400: {"description": "invalid_request (the field at fault), or an unreadable PAYMENT-SIGNATURE"},
    402: {"description": "Payment required or refused: PAYMENT-REQUIRED offers `metered` (per-token prices in "
                         "extra.pricing); cap_too_low, price_changed, insufficient_credit, ..."},
    404: {"description": "unknown_model (not a text model served here)"},
    409: {"description": "model_paused, model_not_metered"},
    410: {"description": "model_retired"},
    413: {"description": "body_too_large"},
    502: {"description": "upstream_failed (not charged)"},
    503: {"description": "chain_unavailable, ledger_unavailable"},
}
_OPENAPI = {
    "parameters": [
        {"name": "PAYMENT-SIGNATURE", "in": "header", "required": False, "schema": {"type": "string"},
         "description": "base64 JSON x402 v2 PaymentPayload, scheme metered: channelId, amount, signature, cap"},
        {"name": "PAYMENT-CHANNEL", "in": "header", "required": False, "schema": {"type": "string"},
         "description": "a channel id whose daemon view the 402 should carry (resynchronisation)"},
    ],
    "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
}


def _calls(request: Request) -> TextCalls:
    calls: TextCalls = request.app.state.text_calls
    return calls


@router.post("/v1/chat/completions", name="chat_completions", responses=_RESPONSES,
             openapi_extra=_OPENAPI | paid_route("chat completions of {name} ({model_id}), priced per token",
                                                 models="text"),
             summary="A paid chat completion (OpenAI-compatible), charged per token under a signed cap")
async def chat_completions(request: Request) -> Response:
    """Without PAYMENT-SIGNATURE: 402 with the per-token prices. With a cap voucher: the answer."""
    return await _calls(request).handle(request, "chat")


@router.post("/v1/completions", name="completions", responses=_RESPONSES,
             openapi_extra=_OPENAPI | paid_route("text completions of {name} ({model_id}), priced per token",
                                                 models="text"),
             summary="A paid text completion (OpenAI-compatible), charged per token under a signed cap")
async def completions(request: Request) -> Response:
    """Without PAYMENT-SIGNATURE: 402 with the per-token prices. With a cap voucher: the answer."""
    return await _calls(request).handle(request, "completion")
