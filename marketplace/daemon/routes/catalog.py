"""Free routes: the models served here and the daemon's view of a channel."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from marketplace.chain.views import ModelInfo
from marketplace.daemon.errors import ApiError
from marketplace.daemon.limits import peer_address
from marketplace.daemon.paid_calls import parse_model_id
from marketplace.daemon.services import Services
from marketplace.errors import PaymentRejected
from marketplace.ipfs import CID
from marketplace.payments.schemes.metered import pricing_json
from marketplace.payments.x402 import parse_uint256_text

__all__ = ["router"]

router = APIRouter(tags=["catalog"])


class ModelCard(BaseModel):
    """A served model: OpenAI's model object (`id`, `object`, `owned_by`, `created`) and ours."""

    id: str  # the 0x model id, what an OpenAI request's `model` names
    object: str = "model"
    owned_by: str  # the provider (the model's owner)
    created: int = 0
    pricing: dict[str, Any]  # perCall, perInputToken, perOutputToken, maxOutputTokens
    model_id: str
    owner: str
    payee: str
    price: str
    status: str
    metadata_cid: str
    artifact_cid: str  # the registry's latest artifact
    artifact_version: int
    served_artifact_cid: str | None  # the artifact this daemon loaded and runs: what its receipts name
    served_artifact_version: int | None
    endpoint: str
    infer_url: str


class ModelList(BaseModel):
    """OpenAI's model list (`GET /v1/models`): every model served here, ONNX and text."""

    object: str = "list"
    data: list[ModelCard]


class ChannelView(BaseModel):
    channel_id: str
    view: dict[str, Any]


def _served(services: Services) -> list[bytes]:
    return [*services.runners, *services.text_runners]


def _card(request: Request, model: ModelInfo) -> ModelCard:
    model_hex = "0x" + model.model_id.hex()
    services: Services = request.app.state.services
    text = model.model_id in services.text_runners
    served = (services.text_runners[model.model_id] if text else services.runners[model.model_id]).artifact
    return ModelCard(
        id=model_hex,
        owned_by=model.owner,
        pricing=pricing_json(model.pricing),
        model_id=model_hex,
        owner=model.owner,
        payee=model.payee,
        price=str(model.price),
        status=model.status.name.lower(),
        metadata_cid=str(CID(1, model.metadata_codec, model.metadata_digest)),
        artifact_cid=str(CID(1, model.artifact_codec, model.artifact_digest)),
        artifact_version=model.artifact_version,
        served_artifact_cid=str(CID(1, served.codec, served.digest)) if served else None,
        served_artifact_version=served.version if served else None,
        endpoint=model.endpoint,
        infer_url=str(request.url_for("chat_completions") if text else request.url_for("infer", model_id=model_hex)),
    )


@router.get("/v1/models", response_model=ModelList, summary="Models served by this daemon (OpenAI's list)")
async def list_models(request: Request) -> ModelList:
    services = request.app.state.services
    return ModelList(data=[_card(request, model) for model_id in _served(services)
                           if (model := services.state.model(model_id))])


@router.get("/v1/models/{model_id}", response_model=ModelCard, summary="One served model")
async def show_model(model_id: str, request: Request) -> ModelCard:
    services = request.app.state.services
    key = parse_model_id(model_id)
    model = services.state.model(key)
    if model is None or key not in _served(services):
        raise ApiError(404, "unknown_model", f"model {model_id} is not served here")
    return _card(request, model)


@router.get("/v1/channels/{channel_id}", response_model=ChannelView, summary="The daemon's view of a channel")
async def show_channel(channel_id: str, request: Request) -> ChannelView:
    services = request.app.state.services
    number = parse_uint256_text(channel_id)
    if number is None:
        raise ApiError(404, "unknown_channel", f"{channel_id[:80]!r} is not a channel id (a uint256, hex or decimal)")
    try:
        channel = await services.channel.find(number, peer_address(request))
    except PaymentRejected as refusal:  # too_many_lookups (429) or chain_unavailable (503)
        services.metrics.rejections.labels(refusal.code).inc()
        raise
    if channel is None:
        raise ApiError(404, "unknown_channel", f"no channel {channel_id} on chain {services.state.chain_id}")
    credit = await services.ledger.credit(number)
    return ChannelView(channel_id=f"0x{number:064x}", view=services.channel.channel_view(number, credit))
