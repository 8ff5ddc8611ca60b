"""`marketplace account ...`: local accounts (encrypted keystores), and what every signing command shares.

The shared part: the `--account`, `--rpc-url` and `--deployments-dir` options, `open_session`
(node + deployment + account -> a `Market`), and `parse_duration` ("7d"). The provider, consumer
and license commands import them from here.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from marketplace.chain.keys import PASSWORD_ENV, account_from_hex
from marketplace.cli.console import LazyConsole
from marketplace.config import DEFAULT_RPC_URL
from marketplace.errors import ConfigError
from marketplace.tokens import format_tokens, parse_tokens
from marketplace.types import ChannelId, ModelId

if TYPE_CHECKING:  # the chain stack (web3, eth_account) is imported by the commands that use it
    from web3 import Web3

    from marketplace.chain.deploy import Deployment
    from marketplace.chain.market import Market

__all__ = [
    "AccountOption",
    "DeploymentsDirOption",
    "RpcUrlOption",
    "Session",
    "app",
    "channel_id_arg",
    "err",
    "format_duration",
    "format_time",
    "model_id_arg",
    "open_session",
    "out",
    "parse_duration",
    "read_json_argument",
]

app = typer.Typer(
    help="Local accounts: keystore v3 files encrypted with your password, in the user config dir "
    "($MARKETPLACE_CONFIG_DIR overrides it). dev0..dev9 name Anvil's public development keys, "
    "usable on the local chain id 31337 only.",
    no_args_is_help=True,
)
out = LazyConsole(highlight=False, soft_wrap=True)
err = LazyConsole(stderr=True, highlight=False, soft_wrap=True)


AccountOption = Annotated[
    str | None,
    typer.Option(
        "--account",
        "-a",
        envvar="MARKETPLACE_ACCOUNT",
        help="Signing account: a name from `marketplace account list`, or dev0..dev9 (Anvil's public "
        f"development keys, chain id 31337 only). Password from ${PASSWORD_ENV} or a prompt.",
    ),
]
RpcUrlOption = Annotated[
    str, typer.Option("--rpc-url", envvar="MARKETPLACE_RPC_URL", help="JSON-RPC URL of the node.")
]
DeploymentsDirOption = Annotated[
    Path | None,
    typer.Option(
        "--deployments-dir",
        envvar="MARKETPLACE_DEPLOYMENTS_DIR",
        help="Where <chainId>.json deployment records are (default: the data dir's deployments/).",
    ),
]


@dataclass
class Session:
    """A connected node, the marketplace deployed on it, and (for writes) the signing account."""

    w3: Web3
    deployment: Deployment
    market: Market
    rpc_url: str

    @property
    def chain_id(self) -> int:
        return self.deployment.chain_id


def _ask_password(name: str) -> str:
    return str(typer.prompt(f"password for account {name}", hide_input=True))


def open_session(
    rpc_url: str, account: str | None, *, deployments_dir: Path | None = None, need_account: bool = True
) -> Session:
    """Connect, load the deployment of the node's chain and unlock `account` (required unless
    `need_account` is False); a dev key is refused off chain id 31337 before anything else."""
    from marketplace.accounts import DevAccountRefused, dev_index, resolve_account
    from marketplace.chain.connection import connect
    from marketplace.chain.deploy import Deployment, default_deployments_dir
    from marketplace.chain.devkeys import DEV_CHAIN_ID
    from marketplace.chain.market import Market

    w3 = connect(rpc_url)
    chain_id = w3.eth.chain_id
    if account and dev_index(account) is not None and chain_id != DEV_CHAIN_ID:
        raise DevAccountRefused(account, chain_id)
    if not account and need_account:
        raise ConfigError(
            "this command signs transactions: pass --account NAME or set MARKETPLACE_ACCOUNT "
            "(see `marketplace account list`; dev0..dev9 on a local Anvil)"
        )
    deployment = Deployment.load(deployments_dir or default_deployments_dir(), w3)
    signer = resolve_account(account, chain_id, ask_password=_ask_password) if account else None
    if account and signer is not None and dev_index(account) is not None:
        err.print(f"[dim]using {account} ({signer.address}): a public Anvil development key, "
                  f"accepted on chain id {DEV_CHAIN_ID} only[/]")
    return Session(w3, deployment, Market(w3, deployment, signer), rpc_url)


_DURATION = re.compile(r"\s*(\d+)\s*(s|sec|m|min|h|d|w)?\s*", re.IGNORECASE)
_SECONDS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(text: str, *, what: str = "duration") -> int:
    """"7d" -> 604800 seconds (units s, m, h, d, w; a bare number is seconds)."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ConfigError(f"{what} must look like 3600, 30m, 12h, 7d or 2w, got {text!r}")
    number, unit = match.groups()
    return int(number) * _SECONDS[unit.lower() if unit else None]


def model_id_arg(text: str) -> ModelId:
    """A model id given on the command line (0x + 64 hex digits)."""
    body = text[2:] if text[:2] in ("0x", "0X") else text
    try:
        raw = bytes.fromhex(body)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"a model id is 0x followed by 64 hex digits, got {text!r}")
    return ModelId(raw)


def channel_id_arg(text: str) -> ChannelId:
    """A channel id given on the command line (0x-hex or decimal)."""
    try:
        value = int(text, 16) if text[:2] in ("0x", "0X") else int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**256:
        raise ConfigError(f"a channel id is a 0x-hex or decimal uint256, got {text!r}")
    return ChannelId(value)


