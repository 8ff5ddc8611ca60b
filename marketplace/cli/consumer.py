"""`marketplace consumer ...`: find models, open payment channels, call models, get your money back.

The catalog comes from chain events (and each model's metadata from IPFS when the store has it).
Channels opened here are remembered in the SDK's channel store (`<data dir>/client/channels.db`),
which `consumer call` pays from; receipts of calls go to `<data dir>/receipts/`. A daemon claiming
more of a channel than this client ever signed is a dispute that `consumer resolve` settles.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from marketplace.chain.errors import InsufficientFunds
from marketplace.chain.views import ModelStatus
from marketplace.cli.account import (
    AccountOption,
    DeploymentsDirOption,
    RpcUrlOption,
    channel_id_arg,
    err,
    format_duration,
    format_time,
    model_id_arg,
    open_session,
    out,
    parse_duration,
    read_json_argument,
)
from marketplace.cli.ipfs import ApiOption, DataDirOption, StoreOption
from marketplace.cli.spend import PerCallOption, PerDayOption, TotalOption, limits, limits_of, proxy
from marketplace.cli.trial import TrialTokenOption, read_trial_tokens
from marketplace.config import DEFAULT_RPC_URL, data_dir
from marketplace.errors import ConfigError
from marketplace.ipfs import DagReader, StoreKind, open_store
from marketplace.ipfs.errors import ArtifactError
from marketplace.tokens import format_pricing, format_tokens, parse_tokens
from marketplace.types import SCHEMES, TokenAmount

if TYPE_CHECKING:  # the chain and HTTP stacks are imported by the commands that use them
    from marketplace.chain.contracts import ChannelTerms
    from marketplace.chain.market import Catalog, ListedModel, Market
    from marketplace.client.store import ChannelRecord, DaemonView
    from marketplace.ipfs import CID
    from marketplace.metadata import ModelMetadata

__all__ = ["app", "load_metadata", "read_metadata"]

app = typer.Typer(
    help="For consumers: browse models, open payment channels (one transaction), call models paying "
    "per call with vouchers, licenses or EIP-3009 transfers, and reclaim what you did not spend.",
    no_args_is_help=True,
)

app.command()(limits)
app.command()(proxy)

ModelArgument = Annotated[str, typer.Argument(metavar="MODEL", help="Model id (0x + 64 hex digits).")]
ChannelArgument = Annotated[str, typer.Argument(metavar="CHANNEL", help="Channel id (0x-hex or decimal).")]


def read_metadata(
    cid: CID, kind: StoreKind, api: str | None, directory: Path | None
) -> tuple[ModelMetadata | None, str | None]:
    """The metadata document `cid` from IPFS (every block re-hashed against its CID), or None and why."""
    from marketplace.metadata import parse_metadata

    try:
        store_dir = (directory or data_dir()) / "ipfs"
        with open_store(kind, api=api, data_dir=store_dir) as store, DagReader(store) as reader:
            return parse_metadata(b"".join(reader.cat(cid))), None
    except (ArtifactError, ConfigError, OSError) as error:
        return None, f"metadata {cid} unavailable: {error}"


def load_metadata(model: ListedModel, kind: StoreKind, api: str | None, directory: Path | None) -> ModelMetadata | None:
    """The model's metadata from IPFS, or None when the store does not have it (or it is invalid)."""
    return read_metadata(model.metadata_cid, kind, api, directory)[0]


def _status(model: ListedModel) -> str:
    return model.info.status.name.lower()


