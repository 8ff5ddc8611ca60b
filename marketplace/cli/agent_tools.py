"""The marketplace as tools for an agent (`marketplace mcp` serves them): search the catalog, read a
model's schema and price, call paid models and see what was spent, within the user's spending limits.

    tools = Toolbox(session, ChannelStore(), SpendingLimits(per_call=..., total=...), daemon=None)
    tools.call_model("0x...", {"inputs": [[5.1, 3.5, 1.4, 0.2]]})   # {"output", "charge", "spending"}

Every payment goes through the SDK's `PaymentAuth` with the limits given here and the durable
`SpendingBook` of the channel store: a call the limits do not allow is refused before anything is
signed (`SpendingLimitReached`). Errors are `MarketplaceError`s with a one-line message (the MCP
layer hands them to the agent as tool errors); the blocking work (chain, IPFS, HTTP) runs in the
caller's thread.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marketplace.errors import ConfigError
from marketplace.ipfs import StoreKind
from marketplace.tokens import format_pricing, format_tokens, parse_tokens

if TYPE_CHECKING:
    from marketplace.chain.market import Catalog
    from marketplace.cli.account import Session
    from marketplace.client import CallResult, ChannelStore, MarketplaceClient, SpendingLimits

__all__ = ["Toolbox"]

_SCHEMES = ("trial", "channel", "metered")  # a flat model is paid from a channel, a text model metered


def _model(model_id: str) -> bytes:
    from marketplace.cli.account import model_id_arg

    return bytes(model_id_arg(model_id))


def _limit(amount: int | None) -> str | None:
    return None if amount is None else format_tokens(amount)


def _summary(item: dict[str, Any], catalog: Catalog) -> dict[str, Any]:
    """A search result for an agent: prices in MKT (per token too), no CIDs."""
    listed = catalog.models.get(bytes.fromhex(str(item["model_id"])[2:]))
    keep = ("model_id", "name", "description", "tags", "status", "endpoint", "input_schema", "output_schema",
            "outputs", "verified", "metadata_problem")
    out = {key: item[key] for key in keep if key in item}
    out["price"] = format_tokens(int(item["price"]))
    if listed is not None:
        out["pricing"] = format_pricing(listed.info.pricing)
    return out


class Toolbox:
    """The tools of one agent session, paying as `session`'s account (see the module doc)."""

    def __init__(self, session: Session, store: ChannelStore, limits: SpendingLimits, *, daemon: str | None = None,
                 ipfs: StoreKind = StoreKind.LOCAL, api: str | None = None, data_dir: Path | None = None) -> None:
        from marketplace.client import PaymentAuth, SpendingBook

        assert session.market.account is not None
        self.session, self.store, self.limits, self.daemon = session, store, limits, daemon
        self._ipfs = (ipfs, api, data_dir)
        self.book = SpendingBook(store.path)
        self.auth = PaymentAuth(session.market.account, store=store, schemes=_SCHEMES, limits=limits,
                                spending=self.book)
        self._clients: dict[str, MarketplaceClient] = {}
        self._lock = threading.Lock()
        self.charged = 0  # what this session's paid calls were charged, in token units

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self.book.close()

    # --- the tools ---------------------------------------------------------------------------------

    def search_models(self, query: str = "", tag: str | None = None, max_price: str | None = None) -> dict[str, Any]:
        """Active models whose metadata matches every word of `query` (and `tag`), priced at most `max_price`."""
        from marketplace.cli.search import search_catalog
        from marketplace.discovery.search import SearchQuery

        params: dict[str, Any] = {"q": query or None, "tag": [tag] if tag else [], "limit": "20",
                                  "max_price": str(parse_tokens(max_price, what="max_price", allow_zero=True))
                                  if max_price else None}
        page = search_catalog(self.session.market, SearchQuery.parse(params), *self._ipfs)
        catalog = self.session.market.catalog()
        return {"models": [_summary(item, catalog) for item in page["items"]], "total": page["total"]}

    def describe_model(self, model_id: str) -> dict[str, Any]:
        """Name, description, input and output schemas, example input, prices and endpoint of one model."""
        from marketplace.cli.consumer import read_metadata
        from marketplace.discovery.search import CatalogEntry, entry_json

        catalog = self.session.market.catalog()
        listed = catalog.model(_model(model_id), self.session.chain_id)
        metadata, problem = read_metadata(listed.metadata_cid, *self._ipfs)
        described = _summary(entry_json(CatalogEntry(listed.info, metadata, problem)), catalog)
        described["example_input"] = metadata.example_input if metadata is not None else None
        return described

    def call_model(self, model_id: str, input: dict[str, Any] | str) -> dict[str, Any]:
        """Pay for one call of `model_id` on `input` (a JSON object, or its text); the model's answer,
        the charge and the spending so far."""
        body = json.loads(input) if isinstance(input, str) else input  # json errors: see server.py
        if not isinstance(body, dict):
            raise ConfigError("input must be a JSON object (see describe_model's input_schema)")
        model = _model(model_id)
        return self._paid(self._client(model).call(model, body))

    def complete(self, model_id: str, prompt: str, max_tokens: int = 256) -> dict[str, Any]:
        """A chat completion of a text model (priced per token, paid `metered`): its text, the charge."""
        model = _model(model_id)
        if max_tokens < 1:
            raise ConfigError(f"max_tokens must be at least 1, got {max_tokens}")
        body = {"model": "0x" + model.hex(), "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": prompt}]}
        result = self._client(model).call(model, body, path="/v1/chat/completions")
        answer = self._paid(result)
        choices = result.output.get("choices") if isinstance(result.output, dict) else None
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            answer["text"] = (choices[0].get("message") or {}).get("content")
        return answer

    def spending(self) -> dict[str, Any]:
        """What this consumer spent today (UTC) and in total (every process), this session, and the limits."""
        today, total = self.book.spent()
        return {"unit": "MKT", "spent_today": format_tokens(today), "spent_total": format_tokens(total),
                "spent_this_session": format_tokens(self.charged),
                "limits": {"per_call": _limit(self.limits.per_call), "per_day": _limit(self.limits.per_day),
                           "total": _limit(self.limits.total)}}

    # --- helpers -----------------------------------------------------------------------------------

    def _client(self, model: bytes) -> MarketplaceClient:
        from marketplace.client import MarketplaceClient

        url = self.daemon or self.session.market.catalog().model(model, self.session.chain_id).info.endpoint
        if not url:
            raise ConfigError(f"model 0x{model.hex()} names no endpoint: start `marketplace mcp --daemon URL`")
        account = self.session.market.account
        assert account is not None
        with self._lock:
            if url not in self._clients:
                self._clients[url] = MarketplaceClient(url.rstrip("/"), account, auth=self.auth)
            return self._clients[url]

    def _paid(self, result: CallResult) -> dict[str, Any]:
        charge = int(result.receipt["message"]["amount"])
        with self._lock:
            self.charged += charge
        return {"output": result.output, "charge": format_tokens(charge), "scheme": result.scheme,
                "spending": self.spending()}
