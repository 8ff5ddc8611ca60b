"""The web catalog (HTML, not in the OpenAPI schema): `/`, `/models/{id}`, `/dashboard`, `/static/style.css`.

`/dashboard` is the provider's only (daemon/access.py); the others are public."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import HTMLResponse, Response

from marketplace.daemon.access import open_dashboard, provider_only
from marketplace.web import (
    WebCatalog,
    catalog_page,
    dashboard_page,
    model_page,
    not_found_page,
)
from marketplace.web.pages import Earnings, Site
from marketplace.web.render import static_bytes

__all__ = ["router"]

router = APIRouter(tags=["web"], include_in_schema=False)

# Pages hold no secrets but show provider text: forbid scripts and every origin but our own.
_HEADERS = {
    "content-security-policy": "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}  # fmt: skip


def web_catalog(request: Request) -> WebCatalog:
    """The app's WebCatalog, made on first use for the services the lifespan started."""
    services = request.app.state.services
    catalog: WebCatalog | None = getattr(request.app.state, "web_catalog", None)
    if catalog is None or catalog.services is not services:
        catalog = request.app.state.web_catalog = WebCatalog(services)
    return catalog


Catalog = Annotated[WebCatalog, Depends(web_catalog)]


def _site(request: Request, catalog: WebCatalog) -> Site:
    state = catalog.services.state
    return Site(
        home=request.url_for("web_catalog_page").path,
        dashboard=request.url_for("web_dashboard").path,
        docs=request.app.docs_url or "/docs",
        css=request.url_for("web_static", name="style.css").path,
        model_href=lambda model_hex: request.url_for("web_model_page", model_id=model_hex).path,
        infer_url=lambda model_hex: str(request.url_for("infer", model_id=model_hex)),
        chain_id=state.chain_id,
        block=state.block_number,
        stale=catalog.history_stale,
    )


def _html(body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status_code, headers=_HEADERS)


def _model_key(text: str) -> bytes | None:
    body = text[2:] if text[:2] in ("0x", "0X") else text
    try:
        return bytes.fromhex(body) if len(body) == 64 else None
    except ValueError:
        return None


@router.get("/", name="web_catalog_page", response_class=HTMLResponse)
async def catalog(request: Request, catalog: Catalog) -> HTMLResponse:
    entries = await catalog.entries()
    return _html(catalog_page(_site(request, catalog), entries))


@router.get("/models/{model_id}", name="web_model_page", response_class=HTMLResponse)
async def model(model_id: str, request: Request, catalog: Catalog) -> HTMLResponse:
    key = _model_key(model_id)
    entry = await catalog.entry(key) if key is not None else None
    if entry is None:
        detail = f"No model {model_id[:80]} is served by this daemon."
        return _html(not_found_page(_site(request, catalog), detail), status_code=404)
    runner = catalog.services.runners.get(entry.info.model_id)
    schema = getattr(runner, "input_schema", None)
    if schema is None and entry.metadata is not None:
        schema = entry.metadata.input_schema
    return _html(model_page(_site(request, catalog), entry, schema))


@router.get("/dashboard", name="web_dashboard", response_class=HTMLResponse)
async def dashboard(request: Request, catalog: Catalog, token: str | None = None) -> Response:
    opened = open_dashboard(request, token) if token is not None else None
    if opened is not None:
        return opened
    provider_only(request)
    services = catalog.services
    entries = await catalog.entries()
    unclaimed = await catalog.unclaimed_by_channel()
    claimed = catalog.claimed_by_model()
    per_model: dict[bytes, int] = {}
    credit = []
    for channel_id, amount in sorted(unclaimed.items()):
        info = services.state.channel(channel_id)
        if info is not None:
            per_model[info.model_id] = per_model.get(info.model_id, 0) + amount
        credit.append((channel_id, info, amount))
    earnings = [Earnings(entry, claimed.get(entry.info.model_id, 0), per_model.get(entry.info.model_id, 0))
                for entry in entries]
    page = dashboard_page(_site(request, catalog), services.account.address, services.state.now(), earnings, credit,
                          catalog.expiring(unclaimed))
    return _html(page)


@router.get("/static/{name}", name="web_static")
async def static(name: str) -> Response:
    if name != "style.css":
        return Response("not found", status_code=404, media_type="text/plain")
    return Response(static_bytes(name), media_type="text/css",
                    headers={"cache-control": "public, max-age=300", "x-content-type-options": "nosniff"})
