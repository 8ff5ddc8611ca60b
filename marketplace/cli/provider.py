"""`marketplace provider ...`: list models, publish new versions, set prices, sell licenses, earn.

Prices are in tokens (decimal, 18 decimals: 0.002). Every command that sends a transaction checks
what it can first (files, schema, price, that the call would not revert, gas), so a mistake costs
nothing; a transaction the chain refuses prints its decoded custom error.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any

import typer

from marketplace.cli.account import (
    AccountOption,
    DeploymentsDirOption,
    RpcUrlOption,
    Session,
    err,
    format_duration,
    model_id_arg,
    open_session,
    out,
    parse_duration,
    read_json_argument,
)
from marketplace.cli.ipfs import ApiOption, DataDirOption, StoreOption
from marketplace.cli.pricing import InputTokenOption, MaxOutputTokensOption, OutputTokenOption, token_pricing
from marketplace.cli.trial import trial_token
from marketplace.config import DEFAULT_RPC_URL, data_dir
from marketplace.errors import ConfigError
from marketplace.ipfs import (
    DEFAULT_PROFILE,
    PROFILES,
    StoreKind,
    add_path,
    open_store,
)
from marketplace.tokens import format_pricing, format_tokens, parse_tokens
from marketplace.types import ChannelId, TokenPricing

__all__ = ["app"]

app = typer.Typer(
    help="For providers: list models (artifact and metadata to IPFS, registration on chain), publish new "
    "versions, reprice, pause, retire, offer licenses, grant free trials, see earnings and claim them.",
    no_args_is_help=True,
)
app.command("trial-token")(trial_token)

ModelArgument = Annotated[str, typer.Argument(metavar="MODEL", help="Model id (0x + 64 hex digits).")]


def _store(kind: StoreKind, api: str | None, directory: Path | None) -> Any:
    if kind is StoreKind.GATEWAY:
        raise ConfigError("a gateway is read-only: import with --store local or --store kubo")
    return open_store(kind, api=api, data_dir=(directory or data_dir()) / "ipfs")


def _schema(path: Path, what: str = "input schema") -> dict[str, Any]:
    from jsonschema import SchemaError
    from jsonschema.validators import validator_for

    try:
        schema = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} does not exist") from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"{what} {path} is not JSON: {error}") from None
    if not isinstance(schema, dict):
        raise ConfigError(f"{what} {path} must be a JSON object (a JSON Schema)")
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as error:
        where = "/".join(str(part) for part in error.absolute_path) or "the top level"
        raise ConfigError(f"{what} {path} is not a valid JSON Schema at {where}: {error.message}") from None
    return schema


def _artifact(path: Path) -> Path:
    if not path.exists():
        raise ConfigError(f"model file {path} does not exist")
    return path


def _print_sent(sent: Any) -> None:
    out.print(f"  tx         {sent.transaction_hash} (gas {sent.gas_used:,})")


@app.command("list-model")
def list_model(
    path: Annotated[Path, typer.Argument(help="The model: an ONNX file, or any file or folder your server runs.")],
    name: Annotated[str, typer.Option(help="Short name shown in the catalog.")],
    price: Annotated[str, typer.Option(help="Price per call in tokens, e.g. 0.002.")],
    input_schema: Annotated[Path, typer.Option(help="JSON Schema (a file) of the request body.")],
    price_per_input_token: InputTokenOption = None,
    price_per_output_token: OutputTokenOption = None,
    max_output_tokens: MaxOutputTokensOption = None,
    description: Annotated[str, typer.Option(help="What the model does, its inputs and outputs.")] = "",
    endpoint: Annotated[str, typer.Option(help="Base URL of the daemon serving it (http://host:port).")] = "",
    payee: Annotated[str | None, typer.Option(help="Address paid for calls and licenses (default: you).")] = None,
    example_input: Annotated[
        str | None, typer.Option(help="An example request body: JSON text or @file (checked against the schema).")
    ] = None,
    format: Annotated[str | None, typer.Option(help="Artifact format (default: the file suffix, e.g. onnx).")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="A search tag, e.g. vision (repeatable).")] = None,
    output_schema: Annotated[Path | None, typer.Option(help="JSON Schema (a file) of the answer.")] = None,
    salt: Annotated[
        str | None, typer.Option(help="32-byte hex salt: the model id is derived from you and it (default: random).")
    ] = None,
    account: AccountOption = None,
    rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
    deployments_dir: DeploymentsDirOption = None,
    store: StoreOption = StoreKind.LOCAL,
    api: ApiOption = None,
    data_dir_: DataDirOption = None,
) -> None:
    """List a model: import PATH and its metadata into IPFS, register both CIDs on chain, print the model id.

    Checked before any transaction: the file exists, the schema is a valid JSON Schema, the price is
    above 0, the registration would not revert and your account can pay its gas. With per-token
    prices (a metered model, e.g. an LLM) a second transaction sets them right after."""
    from jsonschema.validators import validator_for  # these stacks are imported by the commands that use them
    from pydantic import ValidationError
    from web3 import Web3

    from marketplace.listing import GAS_PROBE_CID
    from marketplace.listing import list_model as publish_model
    from marketplace.metadata import TAG_RULE, ModelMetadata, is_tag

    artifact_path = _artifact(path)
    schema = _schema(input_schema)
    for bad in (text for text in tag or [] if not is_tag(text)):
        raise ConfigError(f"--tag {bad[:40]!r} is not a tag ({TAG_RULE})")
    units = parse_tokens(price, what="--price")
    metered = token_pricing(TokenPricing(units), price_per_input_token, price_per_output_token, max_output_tokens)
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"--endpoint must be an http:// or https:// URL, got {endpoint!r}")
    example = read_json_argument(example_input, "--example-input") if example_input is not None else None
    if example is not None:
        errors = sorted(validator_for(schema)(schema).iter_errors(example), key=lambda e: list(e.absolute_path))
        if errors:
            raise ConfigError(f"--example-input does not match the input schema: {errors[0].message}")
    try:
        metadata = ModelMetadata(name=name, description=description, input_schema=schema, example_input=example,
                                 format=format or (artifact_path.suffix.lstrip(".").lower() or "onnx"),
                                 tags=tag or None,
                                 output_schema=_schema(output_schema, "output schema") if output_schema else None)
    except ValidationError as error:
        raise ConfigError(f"invalid model metadata: {error.errors(include_input=False)[0]['msg']}") from None
    salt_bytes = _salt(salt)
    session = open_session(rpc_url, account, deployments_dir=deployments_dir)
    market = session.market
    payee_address = Web3.to_checksum_address(payee) if payee else market.address
    registry = market.registry
    market.require_gas(registry.register_fn(salt=salt_bytes, payee=payee_address, price=units, metadata=GAS_PROBE_CID,
                                            artifact=GAS_PROBE_CID, endpoint=endpoint), "registerModel")
    with _store(store, api, data_dir_) as blocks:
        listed = publish_model(market, blocks, artifact_path, metadata, price=units, payee=payee_address,
                            endpoint=endpoint, salt=salt_bytes)
    artifact, meta_cid, sent = listed.artifact, listed.metadata, listed.sent
    model_hex = "0x" + sent.value.hex()
    out.print(f"listed model [bold]{model_hex}[/]")
    out.print(f"  artifact   {artifact}  (version 1)")
    out.print(f"  metadata   {meta_cid}")
    out.print(f"  price      {format_pricing(metered or TokenPricing(units))}, paid to {payee_address}")
    out.print(f"  endpoint   {endpoint or '(none: consumers pass --daemon URL)'}")
    _print_sent(sent)
    if metered is not None:
        _print_sent(registry.set_token_prices(sent.value, metered))
    err.print(f"serve it: MARKETPLACE_MODELS='[{{\"model_id\": \"{model_hex}\"}}]' marketplace serve")


def _salt(text: str | None) -> bytes:
    if text is None:
        return os.urandom(32)
    body = text[2:] if text[:2] in ("0x", "0X") else text
    try:
        raw = bytes.fromhex(body)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"--salt must be 32 bytes of hex (64 digits), got {text!r}")
    return raw


@app.command("update-model")
def update_model(
    model: ModelArgument,
    path: Annotated[Path, typer.Argument(help="The new artifact (file or folder).")],
    account: AccountOption = None,
    rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
    deployments_dir: DeploymentsDirOption = None,
    store: StoreOption = StoreKind.LOCAL,
    api: ApiOption = None,
    data_dir_: DataDirOption = None,
) -> None:
    """Publish PATH as the model's next artifact version (earlier versions stay in the history)."""
    from marketplace.listing import GAS_PROBE_CID

    model_id, artifact_path = model_id_arg(model), _artifact(path)
    market = open_session(rpc_url, account, deployments_dir=deployments_dir).market
    fn = market.registry.contract.functions.publishArtifact(model_id, (GAS_PROBE_CID.codec, GAS_PROBE_CID.digest))
    market.require_gas(fn, "publishArtifact")
    with _store(store, api, data_dir_) as blocks:
        artifact = add_path(blocks, artifact_path, PROFILES[DEFAULT_PROFILE]).cid
    sent = market.registry.publish_artifact(model_id, artifact)
    out.print(f"model {model}: artifact version [bold]{sent.value}[/] is {artifact}")
    _print_sent(sent)