@app.command()
def models(
    search: Annotated[str | None, typer.Option(help="Only models whose name, description or id contain TEXT.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Include paused and retired models.")] = False,
    rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
    deployments_dir: DeploymentsDirOption = None,
    store: StoreOption = StoreKind.LOCAL,
    api: ApiOption = None,
    data_dir_: DataDirOption = None,
) -> None:
    """The catalog: every model listed on chain, with its metadata from IPFS when available."""
    from rich.table import Table

    session = open_session(rpc_url, None, deployments_dir=deployments_dir, need_account=False)
    catalog = session.market.catalog()
    table = Table("model", "name", "price (MKT)", "version", "status", "endpoint",
                  title=f"models on chain {session.chain_id}")
    needle = (search or "").lower()
    shown = 0
    for listed in sorted(catalog.models.values(), key=lambda m: m.versions[0].block_number if m.versions else 0):
        if not all_ and listed.info.status is not ModelStatus.ACTIVE:
            continue
        metadata = load_metadata(listed, store, api, data_dir_)
        name = metadata.name if metadata else "?"
        text = " ".join(["0x" + listed.model_id.hex(), name, metadata.description if metadata else "",
                         listed.info.endpoint]).lower()
        if needle and needle not in text:
            continue
        table.add_row("0x" + listed.model_id.hex(), name, format_pricing(listed.info.pricing, short=True),
                      str(listed.info.artifact_version), _status(listed), listed.info.endpoint or "-")
        shown += 1
    out.print(table if shown else "no model matches" if needle else "no model is listed yet")


@app.command()
def show(
    model: ModelArgument,
    rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
    deployments_dir: DeploymentsDirOption = None,
    store: StoreOption = StoreKind.LOCAL,
    api: ApiOption = None,
    data_dir_: DataDirOption = None,
) -> None:
    """One model: price, payee, endpoint, every artifact version, its metadata and license offers."""
    from rich.table import Table

    session = open_session(rpc_url, None, deployments_dir=deployments_dir, need_account=False)
    market = session.market
    listed = market.catalog().model(model_id_arg(model), session.chain_id)
    info = listed.info
    metadata = load_metadata(listed, store, api, data_dir_)
    out.print(f"[bold]model 0x{info.model_id.hex()}[/]  {metadata.name if metadata else ''}")
    for label, value in (
        ("status", _status(listed)), ("price", format_pricing(info.pricing)), ("owner", info.owner),
        ("payee", info.payee), ("endpoint", info.endpoint or "-"), ("metadata", str(listed.metadata_cid)),
        ("artifact", f"{listed.artifact_cid} (version {info.artifact_version})"),
    ):
        out.print(f"  {label:<11}{value}")
    versions = Table("version", "artifact CID", "block", "transaction", title="artifact versions")
    for version in listed.versions:
        versions.add_row(str(version.version), str(version.cid), str(version.block_number), version.transaction_hash)
    out.print(versions)
    if metadata is None:
        out.print(f"metadata {listed.metadata_cid} is not in the {store.value} store")
    else:
        out.print(f"  description  {metadata.description or '-'}")
        if metadata.input_schema is not None:
            out.print("  input schema " + json.dumps(metadata.input_schema))
        if metadata.example_input is not None:
            out.print("  example      " + json.dumps(metadata.example_input))
    offers = market.licenses.offers_for(info.model_id)
    if offers:
        table = Table("offer", "tier", "price (MKT)", "lasts", "sold", "transferable", "active", title="license offers")
        for offer in offers:
            table.add_row(str(offer.offer_id), offer.tier, format_tokens(offer.price),
                          format_duration(offer.duration) if offer.duration else "forever",
                          f"{offer.sold}/{offer.max_supply or '∞'}", "yes" if offer.transferable else "no",
                          "yes" if offer.active else "no")
        out.print(table)


