"""The three pages (catalog, model card, provider dashboard) as HTML, from `WebCatalog` values.

Every provider- or chain-supplied string reaches the HTML through `render`/`table`, which escape
it; markup built here is marked `Html` only after its parts were escaped.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from marketplace.chain.contracts import Offer
from marketplace.chain.market import ArtifactVersion, format_tokens
from marketplace.tokens import format_token_prices
from marketplace.web.catalog import ExpiringChannel, ModelEntry
from marketplace.web.render import Html, escape, render, table

__all__ = ["Earnings", "Site", "catalog_page", "dashboard_page", "model_page", "not_found_page"]


@dataclass(frozen=True)
class Site:
    """What every page needs: links (paths under the app's root) and where the chain is."""

    home: str
    dashboard: str
    docs: str
    css: str
    model_href: Callable[[str], str]  # model hex id -> its page
    infer_url: Callable[[str], str]  # model hex id -> absolute URL of its paid route
    chain_id: int
    block: int
    stale: bool = False  # the version history and offers could not be refreshed


def _page(site: Site, title: str, body: Html) -> Html:
    notice = Html('<p class="notice">The chain node does not answer: version history and license offers '
                  "are as last read.</p>") if site.stale else Html("")
    return render("layout.html", title=title, css=site.css, home=site.home, dashboard=site.dashboard,
                  docs=site.docs, chain_id=site.chain_id, block=site.block, notice=notice, body=body)


# --- formatting -------------------------------------------------------------------------------


def _tokens(units: int) -> str:
    return format_tokens(units)


def _whole_tokens(value: float) -> str:
    """A float count of whole tokens (Prometheus counters) to at most 9 decimals."""
    text = f"{Decimal(repr(value)):.9f}".rstrip("0").rstrip(".")
    return text or "0"


def _duration(seconds: int) -> str:
    if seconds <= 0:
        return "perpetual"
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes = rest // 60
    parts = [f"{days} d" if days else "", f"{hours} h" if hours else "",
             f"{minutes} min" if minutes and not days else ""]
    return " ".join(part for part in parts if part) or f"{seconds} s"


def _time_left(seconds: int) -> Html:
    if seconds <= 0:
        return Html(f'<span class="expired">expired {escape(_duration(-seconds))} ago</span>' if seconds else
                    '<span class="expired">expires now</span>')
    return Html(f'<span class="soon">{escape(_duration(seconds))}</span>')


def _short(address: str) -> Html:
    return Html(f'<code title="{escape(address)}">{escape(address[:8])}…{escape(address[-6:])}</code>')


def _code(text: object) -> Html:
    return Html(f"<code>{escape(text)}</code>")


def _link(href: str, text: object) -> Html:
    return Html(f'<a href="{escape(href)}">{escape(text)}</a>')


def _json_block(value: Any) -> Html:
    if value is None:
        return Html('<p class="empty">not given by the provider</p>')
    return Html(f'<pre class="json">{escape(json.dumps(value, indent=2, sort_keys=False, ensure_ascii=False))}</pre>')


def _versions(versions: Iterable[ArtifactVersion]) -> Html:
    rows = [(version.version, _code(version.cid), version.block_number, _code(version.transaction_hash[:18] + "…"))
            for version in sorted(versions, key=lambda item: item.version, reverse=True)]
    return table(("version", "artifact CID", "block", "transaction"), rows, empty="no artifact published yet")


def _offers(offers: Iterable[Offer]) -> Html:
    rows = [
        (offer.offer_id, offer.tier, f"{_tokens(offer.price)} MKT" if offer.price else "free",
         _duration(offer.duration), "yes" if offer.transferable else "no",
         f"{offer.sold} / {offer.max_supply}" if offer.max_supply else f"{offer.sold} / unlimited",
         f"{offer.royalty_bps / 100:g} %", "on sale" if offer.active else "withdrawn")
        for offer in offers
    ]  # fmt: skip
    return table(("offer", "tier", "price", "duration", "transferable", "sold / supply", "royalty", "state"), rows,
                 empty="no license offers")


def _description(entry: ModelEntry) -> str:
    if entry.metadata is None:
        return entry.metadata_problem or "no metadata"
    return entry.metadata.description or "no description"


# --- pages ------------------------------------------------------------------------------------


def catalog_page(site: Site, entries: list[ModelEntry]) -> Html:
    cards = [
        render("catalog_model.html", href=site.model_href(entry.model_hex), name=entry.name,
               status=entry.info.status.name.lower(), description=_description(entry),
               price=_tokens(entry.info.price), units=entry.info.price,
               token_prices=format_token_prices(entry.info.pricing), owner=entry.info.owner,
               payee=entry.info.payee, artifact_cid=str(entry.artifact_cid), version=entry.info.artifact_version,
               calls=entry.calls, version_count=len(entry.versions), versions=_versions(entry.versions),
               offer_count=len(entry.offers), offers=_offers(entry.offers),
               offers_open=Html(" open") if entry.offers else Html(""))
        for entry in entries
    ]  # fmt: skip
    count = f"{len(entries)} model" + ("" if len(entries) == 1 else "s")
    models = Html("".join(cards)) if cards else Html('<p class="empty">This daemon serves no model yet.</p>')
    return _page(site, "Catalog", render("catalog.html", count=count, models=models))


def model_page(site: Site, entry: ModelEntry, input_schema: Any) -> Html:
    metadata = entry.metadata
    example = metadata.example_input if metadata is not None else None
    body_text = json.dumps(example if example is not None else {}, separators=(",", ":"), ensure_ascii=False)
    curl = (f"curl -i -X POST {shlex.quote(site.infer_url(entry.model_hex))} \\\n"
            f"  -H 'content-type: application/json' \\\n  -d {shlex.quote(body_text)}\n"
            "# HTTP/1.1 402 Payment Required\n"
            "# payment-required: eyJ4NDAyVmVyc2lvbiI6Mi…  (base64 JSON: accepts[] ...)")
    cli = f"marketplace consumer call {entry.model_hex} --input {shlex.quote(body_text)}"
    outputs = (metadata.outputs if metadata is not None else {}) or {}
    body = render(
        "model.html", home=site.home, name=entry.name, status=entry.info.status.name.lower(),
        description=_description(entry), model_id=entry.model_hex, price=_tokens(entry.info.price),
        units=entry.info.price, token_prices=format_token_prices(entry.info.pricing), owner=entry.info.owner,
        payee=entry.info.payee, endpoint=entry.info.endpoint or "—",
        format=metadata.format if metadata is not None else "unknown", metadata_cid=str(entry.metadata_cid),
        artifact_cid=str(entry.artifact_cid), version=entry.info.artifact_version, calls=entry.calls,
        curl=curl, cli=cli, example=_json_block(example), schema=_json_block(input_schema),
        outputs=table(("output", "meaning"), sorted(outputs.items()), empty="not described"),
        versions=_versions(entry.versions), offers=_offers(entry.offers),
    )  # fmt: skip
    return _page(site, entry.name, body)


@dataclass(frozen=True)
class Earnings:
    """One served model's earnings: `entry` counts calls and revenue since the daemon started."""

    entry: ModelEntry
    claimed: int  # token units, claimed on chain from the model's channels
    unclaimed: int  # token units, vouchers in the ledger not yet claimed


def _channel_code(channel_id: int) -> Html:
    full = f"0x{channel_id:064x}"
    return Html(f'<code title="{escape(full)}">{escape(full[:14])}…</code>')


def dashboard_page(site: Site, account: str, now: int, earnings: list[Earnings], credit: list[tuple[int, Any, int]],
                   expiring: list[ExpiringChannel]) -> Html:
    """`credit`: (channel id, its ChannelInfo or None, unclaimed units) per channel holding unclaimed vouchers."""
    names = {item.entry.info.model_id: item.entry.name for item in earnings}
    rows = [
        (_link(site.model_href(item.entry.model_hex), item.entry.name), item.entry.calls,
         _whole_tokens(item.entry.revenue), _tokens(item.unclaimed), _tokens(item.claimed),
         _tokens(item.entry.info.price))
        for item in earnings
    ]  # fmt: skip
    credit_rows = [
        (_channel_code(channel_id), names.get(info.model_id, "another model") if info else "unknown channel",
         _short(info.payer) if info else "", _tokens(unclaimed), _time_left(info.expiry - now) if info else "")
        for channel_id, info, unclaimed in credit
    ]  # fmt: skip
    expiring_rows = [
        (_channel_code(item.info.channel_id), names.get(item.info.model_id, "another model"), _short(item.info.payer),
         _tokens(item.info.deposit), _tokens(item.info.claimed), _tokens(item.unclaimed), _time_left(item.seconds_left))
        for item in expiring
    ]  # fmt: skip
    body = render(
        "dashboard.html", account=account,
        calls=sum(item.entry.calls for item in earnings),
        revenue=_whole_tokens(sum(item.entry.revenue for item in earnings)),
        unclaimed=_tokens(sum(unclaimed for _, _, unclaimed in credit)),
        claimed=_tokens(sum(item.claimed for item in earnings)),
        earnings=table(("model", "calls", "revenue (MKT)", "unclaimed (MKT)", "claimed (MKT)", "price (MKT)"), rows,
                       empty="no model served"),
        credit=table(("channel", "model", "payer", "unclaimed (MKT)", "expires in"), credit_rows,
                     empty="nothing to claim: every accepted voucher is claimed"),
        expiring=table(("channel", "model", "payer", "deposit (MKT)", "claimed (MKT)", "unclaimed (MKT)", "expires in"),
                       expiring_rows, empty="no open channel expires within a day"),
    )  # fmt: skip
    return _page(site, "Provider dashboard", body)


def not_found_page(site: Site, detail: str) -> Html:
    return _page(site, "Not found", render("not_found.html", detail=detail, home=site.home))