@app.command()
def reprice(
    model: ModelArgument,
    price: Annotated[
        str | None, typer.Argument(help="New price per call in tokens, e.g. 0.003 (omit to keep it).")
    ] = None,
    price_per_input_token: InputTokenOption = None,
    price_per_output_token: OutputTokenOption = None,
    max_output_tokens: MaxOutputTokensOption = None,
    account: AccountOption = None,
    rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
    deployments_dir: DeploymentsDirOption = None,
) -> None:
    """Change the price per call and/or the per-token prices (calls already paid for are unaffected).

    Per-token options not given keep their value; both token prices at 0 make the model flat again.
    One transaction per kind of price changed."""
    model_id = model_id_arg(model)
    units = parse_tokens(price, what="PRICE") if price is not None else None
    registry = open_session(rpc_url, account, deployments_dir=deployments_dir).market.registry
    current = registry.get_model(model_id)
    pricing = current.pricing if units is None else current.repriced(units).pricing
    metered = token_pricing(pricing, price_per_input_token, price_per_output_token, max_output_tokens)
    if units is None and metered is None:
        raise ConfigError("give a new PRICE per call, or --price-per-input-token/--price-per-output-token/"
                          "--max-output-tokens")
    if units is not None:
        _print_sent(registry.set_price(model_id, units))
    if metered is not None:
        _print_sent(registry.set_token_prices(model_id, metered))
    out.print(f"model {model} now costs {format_pricing(metered or pricing)}")