@app.command("open-channel")
def open_channel(
    model: ModelArgument,
    deposit: Annotated[str, typer.Option(help="Tokens to escrow, e.g. 5.")],
    expires: Annotated[
        str, typer.Option(help="Lifetime: 7d, 12h, ... (the unspent deposit is yours after it).")
    ] = "7d",
    signer: Annotated[
        str | None, typer.Option(help="Address allowed to sign vouchers (a hot key) (default: the account).")
    ] = None,
    payer_wallet: Annotated[
        str | None, typer.Option(help="A smart-contract wallet the account owns pays: it funds (and later "
                                      "reclaims) the channel through its execute(address,uint256,bytes); "
                                      "vouchers are signed by --signer, default the account.")
    ] = None,
    account: AccountOption = None,
    rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
    deployments_dir: DeploymentsDirOption = None,
) -> None:
    """Open a payment channel to a model's payee in ONE transaction (an ERC-2612 permit signed here),
    or, with --payer-wallet, in two sent through the wallet (approve, open)."""
    from web3 import Web3

    from marketplace.chain.contracts import ChannelTerms
    from marketplace.chain.wallet import SmartWallet
    from marketplace.client import ChannelRecord, ChannelStore

    for option, value in (("--payer-wallet", payer_wallet), ("--signer", signer)):
        if value is not None and not Web3.is_address(value):
            raise ConfigError(f"{option} must be a 0x-prefixed 20-byte hex address, got {value!r}")
    model_id, units = model_id_arg(model), parse_tokens(deposit, what="--deposit")
    lifetime = parse_duration(expires, what="--expires")
    session = open_session(rpc_url, account, deployments_dir=deployments_dir)
    market = session.market
    listed = market.catalog().model(model_id, session.chain_id)
    if listed.info.status is not ModelStatus.ACTIVE:
        raise ConfigError(f"model {model} is {_status(listed)}: no channel opened")
    wallet = SmartWallet(market, payer_wallet) if payer_wallet is not None else None
    payer = wallet.address if wallet is not None else market.address
    balance = market.token.balance(payer)
    if balance < units:
        raise InsufficientFunds(payer, units, balance, what=f"a deposit of {deposit} MKT (token units)")
    terms = ChannelTerms.new(payer, listed.info.payee, model_id, signer=signer or market.address)
    expiry = market.now() + lifetime
    sent = (market.channels.open(terms, units, expiry, via=wallet) if wallet is not None
            else market.channels.open_with_permit(terms, units, expiry))
    with ChannelStore() as channels:
        channels.remember(ChannelRecord.opened(session.chain_id, market.channels.address, terms, units, expiry))
    out.print(f"opened channel [bold]0x{sent.value:064x}[/]")
    out.print(f"  model      {model}  ({format_pricing(listed.info.pricing)})")
    out.print(f"  deposit    {format_tokens(units)} MKT, expires {format_time(expiry)}")
    if wallet is not None:
        out.print(f"  payer      wallet {wallet.address}, vouchers signed by {terms.signer}")
    out.print(f"  tx         {sent.transaction_hash} ({len(sent.receipts)} transaction(s), gas {sent.gas_used:,})")


def _terms(market: Market, channel_id: int) -> ChannelTerms:
    from marketplace.client import ChannelStore

    with ChannelStore() as channels:
        record = channels.get(channel_id)
    return record.terms if record is not None else market.channels.terms_of(channel_id)


@app.command("top-up")
def top_up(
    channel: ChannelArgument,
    amount: Annotated[str, typer.Option(help="Tokens to add, e.g. 2.")],
    account: AccountOption = None,
    rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
    deployments_dir: DeploymentsDirOption = None,
) -> None:
    """Add tokens to a channel's deposit (an approval first, if the escrow may not take them yet);
    a channel a contract wallet pays is topped up through the wallet (`open-channel --payer-wallet`)."""
    from marketplace.chain.wallet import SmartWallet
    from marketplace.client import ChannelRecord, ChannelStore

    channel_id, units = channel_id_arg(channel), parse_tokens(amount, what="--amount")
    session = open_session(rpc_url, account, deployments_dir=deployments_dir)
    market = session.market
    terms = _terms(market, channel_id)
    sent = market.channels.top_up(channel_id, units, via=SmartWallet.paying(market, terms.payer))
    with ChannelStore() as channels:
        state = market.channels.get_channel(channel_id)
        channels.remember(ChannelRecord.opened(session.chain_id, market.channels.address, terms, sent.value,
                                               state.expiry))
    out.print(f"channel {channel}: deposit now {format_tokens(sent.value)} MKT")
    out.print(f"  tx         {sent.transaction_hash} ({len(sent.receipts)} transaction(s), gas {sent.gas_used:,})")


