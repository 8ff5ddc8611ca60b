"""`marketplace search`: find models by name, tags, price and input/output schema.

Reads the registry on chain and each model's metadata from IPFS (every block re-hashed against
its CID) and filters them here, or asks a daemon's `GET /v1/search` (`--url`); both filter with
`marketplace.discovery.search`, so the answers agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from marketplace.cli.account import DeploymentsDirOption, RpcUrlOption, out
from marketplace.cli.ipfs import ApiOption, DataDirOption, StoreOption
from marketplace.config import DEFAULT_RPC_URL
from marketplace.errors import ConfigError
from marketplace.ipfs import StoreKind
from marketplace.tokens import format_tokens, parse_tokens

if TYPE_CHECKING:
    from marketplace.chain.market import Market
    from marketplace.discovery.search import SearchQuery

__all__ = ["search", "search_catalog"]

_TIMEOUT = 10.0


def search(
    query: Annotated[
        str | None, typer.Argument(metavar="[WORDS]", help="Words that must all appear in the name, description, "
                                                           "tags or id.")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="A tag the model must have (repeatable).")] = None,
    min_price: Annotated[str | None, typer.Option(help="Lowest price per call, in tokens (e.g. 0.001).")] = None,
    max_price: Annotated[str | None, typer.Option(help="Highest price per call, in tokens.")] = None,
    input_: Annotated[
        str | None, typer.Option("--input", help="A word of the input schema (a field name, a type, a title).")
    ] = None,
    output: Annotated[str | None, typer.Option(help="A word of the output schema or of the named outputs.")] = None,
    status: Annotated[str, typer.Option(help="active, paused, retired or any.")] = "active",
    limit: Annotated[int, typer.Option(min=1, max=100, help="Results per page.")] = 20,
    cursor: Annotated[str | None, typer.Option(help="Start after this model id (the next page of a search).")] = None,
    url: Annotated[
        str | None, typer.Option(help="Ask this daemon (http://host:port) instead of reading the chain and IPFS.")
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the page as JSON.")] = False,
    rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
    deployments_dir: DeploymentsDirOption = None,
    store: StoreOption = StoreKind.LOCAL,
    api: ApiOption = None,
    data_dir_: DataDirOption = None,
) -> None:
    """Search the catalog: models whose verified metadata and price match, in model-id order.

    A model whose metadata is missing or does not match its CID shows as unverified, and only in
    searches that filter on nothing its metadata says (words, tags, schemas)."""
    params: dict[str, Any] = {"q": query, "tag": tag or [], "input": input_, "output": output, "status": status,
                              "limit": str(limit), "cursor": cursor,
                              "min_price": _units(min_price, "--min-price"),
                              "max_price": _units(max_price, "--max-price")}
    if url is not None:
        page = _ask_daemon(url, {name: value for name, value in params.items() if value is not None})
    else:
        page = _read_chain(params, rpc_url, deployments_dir, store, api, data_dir_)
    if json_:
        typer.echo(json.dumps(page, indent=2))
        return
    _print(page)


def _units(tokens: str | None, what: str) -> str | None:
    return None if tokens is None else str(parse_tokens(tokens, what=what, allow_zero=True, maximum=2**256 - 1))


def _read_chain(
    params: dict[str, Any], rpc_url: str, deployments_dir: Path | None, store: StoreKind, api: str | None,
    directory: Path | None,
) -> dict[str, Any]:
    from marketplace.cli.account import open_session
    from marketplace.discovery.search import SearchQuery

    query = SearchQuery.parse(params)  # before any RPC: a bad filter is one line at once
    session = open_session(rpc_url, None, deployments_dir=deployments_dir, need_account=False)
    return search_catalog(session.market, query, store, api, directory)


def search_catalog(market: Market, query: SearchQuery, store: StoreKind, api: str | None,
                   directory: Path | None) -> dict[str, Any]:
    """One page of `query` over the registry on chain, each model's metadata read from IPFS (verified)."""
    from marketplace.cli.consumer import read_metadata
    from marketplace.discovery.search import CatalogEntry, entry_json
    from marketplace.discovery.search import search as find

    entries = [
        CatalogEntry(listed.info, *read_metadata(listed.metadata_cid, store, api, directory))
        for listed in market.catalog().models.values()
        if listed.info.status in query.statuses
    ]
    page = find(entries, query)
    return {"items": [entry_json(entry) for entry in page.items], "total": page.total,
            "next_cursor": page.next_cursor}


def _ask_daemon(url: str, params: dict[str, Any]) -> dict[str, Any]:
    import httpx

    from marketplace.discovery.errors import SearchFailed

    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--url must be an http:// or https:// URL, got {url!r}")
    try:
        response = httpx.get(url.rstrip("/") + "/v1/search", params=params, timeout=_TIMEOUT)
    except httpx.HTTPError as error:
        raise SearchFailed(f"cannot reach {url}: {error}") from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("items"), list):
        detail = body.get("detail") if isinstance(body, dict) else None
        raise SearchFailed(f"{url} answered {response.status_code}: {detail or response.text[:200]}")
    return body


def _print(page: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table("model", "name", "tags", "price (MKT)", "status", "metadata")
    for item in page["items"]:
        table.add_row(str(item["model_id"]), str(item.get("name") or "?"), ", ".join(map(str, item.get("tags") or [])),
                      format_tokens(int(item["price"])), str(item["status"]),
                      "verified" if item.get("verified") else "unverified")
    if not page["items"]:
        out.print("no model matches")
        return
    out.print(table)
    summary = f"{len(page['items'])} of {page['total']}"
    if page.get("next_cursor"):
        summary += f"; next page: --cursor {page['next_cursor']}"
    out.print(summary)