def _set_paused(model: str, paused: bool, account: str | None, rpc_url: str, deployments_dir: Path | None) -> None:
    model_id = model_id_arg(model)
    sent = open_session(rpc_url, account, deployments_dir=deployments_dir).market.registry.set_paused(model_id, paused)
    out.print(f"model {model} is {'paused' if paused else 'active again'}")
    _print_sent(sent)


@app.command()
def pause(model: ModelArgument, account: AccountOption = None, rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
          deployments_dir: DeploymentsDirOption = None) -> None:
    """Pause a model: daemons stop serving it and no licenses are sold until `resume`."""
    _set_paused(model, True, account, rpc_url, deployments_dir)


@app.command()
def resume(model: ModelArgument, account: AccountOption = None, rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
           deployments_dir: DeploymentsDirOption = None) -> None:
    """Resume a paused model."""
    _set_paused(model, False, account, rpc_url, deployments_dir)


@app.command()
def retire(
    model: ModelArgument,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    account: AccountOption = None,
    rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
    deployments_dir: DeploymentsDirOption = None,
) -> None:
    """Retire a model for good: it can never be changed or served again, and its licenses end."""
    model_id = model_id_arg(model)
    if not yes:
        typer.confirm(f"retire model {model} for good?", abort=True)
    sent = open_session(rpc_url, account, deployments_dir=deployments_dir).market.registry.retire(model_id)
    out.print(f"model {model} is retired")
    _print_sent(sent)


