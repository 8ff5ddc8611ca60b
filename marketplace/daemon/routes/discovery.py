"""Free discovery routes: `GET /.well-known/x402` and `GET /discovery/resources` (what this daemon
sells, as x402 clients and Bazaar indexers read it) and `GET /v1/search` (the registry)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from marketplace.daemon.discovery import Discovery
from marketplace.daemon.errors import ApiError
from marketplace.daemon.routes.web import web_catalog
from marketplace.discovery.search import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_QUERY_CHARS,
    InvalidQuery,
    SearchQuery,
    entry_json,
    search,
)
from marketplace.discovery.x402 import page_of

__all__ = ["router"]

router = APIRouter(tags=["discovery"])

_KNOWN = frozenset(("q", "tag", "min_price", "max_price", "input", "output", "status", "limit", "cursor"))


def discovery(request: Request) -> Discovery:
    """The app's Discovery, made on first use for the services the lifespan started."""
    services = request.app.state.services
    found: Discovery | None = getattr(request.app.state, "discovery", None)
    if found is None or found.services is not services:
        found = request.app.state.discovery = Discovery(services, web_catalog(request))
    return found


DiscoveryDep = Annotated[Discovery, Depends(discovery)]


@router.get("/.well-known/x402", summary="x402 discovery: the paid resources of this daemon, with their accepts")
async def well_known_x402(request: Request, found: DiscoveryDep) -> dict[str, Any]:
    """Every paid resource served here (active models only), each with the `accepts` its 402 sends,
    in the form of an x402 facilitator's discovery list (docs/payment-protocol.md §8)."""
    return await found.document(request.app)


@router.get("/discovery/resources", summary="The same list, filtered and paged as an x402 facilitator's Bazaar")
async def discovery_resources(
    request: Request,
    found: DiscoveryDep,
    kind: Annotated[str | None, Query(alias="type", description="http")] = None,
    scheme: Annotated[str | None, Query(description="only resources offering this scheme")] = None,
    network: Annotated[str | None, Query(description="CAIP-2, e.g. eip155:1")] = None,
    pay_to: Annotated[str | None, Query(alias="payTo", description="only resources paying this address")] = None,
    limit: Annotated[str | None, Query(description="1-100 (default 100)")] = None,
    offset: Annotated[str | None, Query(description="resources to skip (default 0)")] = None,
) -> dict[str, Any]:
    """`/.well-known/x402` as `GET /discovery/resources` of a facilitator answers, so an x402
    Bazaar client pointed at this daemon lists its resources."""
    for name, value in (("type", kind), ("scheme", scheme), ("network", network), ("payTo", pay_to)):
        if value is not None and len(value) > MAX_QUERY_CHARS:
            raise ApiError(400, "invalid_query", f"{name} is longer than {MAX_QUERY_CHARS} characters")
    return page_of(await found.document(request.app), kind=kind, scheme=scheme, network=network, pay_to=pay_to,
                   limit=_whole(limit, "limit", 1, MAX_LIMIT, MAX_LIMIT), offset=_whole(offset, "offset", 0, 10**6, 0))


def _whole(text: str | None, name: str, low: int, high: int, default: int) -> int:
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 7 or not low <= int(text) <= high:
        raise ApiError(400, "invalid_query", f"{name} must be a whole number from {low} to {high}")
    return int(text)


@router.get("/v1/search", summary="Search the registry's models by name, tags, price and schemas")
async def search_models(
    request: Request,
    found: DiscoveryDep,
    q: Annotated[str | None, Query(description="words, all in the name, description, tags or id")] = None,
    tag: Annotated[list[str] | None, Query(description="tags the model has (all of them)")] = None,
    min_price: Annotated[str | None, Query(description="lowest price per call, token units")] = None,
    max_price: Annotated[str | None, Query(description="highest price per call, token units")] = None,
    input: Annotated[str | None, Query(description="a word of the input schema (a field name, a type)")] = None,
    output: Annotated[str | None, Query(description="a word of the output schema or named outputs")] = None,
    status: Annotated[str | None, Query(description="active (default), paused, retired or any")] = None,
    limit: Annotated[str | None, Query(description=f"per page, 1-{MAX_LIMIT} (default {DEFAULT_LIMIT})")] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> dict[str, Any]:
    """Registered models (not only those served here) whose verified metadata and price match;
    paged by `next_cursor`. 400 `invalid_query` names a malformed parameter."""
    unknown = sorted(set(request.query_params) - _KNOWN)
    if unknown:
        raise ApiError(400, "invalid_query", f"unknown parameter {unknown[0][:MAX_QUERY_CHARS]!r}")
    try:
        query = SearchQuery.parse({"q": q, "tag": tag, "min_price": min_price, "max_price": max_price,
                                   "input": input, "output": output, "status": status, "limit": limit,
                                   "cursor": cursor})
    except InvalidQuery as error:
        raise ApiError(400, error.code, error.detail) from None
    state = found.services.state
    block = state.block_number
    models = [model for model in state.models() if model.status in query.statuses]
    page = search(await found.entries(models), query)
    return {"items": [entry_json(entry) for entry in page.items], "total": page.total,
            "next_cursor": page.next_cursor, "block": block}