@app.command()
def extend(
    channel: ChannelArgument,
    expires: Annotated[str, typer.Option(help="New lifetime from now: 7d, 30d, ...")] = "7d",
    account: AccountOption = None,
    rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
    deployments_dir: DeploymentsDirOption = None,
) -> None:
    """Move a channel's expiry later (payer only; a contract wallet's channel through the wallet)."""
    from marketplace.chain.wallet import SmartWallet
    from marketplace.client import ChannelRecord, ChannelStore

    channel_id, lifetime = channel_id_arg(channel), parse_duration(expires, what="--expires")
    session = open_session(rpc_url, account, deployments_dir=deployments_dir)
    market = session.market
    terms = _terms(market, channel_id)
    expiry = market.now() + lifetime
    sent = market.channels.extend(terms, expiry, via=SmartWallet.paying(market, terms.payer))
    state = market.channels.get_channel(channel_id)
    with ChannelStore() as channels:
        channels.remember(ChannelRecord.opened(session.chain_id, market.channels.address, terms, state.deposit, expiry))
    out.print(f"channel {channel} now expires {format_time(expiry)}")
    out.print(f"  tx         {sent.transaction_hash} (gas {sent.gas_used:,})")


@app.command()
def call(
    model: ModelArgument,
    input_: Annotated[str, typer.Option("--input", help="Request body: JSON text, @file, or @- for stdin.")],
    max_price: Annotated[
        str | None, typer.Option(help="Refuse to pay more than this many tokens per call (nothing is signed) "
                                      "(default: the model's price on chain).")
    ] = None,
    daemon: Annotated[
        str | None, typer.Option(help="Daemon base URL (default: the model's endpoint on chain).")
    ] = None,
    scheme: Annotated[
        list[str] | None,
        typer.Option(help=f"How to pay, in order of preference: {', '.join(SCHEMES)} (default: trial, then "
                          "channel: free trial calls while the daemon offers them, then your channel)."),
    ] = None,
    trial_token: TrialTokenOption = None,
    channel: Annotated[str | None, typer.Option(help="Pay from this channel (default: your best open one).")] = None,
    receipts_dir: Annotated[
        Path | None, typer.Option(help="Where receipts go (default: the data dir's receipts/).")
    ] = None,
    per_call: PerCallOption = None,
    per_day: PerDayOption = None,
    total: TotalOption = None,
    payer_wallet: Annotated[
        str | None, typer.Option(help="With --scheme exact: the transfer is drawn from this smart-contract "
                                      "wallet (ERC-1271), which accepts the account's signature.")
    ] = None,
    account: AccountOption = None,
    rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
    deployments_dir: DeploymentsDirOption = None,
) -> None:
    """Call a model once, paying per call within your spending limits (`consumer limits`); print its
    output (stdout) and where the receipt was saved."""
    from web3 import Web3

    from marketplace.client import ChannelStore, MarketplaceClient, SpendingBook

    if payer_wallet is not None and not Web3.is_address(payer_wallet):
        raise ConfigError(f"--payer-wallet must be a 0x-prefixed 20-byte hex address, got {payer_wallet!r}")

    model_id, body = model_id_arg(model), read_json_argument(input_, "--input")
    tokens = read_trial_tokens(trial_token or [])
    schemes = scheme or ["trial", "channel"]
    unknown = [s for s in schemes if s not in SCHEMES]
    if unknown:
        raise ConfigError(f"--scheme must be among {', '.join(SCHEMES)}, got {', '.join(unknown)}")
    cap = parse_tokens(max_price, what="--max-price", allow_zero=True) if max_price is not None else None
    session = open_session(rpc_url, account, deployments_dir=deployments_dir)
    market = session.market
    if cap is None:  # a daemon asking more than the model's listed price is refused
        cap = TokenAmount(market.registry.get_model(model_id).price)
    url = daemon or _endpoint(market.catalog(), model_id, session.chain_id)
    license_id = None
    if "license" in schemes:
        license_id = market.licenses.valid_license_of(market.address, model_id)
        if license_id is None and schemes == ["license"]:
            raise ConfigError(f"{market.address} holds no valid license of model {model}: `marketplace license buy`")
    assert market.account is not None
    with ChannelStore() as channels, SpendingBook(channels.path) as book, MarketplaceClient(
        url, market.account, store=channels, channel_id=channel_id_arg(channel) if channel else None,
        schemes=[s for s in schemes if s != "license" or license_id is not None], license_id=license_id, max_price=cap,
        trial_tokens=tokens, payer_wallet=payer_wallet,
        limits=limits_of(book, per_call, per_day, total),
    ) as client:
        result = client.call(model_id, body)
    out.print_json(json.dumps(result.output))
    path = result.save(receipts_dir or data_dir() / "receipts")
    message = result.receipt["message"]
    paid = f"{format_tokens(int(message['amount']))} MKT by {result.scheme}"
    if result.scheme == "channel":
        paid += f" (channel total {format_tokens(int(message['cumulative']))} MKT)"
    if result.trial is not None:
        err.print(f"free trial call {result.trial[0]} of {result.trial[1]}; receipt saved to {path}")
    else:
        err.print(f"paid {paid}; receipt saved to {path}")