@app.command("offer-license")
def offer_license(
    model: ModelArgument,
    tier: Annotated[str, typer.Option(help="Label of the offer, e.g. pro (at most 32 bytes).")],
    price: Annotated[str, typer.Option(help="Price of one license in tokens (0 = free).")],
    duration: Annotated[str, typer.Option(help="How long a license lasts: 30d, 12h, ... (0 = forever).")] = "0",
    transferable: Annotated[
        bool, typer.Option("--transferable/--no-transferable", help="May holders resell it?")
    ] = True,
    supply: Annotated[int, typer.Option(min=0, help="How many can be sold (0 = unlimited).")] = 0,
    royalty_bps: Annotated[int, typer.Option(min=0, max=10_000, help="Royalty on resales, basis points.")] = 0,
    account: AccountOption = None,
    rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
    deployments_dir: DeploymentsDirOption = None,
) -> None:
    """Offer licenses of a model: holders call it without paying per call."""
    model_id = model_id_arg(model)
    units = parse_tokens(price, what="--price", allow_zero=True)
    seconds = parse_duration(duration, what="--duration")
    market = open_session(rpc_url, account, deployments_dir=deployments_dir).market
    sent = market.licenses.create_offer(model_id, tier=tier, price=units, duration=seconds, max_supply=supply,
                                        transferable=transferable, royalty_bps=royalty_bps)
    lasting = format_duration(seconds) if seconds else "forever"
    out.print(f"license offer [bold]{sent.value}[/] for model {model}: tier {tier}, {format_tokens(units)} MKT, "
              f"lasts {lasting}, {'transferable' if transferable else 'not transferable'}, "
              f"supply {supply or 'unlimited'}")
    _print_sent(sent)


