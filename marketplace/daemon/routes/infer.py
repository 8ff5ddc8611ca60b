"""`POST /v1/models/{model_id}/infer`: one paid inference."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from marketplace.daemon.discovery import paid_route
from marketplace.daemon.paid_calls import PaidCalls

__all__ = ["router"]

router = APIRouter(tags=["inference"])

_PAID_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"description": "The model's answer; PAYMENT-RESPONSE carries the charge and a signed receipt."},
    402: {"description": "Payment required or refused: PAYMENT-REQUIRED lists channel, exact and license; "
                         "the JSON body names the error code."},
    400: {"description": "Unreadable PAYMENT-SIGNATURE header."},
    404: {"description": "unknown_model"},
    409: {"description": "model_paused"},
    410: {"description": "model_retired"},
    413: {"description": "body_too_large"},
    422: {"description": "invalid_input: the body does not match the model's input schema"},
    502: {"description": "upstream_failed (not charged)"},
    503: {"description": "chain_unavailable"},
    504: {"description": "upstream_timeout (not charged)"},
}


@router.post(
    "/v1/models/{model_id}/infer",
    responses=_PAID_RESPONSES,
    summary="Run one paid inference",
    openapi_extra={
        "parameters": [
            {"name": "PAYMENT-SIGNATURE", "in": "header", "required": False, "schema": {"type": "string"},
             "description": "base64 JSON x402 v2 PaymentPayload (scheme channel, exact, license or trial)"},
            {"name": "PAYMENT-CHANNEL", "in": "header", "required": False, "schema": {"type": "string"},
             "description": "a channel id whose daemon view the 402 should carry (resynchronisation)"},
            {"name": "PAYMENT-CONSUMER", "in": "header", "required": False, "schema": {"type": "string"},
             "description": "an address whose trials used the 402's trial offer should say (extra.used)"},
        ],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
        **paid_route("one inference of {name} ({model_id})"),  # listed in /.well-known/x402
    },
)
async def infer(model_id: str, request: Request) -> Response:
    """Without PAYMENT-SIGNATURE: 402 with what to pay. With a valid payment: the model's answer."""
    paid_calls: PaidCalls = request.app.state.paid_calls
    return await paid_calls.handle(request, model_id)