def _endpoint(catalog: Catalog, model_id: bytes, chain_id: int) -> str:
    endpoint = catalog.model(model_id, chain_id).info.endpoint
    if not endpoint:
        raise ConfigError(f"model 0x{model_id.hex()} names no endpoint: pass --daemon URL")
    return endpoint.rstrip("/")


@app.command()
def channels(
    account: AccountOption = None,
    rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
    deployments_dir: DeploymentsDirOption = None,
) -> None:
    """Your channels: deposit, what you signed, what the daemon says you used, what was claimed, expiry."""
    from rich.table import Table

    from marketplace.client import ChannelStore

    session = open_session(rpc_url, account, deployments_dir=deployments_dir)
    market = session.market
    catalog = market.catalog()
    now = market.now()
    table = Table("channel", "model", "deposit", "signed", "used", "claimed", "expires", "state",
                  title=f"channels of {market.address} (MKT)")
    mine = [c for c in catalog.channels.values() if c.payer.lower() == market.address.lower()]
    with ChannelStore() as store:
        for info in mine:
            local = store.get(info.channel_id)
            state = "reclaimed" if info.reclaimed else "expired" if info.expiry <= now else "open"
            if local is not None and local.dispute is not None:
                state += ", disputed (consumer resolve)"
            signed, used = ((format_tokens(local.signed), format_tokens(local.consumed)) if local is not None
                            else ("?", "?"))
            table.add_row(f"0x{info.channel_id:064x}", "0x" + info.model_id.hex()[:12] + "…",
                          format_tokens(info.deposit), signed, used, format_tokens(info.claimed),
                          format_time(info.expiry), state)
    out.print(table if mine else f"{market.address} has opened no channel")


@app.command()
def reclaim(
    channel: ChannelArgument,
    account: AccountOption = None,
    rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
    deployments_dir: DeploymentsDirOption = None,
) -> None:
    """After a channel expired: take back its unclaimed deposit and close it for good (a contract
    wallet's channel through the wallet, which gets the refund)."""
    from marketplace.chain.wallet import SmartWallet
    from marketplace.client import ChannelStore

    channel_id = channel_id_arg(channel)
    session = open_session(rpc_url, account, deployments_dir=deployments_dir)
    market = session.market
    terms = _terms(market, channel_id)
    sent = market.channels.reclaim(terms, via=SmartWallet.paying(market, terms.payer))
    with ChannelStore() as store:
        store.resync(channel_id, {"reclaimed": True})
    out.print(f"channel {channel} reclaimed: {format_tokens(sent.value)} MKT refunded to {terms.payer}")
    out.print(f"  tx         {sent.transaction_hash} (gas {sent.gas_used:,})")


