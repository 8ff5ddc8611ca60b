"""`marketplace consumer limits` and `marketplace consumer proxy`: what you may spend, and a local
server that pays for your programs (an OpenAI client included) within it. Registered on the
`consumer` app; the HTTP and chain stacks are imported inside the commands."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Annotated

import typer

from marketplace.cli.account import (
    AccountOption,
    DeploymentsDirOption,
    RpcUrlOption,
    channel_id_arg,
    err,
    open_session,
    out,
)
from marketplace.cli.trial import TrialTokenOption, read_trial_tokens
from marketplace.config import DEFAULT_RPC_URL
from marketplace.errors import ConfigError
from marketplace.tokens import format_tokens, parse_tokens
from marketplace.types import SCHEMES

if TYPE_CHECKING:
    from marketplace.client import SpendingBook, SpendingLimits

__all__ = ["PerCallOption", "PerDayOption", "TotalOption", "limits", "limits_of", "proxy"]

PerCallOption = Annotated[str | None, typer.Option(
    "--per-call", help="Spending limit per call, in tokens (default: your `consumer limits`).")]
PerDayOption = Annotated[str | None, typer.Option(
    "--per-day", help="Spending limit per UTC day, over every process of this client (default: `consumer limits`).")]
TotalOption = Annotated[str | None, typer.Option(
    "--total", help="Spending limit in total, over every process of this client (default: `consumer limits`).")]


def _flags(per_call: str | None, per_day: str | None, total: str | None) -> SpendingLimits:
    from marketplace.client import SpendingLimits

    def parse(text: str | None, flag: str) -> int | None:
        return parse_tokens(text, what=flag, allow_zero=True) if text is not None else None

    return SpendingLimits(parse(per_call, "--per-call"), parse(per_day, "--per-day"), parse(total, "--total"))


def limits_of(book: SpendingBook, per_call: str | None, per_day: str | None, total: str | None) -> SpendingLimits:
    """The limits of one command: its flags over the stored defaults."""
    return _flags(per_call, per_day, total).over(book.defaults())


def _show(limit: int | None) -> str:
    return f"{format_tokens(limit)} MKT" if limit is not None else "none"


def limits(
    per_call: PerCallOption = None,
    per_day: PerDayOption = None,
    total: TotalOption = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove every default limit.")] = False,
) -> None:
    """Show what you spent today (UTC) and in total and your default spending limits; set them with the flags.

    The limits hold for `consumer call`, `consumer proxy` and any SDK client given `limits=` on this
    data dir's channel store: a payment that would pass one is not signed."""
    from marketplace.client import SpendingBook, SpendingLimits, default_store_path

    with SpendingBook(default_store_path()) as book:
        if clear:
            book.set_defaults(SpendingLimits())
        if per_call is not None or per_day is not None or total is not None:
            book.set_defaults(limits_of(book, per_call, per_day, total))
        defaults, (today, spent) = book.defaults(), book.spent()
    out.print(f"spent today {format_tokens(today)} MKT (limit {_show(defaults.per_day)}), "
              f"in total {format_tokens(spent)} MKT (limit {_show(defaults.total)}); "
              f"per call limit {_show(defaults.per_call)}")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def proxy(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8402,
    host: Annotated[str, typer.Option(help="Address to listen on (anyone who reaches it spends your tokens).")]
    = "127.0.0.1",
    daemon: Annotated[str | None, typer.Option(
        help="Forward everything to this daemon (default: the endpoint registered for the model a request names)."
    )] = None,
    scheme: Annotated[list[str] | None, typer.Option(
        help=f"How to pay, in order of preference: {', '.join(SCHEMES)} (default: trial, metered, channel: "
             "free trial calls while the daemon offers them, then your channel).")] = None,
    trial_token: TrialTokenOption = None,
    channel: Annotated[str | None, typer.Option(help="Pay from this channel (default: your best open one).")] = None,
    license_id: Annotated[int | None, typer.Option("--license", help="Pay with this license NFT (scheme license).")]
    = None,
    max_price: Annotated[str | None, typer.Option(help="Refuse to pay more than this per call, in tokens.")] = None,
    per_call: PerCallOption = None,
    per_day: PerDayOption = None,
    total: TotalOption = None,
    account: AccountOption = None,
    rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
    deployments_dir: DeploymentsDirOption = None,
) -> None:
    """Serve a local proxy that pays the daemon for your programs, within your spending limits.

    Point any HTTP client at it: `OpenAI(base_url="http://127.0.0.1:8402/v1", api_key="unused")`
    gets paid completions, streamed or not; `/v1/models/<id>/infer` works the same. What it cannot
    pay is answered as JSON (402 spending_limit_reached, 502 daemon_unreachable, ...); what you
    spend is logged on stderr."""
    import logging

    import uvicorn

    from marketplace.client import ChannelStore, PaymentAuth, SpendingBook
    from marketplace.client.proxy import create_proxy

    tokens = read_trial_tokens(trial_token or [])
    schemes = scheme or ["trial", "metered", "channel"]
    if unknown := [s for s in schemes if s not in SCHEMES]:
        raise ConfigError(f"--scheme must be among {', '.join(SCHEMES)}, got {', '.join(unknown)}")
    session = open_session(rpc_url, account, deployments_dir=deployments_dir)
    market = session.market
    assert market.account is not None
    store = ChannelStore()
    book = SpendingBook(store.path)
    chosen = limits_of(book, per_call, per_day, total)
    auth = PaymentAuth(market.account, store=store, schemes=schemes, license_id=license_id,
                       channel_id=channel_id_arg(channel) if channel else None, trial_tokens=tokens,
                       limits=chosen, spending=book,
                       max_price=parse_tokens(max_price, what="--max-price", allow_zero=True) if max_price else None)

    def endpoint_of(model_id: bytes) -> str:
        endpoint = market.catalog().model(model_id, session.chain_id).info.endpoint
        if not endpoint:
            raise ConfigError(f"model 0x{model_id.hex()} names no endpoint: pass --daemon URL")
        return endpoint

    loopback = _loopback(host)
    if not loopback:
        err.print(f"[bold red]warning:[/] listening on {host}: anyone who reaches it spends your tokens "
                  f"(limits: {_show(chosen.per_day)} a day, {_show(chosen.total)} in total)")
    allowed = frozenset(f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]")) if loopback else None
    app = create_proxy(auth, daemon=daemon, endpoint_of=endpoint_of, allowed_hosts=allowed)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    err.print(f"paying for {market.account.address} with {', '.join(schemes)} at http://{host}:{port} "
              f"(OpenAI base_url http://{host}:{port}/v1); limits: {_show(chosen.per_call)} per call, "
              f"{_show(chosen.per_day)} a day, {_show(chosen.total)} in total")
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        store.close()
        book.close()