def read_json_argument(text: str, what: str) -> Any:
    """JSON given as text, or as @FILE (@- for stdin)."""
    if text.startswith("@"):
        name = text[1:]
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text()
        except OSError as error:
            raise ConfigError(f"cannot read {what} from {name}: {error.strerror or error}") from None
    try:
        return json.loads(text)
    except ValueError as error:
        raise ConfigError(f"{what} is not valid JSON ({error})") from None


def format_time(timestamp: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def format_duration(seconds: int) -> str:
    for unit, size in (("w", 604_800), ("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# --- the account commands ------------------------------------------------------------------------

NameArgument = Annotated[str, typer.Argument(help="Account name (letters, digits, '.', '_', '-').")]


def _new_password(name: str) -> str:
    password = os.environ.get(PASSWORD_ENV)
    if password is not None:
        return password
    return str(typer.prompt(f"password for account {name}", hide_input=True, confirmation_prompt=True))


@app.command()
def new(name: NameArgument) -> None:
    """Create an account with a new random key, saved encrypted (scrypt) under NAME.

    The password comes from $MARKETPLACE_PASSWORD or a prompt; the key is never shown."""
    from marketplace.accounts import AccountStore

    store = AccountStore()
    store.path(name)  # refuse a bad or reserved name before asking anything
    entry = store.create(name, _new_password(name))
    out.print(f"created account [bold]{entry.name}[/]  {entry.address}")
    out.print(f"keystore: {entry.path}")


@app.command("import")
def import_(
    name: NameArgument,
    keystore: Annotated[
        Path | None,
        typer.Option(help="Import this keystore v3 file (its password is kept) instead of a private key."),
    ] = None,
) -> None:
    """Import an existing key under NAME: a hex private key typed at a hidden prompt (or piped on
    stdin), or a keystore v3 file. The key is stored encrypted and never echoed."""
    from marketplace.accounts import AccountStore

    store = AccountStore()
    store.path(name)
    if keystore is not None:
        password = os.environ.get(PASSWORD_ENV)
        if password is None:
            password = str(typer.prompt(f"password of {keystore}", hide_input=True))
        entry = store.import_keystore(name, keystore, password)
    else:
        key = str(typer.prompt("private key (hex, not echoed)", hide_input=True))
        account_from_hex(key, source="the private key typed")  # refuse a bad key before asking a password
        entry = store.import_key(name, key, _new_password(name))
    out.print(f"imported account [bold]{entry.name}[/]  {entry.address}")
    out.print(f"keystore: {entry.path}")


@app.command("list")
def list_() -> None:
    """List the local accounts (addresses read from the keystores, nothing decrypted)."""
    from rich.table import Table

    from marketplace.accounts import DEV_ACCOUNT_NAMES, AccountStore
    from marketplace.chain.devkeys import DEV_CHAIN_ID

    store = AccountStore()
    entries = store.entries()
    if not entries:
        out.print(f"no accounts in {store.directory}: create one with `marketplace account new NAME`")
    else:
        table = Table("name", "address", "keystore", title=f"accounts in {store.directory}")
        for entry in entries:
            table.add_row(entry.name, entry.address or "?", str(entry.path))
        out.print(table)
    out.print(f"also {DEV_ACCOUNT_NAMES[0]}..{DEV_ACCOUNT_NAMES[-1]}: Anvil's public development keys, "
              f"accepted on the local chain id {DEV_CHAIN_ID} only")


@app.command()
def balance(
    account: AccountOption = None,
    address: Annotated[str | None, typer.Option(help="Any address instead of an account's.")] = None,
    rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
    deployments_dir: DeploymentsDirOption = None,
) -> None:
    """Show ETH (for gas) and MKT (for payments) of an account or address."""
    from web3 import Web3

    session = open_session(rpc_url, None if address else account, deployments_dir=deployments_dir,
                           need_account=address is None)
    who = Web3.to_checksum_address(address) if address else session.market.address
    market = session.market
    out.print(f"{who}  {format_tokens(market.eth_balance(who))} ETH  {format_tokens(market.token.balance(who))} MKT")


@app.command()
def fund(
    name: Annotated[str, typer.Argument(help="Account name (or dev0..dev9) to fund.")],
    tokens: Annotated[str, typer.Option(help="MKT to mint to it.")] = "100",
    eth: Annotated[str, typer.Option(help="ETH to send it for gas.")] = "1",
    rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
    deployments_dir: DeploymentsDirOption = None,
) -> None:
    """Local chain id 31337 only: send ETH and mint demo MKT to an account, from dev0 (the token's owner
    after `marketplace up`)."""
    from marketplace.accounts import AccountStore, dev_index
    from marketplace.chain.devkeys import dev_account

    session = open_session(rpc_url, "dev0", deployments_dir=deployments_dir)
    index = dev_index(name)
    if index is not None:
        target = dev_account(index, session.chain_id).address
    else:
        store = AccountStore()
        entry = next((e for e in store.entries() if e.name == name), None)
        if entry is None or entry.address is None:
            raise ConfigError(f"no account named {name!r} in {store.directory}")
        target = entry.address
    minted = parse_tokens(tokens, what="--tokens", allow_zero=True)
    wei = parse_tokens(eth, what="--eth", allow_zero=True)
    if wei:
        session.market.send_eth(target, wei)
    if minted:
        session.market.token.mint(target, minted)
    out.print(f"funded {name} ({target}) with {eth} ETH and {tokens} MKT")