@app.command()
def close(
    channel: ChannelArgument,
    daemon: Annotated[
        str | None, typer.Option(help="Daemon base URL (default: the channel's model endpoint on chain).")
    ] = None,
    account: AccountOption = None,
    rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
    deployments_dir: DeploymentsDirOption = None,
) -> None:
    """Close a channel now, before it expires: the daemon co-signs a payout of what you used, the
    provider is paid it and the rest of the deposit comes back to you, in one transaction."""
    from marketplace.client import ChannelStore
    from marketplace.client.close import request_close
    from marketplace.payments.eip712 import DOMAIN_VERSION, MARKETPLACE_DOMAIN_NAME, Domain

    channel_id = channel_id_arg(channel)
    session = open_session(rpc_url, account, deployments_dir=deployments_dir)
    market = session.market
    assert market.account is not None
    terms = _terms(market, channel_id)
    with ChannelStore() as store:
        record = store.get(channel_id)
    most = record.signed if record is not None else market.channels.get_channel(channel_id).deposit
    domain = Domain(MARKETPLACE_DOMAIN_NAME, DOMAIN_VERSION, session.chain_id, market.channels.address)
    url = daemon or _endpoint(market.catalog(), bytes(terms.model_id), session.chain_id)
    agreed = request_close(url, market.account, domain, terms, channel_id, most=most, now=market.now())
    sent = market.channels.close_cooperatively(terms, agreed.payout, agreed.deadline, agreed.signature)
    with ChannelStore() as store:
        store.resync(channel_id, {"reclaimed": True})
    out.print(f"channel {channel} closed: {format_tokens(agreed.payout)} MKT paid to {terms.payee}, "
              f"{format_tokens(sent.value)} MKT refunded to {terms.payer}")
    out.print(f"  tx         {sent.transaction_hash} (gas {sent.gas_used:,})")


def _figures(view: ChannelRecord | DaemonView) -> str:
    return (f"consumed {format_tokens(view.consumed)} MKT ({view.consumed} units), "
            f"authorized {format_tokens(view.authorized)} MKT ({view.authorized} units)")


@app.command()
def resolve(
    channel: ChannelArgument,
    accept_daemon_view: Annotated[bool, typer.Option(
        "--accept-daemon-view", help="The daemon's figures become yours (you paid from this channel elsewhere).",
    )] = False,
    keep_ours: Annotated[bool, typer.Option(
        "--keep-ours", help="Drop the daemon's figures; the next call checks them again.")] = False,
) -> None:
    """Show a channel's dispute (a daemon claiming more than you ever signed), or settle it."""
    from marketplace.client import ChannelStore

    if accept_daemon_view and keep_ours:
        raise ConfigError("choose one of --accept-daemon-view and --keep-ours")
    channel_id = channel_id_arg(channel)
    with ChannelStore() as store:
        record = store.get(channel_id)
        if record is None:
            raise ConfigError(f"channel {channel} is not in the channel store {store.path}")
        if accept_daemon_view:
            record = store.accept_view(channel_id)
            out.print(f"channel 0x{channel_id:064x}: the daemon's view is now yours")
        elif keep_ours:
            record = store.keep_own_view(channel_id)
            out.print(f"channel 0x{channel_id:064x}: the daemon's view is dropped; yours stands")
        else:
            out.print(f"channel 0x{channel_id:064x}")
    out.print(f"  signed     {format_tokens(record.signed)} MKT ({record.signed} units): the most you ever signed")
    out.print(f"  daemon     {_figures(record)} (as last heard, within your record)")
    if record.dispute is None:
        out.print("  no dispute")
        return
    out.print(f"  disputed   {_figures(record.dispute)} (what the daemon claims)")
    out.print(f"  settle it: `marketplace consumer resolve 0x{channel_id:064x} --accept-daemon-view` if you paid "
              "from this channel elsewhere, else `--keep-ours` (and stop using that daemon)")