@app.command()
def earnings(
    account: AccountOption = None,
    database_url: Annotated[
        str | None,
        typer.Option(envvar="MARKETPLACE_DATABASE_URL",
                     help="The daemon's credit ledger (calls served, credit not yet claimed) (default: the "
                          "data dir's ledger.db)."),
    ] = None,
    rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
    deployments_dir: DeploymentsDirOption = None,
) -> None:
    """Per model you own: calls served, credit not yet claimed, claimed, and license sales.

    Calls and unclaimed credit come from the daemon's ledger, claims and sales from chain events."""
    from rich.table import Table

    session = open_session(rpc_url, account, deployments_dir=deployments_dir)
    market, me = session.market, session.market.address
    catalog = market.catalog()
    mine = [m for m in catalog.models.values() if m.info.owner.lower() == me.lower()]
    if not mine:
        out.print(f"{me} owns no model on chain {session.chain_id}")
        return
    payees = {me.lower()} | {m.info.payee.lower() for m in mine}
    channels = defaultdict(list)  # model -> the channels paying us for it (not some stranger's payee)
    for channel in catalog.channels.values():
        if channel.payee.lower() in payees:
            channels[channel.model_id].append(channel)
    url = database_url or f"sqlite:///{data_dir() / 'ledger.db'}"
    ids = [c.channel_id for m in mine for c in channels[m.info.model_id]]
    credits = _ledger_credits(url, ids)
    known = credits or {}
    sales: dict[bytes, list[int]] = defaultdict(list)
    for event in market.events("Licenses", ["LicensePurchased"]):
        sales[bytes(event.args["modelId"])].append(int(event.args["price"]))
    repriced = {bytes(e.args["modelId"]) for e in market.events("ModelRegistry", ["PriceChanged"])}
    repriced |= {m.info.model_id for m in mine if m.info.token_pricing is not None}  # priced by use too
    table = Table("model", "price", "calls", "served", "unclaimed", "claimed", "licenses",
                  title=f"earnings of {me} (MKT)")
    for listed in mine:
        info = listed.info
        served = sum(known[c.channel_id] for c in channels[info.model_id] if c.channel_id in known)
        unclaimed = sum(max(known[c.channel_id] - c.claimed, 0)
                        for c in channels[info.model_id] if c.channel_id in known)
        claimed = sum(c.claimed for c in channels[info.model_id])
        calls = "?" if credits is None else (("~" if info.model_id in repriced else "") + str(served // info.price))
        sold = sales.get(info.model_id, [])
        table.add_row("0x" + info.model_id.hex(), format_tokens(info.price), calls,
                      format_tokens(served) if credits is not None else "?",
                      format_tokens(unclaimed) if credits is not None else "?", format_tokens(claimed),
                      f"{len(sold)} ({format_tokens(sum(sold))})")
    out.print(table)
    if credits is None:
        err.print(f"no ledger at {url}: calls and unclaimed credit unknown (pass --database-url)")
    elif any(m.info.model_id in repriced for m in mine):
        err.print("~: the price changed since listing or depends on tokens (metered), so calls are estimated as "
                  "served / current price per call")


def _ledger_credits(url: str, channel_ids: list[int]) -> dict[int, int] | None:
    """{channel: consumed} from the daemon's ledger: what was served, which is what a claim takes
    (a partial claim of the voucher held); None if there is no ledger there."""
    import asyncio  # asyncio and the ledger are imported by the commands that read the ledger

    from marketplace.payments.ledger import open_ledger
    from marketplace.payments.ledger.sqlite import sqlite_path

    if url.startswith("sqlite:") and not sqlite_path(url).exists():
        return None

    async def read() -> dict[int, int]:
        ledger = await asyncio.to_thread(open_ledger, url)
        try:
            found = {}
            for channel_id in channel_ids:
                credit = await ledger.credit(ChannelId(channel_id))
                if credit is not None:
                    found[channel_id] = int(credit.consumed)
            return found
        finally:
            await ledger.close()

    return asyncio.run(read())


@app.command()
def claim(
    everything: Annotated[
        bool,
        typer.Option("--all/--due-only", help="Claim every unclaimed voucher, or only those the policy finds due."),
    ] = True,
    account: AccountOption = None,
    database_url: Annotated[
        str | None,
        typer.Option(envvar="MARKETPLACE_DATABASE_URL",
                     help="The daemon's credit ledger (default: the data dir's ledger.db)."),
    ] = None,
    rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
    deployments_dir: DeploymentsDirOption = None,
) -> None:
    """Claim the vouchers the daemon holds now (one claimMany per payee); the account pays the gas."""
    import asyncio

    from marketplace.payments.ledger.sqlite import sqlite_path

    session = open_session(rpc_url, account, deployments_dir=deployments_dir)
    url = database_url or f"sqlite:///{data_dir() / 'ledger.db'}"
    if url.startswith("sqlite:") and not sqlite_path(url).exists():
        raise ConfigError(f"no ledger at {url}: pass the daemon's --database-url")
    report = asyncio.run(_claim(session, url, everything))
    if not report.batches:
        out.print("nothing to claim")
    for batch in report.batches:
        out.print(f"claimed {format_tokens(batch.paid)} MKT for {batch.payee} from {len(batch.claims)} channel(s): "
                  f"tx {batch.transaction_hash} (gas {batch.gas_used:,})")
    for channel_id, reason in {**report.dropped, **report.deferred}.items():
        err.print(f"channel {channel_id:#x} not claimed: {reason}")


async def _claim(session: Session, url: str, everything: bool) -> Any:
    import asyncio

    from marketplace.chain.state import ChainStateCache
    from marketplace.payments.claimer import Claimer, ClaimPolicy
    from marketplace.payments.ledger import open_ledger

    ledger = await asyncio.to_thread(open_ledger, url)  # with a running daemon's streams in flight
    state = ChainStateCache.connect(session.rpc_url, session.deployment)
    try:
        await state.start(follow=False)
        claimer = Claimer(ledger, state, session.market.sender, ClaimPolicy())
        return await claimer.claim_now(everything=everything)
    finally:
        await state.stop()
        await ledger.close()

