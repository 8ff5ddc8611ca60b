"""`marketplace license ...`: buy, list, show and transfer model licenses (ERC-721).

A valid license lets its holder call the model without paying per call
(`marketplace consumer call MODEL --scheme license`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from marketplace.cli.account import (
    AccountOption,
    DeploymentsDirOption,
    RpcUrlOption,
    format_duration,
    format_time,
    model_id_arg,
    open_session,
    out,
)
from marketplace.config import DEFAULT_RPC_URL
from marketplace.errors import ConfigError
from marketplace.tokens import format_tokens, parse_tokens

if TYPE_CHECKING:  # the chain stack is imported by the commands that use it
    from marketplace.chain.contracts import License, Offer
    from marketplace.chain.market import Market

__all__ = ["app"]

app = typer.Typer(
    help="Model licenses (ERC-721): their holder calls the model without paying per call.",
    no_args_is_help=True,
)

LicenseArgument = Annotated[int, typer.Argument(metavar="LICENSE", min=1, help="License id.")]


def _expiry(license_: License) -> str:
    return format_time(license_.expires_at) if license_.expires_at else "never"


def _choose(offers: list[Offer], offer_id: int | None, tier: str | None, model: str) -> Offer:
    if offer_id is not None:
        chosen = [o for o in offers if o.offer_id == offer_id]
    else:
        chosen = [o for o in offers if o.active and (tier is None or o.tier == tier)]
    if not chosen:
        what = f"offer {offer_id}" if offer_id is not None else f"active offer{f' of tier {tier}' if tier else ''}"
        raise ConfigError(f"model {model} has no {what} (see `marketplace license offers {model}`)")
    if len(chosen) > 1:
        tiers = ", ".join(f"{o.offer_id} ({o.tier})" for o in chosen)
        raise ConfigError(f"model {model} has several offers: {tiers}; pass --offer ID or --tier TIER")
    return chosen[0]


@app.command()
def offers(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model id (0x + 64 hex digits).")],
    rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
    deployments_dir: DeploymentsDirOption = None,
) -> None:
    """The license offers of a model."""
    from rich.table import Table

    market = open_session(rpc_url, None, deployments_dir=deployments_dir, need_account=False).market
    table = Table("offer", "tier", "price (MKT)", "lasts", "sold", "transferable", "active",
                  title=f"license offers of {model}")
    for offer in market.licenses.offers_for(model_id_arg(model)):
        table.add_row(str(offer.offer_id), offer.tier, format_tokens(offer.price),
                      format_duration(offer.duration) if offer.duration else "forever",
                      f"{offer.sold}/{offer.max_supply or '∞'}", "yes" if offer.transferable else "no",
                      "yes" if offer.active else "no")
    out.print(table if table.row_count else f"model {model} has no license offer")


@app.command()
def buy(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model id (0x + 64 hex digits).")],
    offer: Annotated[int | None, typer.Option(help="The offer to buy (default: the model's only active one).")] = None,
    tier: Annotated[str | None, typer.Option(help="Choose the active offer of this tier.")] = None,
    recipient: Annotated[str | None, typer.Option(help="Who receives the license (default: you).")] = None,
    max_price: Annotated[
        str | None,
        typer.Option(help="Pay at most this many tokens, e.g. the price `license offers` showed you "
                          "(default: the offer's price as read now); a higher price reverts."),
    ] = None,
    account: AccountOption = None,
    rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
    deployments_dir: DeploymentsDirOption = None,
) -> None:
    """Buy a license of a model (approving its price first if needed); prints the license id.

    The purchase is bound to the price shown: if the seller raised it meanwhile, it reverts with
    LicensesPriceAboveMax and nothing is paid."""
    model_id = model_id_arg(model)
    cap = parse_tokens(max_price, what="--max-price", allow_zero=True) if max_price is not None else None
    market = open_session(rpc_url, account, deployments_dir=deployments_dir).market
    chosen = _choose(market.licenses.offers_for(model_id), offer, tier, model)
    agreed = chosen.price if cap is None else cap
    sent = market.licenses.buy(chosen.offer_id, recipient, max_price=agreed)
    bought = market.licenses.license_of(sent.value)
    out.print(f"bought license [bold]{sent.value}[/] of model {model}: tier {chosen.tier}, "
              f"{format_tokens(chosen.price)} MKT, expires {_expiry(bought)}")
    out.print(f"  tx         {sent.transaction_hash} ({len(sent.receipts)} transaction(s), gas {sent.gas_used:,})")


@app.command("list")
def list_(
    account: AccountOption = None,
    rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
    deployments_dir: DeploymentsDirOption = None,
) -> None:
    """The licenses your account holds."""
    from rich.table import Table

    market = open_session(rpc_url, account, deployments_dir=deployments_dir).market
    held = market.licenses.licenses_of(market.address)
    if not held:
        out.print(f"{market.address} holds no license")
        return
    table = Table("license", "model", "tier", "expires", "transferable", "valid", title=f"licenses of {market.address}")
    for item in held:
        table.add_row(str(item.license_id), "0x" + bytes(item.model_id).hex(), _tier(market, item), _expiry(item),
                      "yes" if item.transferable else "no", "yes" if item.valid else "no")
    out.print(table)


def _tier(market: Market, item: License) -> str:
    return market.licenses.offer(item.offer_id).tier


@app.command()
def show(
    license_id: LicenseArgument,
    rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
    deployments_dir: DeploymentsDirOption = None,
) -> None:
    """One license: holder, model, offer, expiry, validity."""
    market = open_session(rpc_url, None, deployments_dir=deployments_dir, need_account=False).market
    item = market.licenses.license_of(license_id)
    out.print(f"[bold]license {license_id}[/]")
    for label, value in (
        ("holder", item.owner), ("model", "0x" + bytes(item.model_id).hex()),
        ("offer", f"{item.offer_id} (tier {_tier(market, item)})"), ("expires", _expiry(item)),
        ("transferable", "yes" if item.transferable else "no"), ("valid", "yes" if item.valid else "no"),
    ):
        out.print(f"  {label:<13}{value}")


@app.command()
def transfer(
    license_id: LicenseArgument,
    to: Annotated[str, typer.Argument(help="The new holder's address.")],
    account: AccountOption = None,
    rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
    deployments_dir: DeploymentsDirOption = None,
) -> None:
    """Give a (transferable) license to another address."""
    market = open_session(rpc_url, account, deployments_dir=deployments_dir).market
    sent = market.licenses.transfer(license_id, to)
    out.print(f"license {license_id} now belongs to {to}")
    out.print(f"  tx         {sent.transaction_hash} (gas {sent.gas_used:,})")
