"""`marketplace up`: the whole marketplace on this machine, with embedded defaults.

A local Anvil (or --rpc-url), the contracts deployed, the dev accounts funded, an embedded IPFS
blockstore (or --ipfs-api), two demo models listed by dev account 1 — an ONNX iris classifier (trained
on scikit-learn's bundled iris data) and the built-in text model (a bigram language model trained on
prose shipped with Python and scikit-learn, served on the OpenAI routes) — and the paid-inference
daemon serving them; Ctrl-C stops everything.
"""

from __future__ import annotations

import json
import shlex
import signal
import threading
from contextlib import ExitStack
from typing import TYPE_CHECKING, Annotated

import typer

from marketplace.chain.errors import ChainError, DeploymentNotFound
from marketplace.cli.chain import print_deployment
from marketplace.cli.console import LazyConsole
from marketplace.cli.serve import dashboard_hint
from marketplace.config import DEFAULT_RPC_URL, ToolchainError, data_dir
from marketplace.tokens import format_pricing, parse_tokens
from marketplace.types import TokenPricing

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount
    from web3 import Web3

    from marketplace.chain.deploy import Deployment

__all__ = ["up"]

DEMO_TOKENS = 1_000_000 * 10**18  # minted to each Anvil dev account, so consumers can pay
DEMO_PRICE = "0.002"
# The text model is priced per token (issue 11): per call, per prompt token, per generated token,
# at most 256 generated tokens a call; paid with the `metered` scheme on the OpenAI routes.
TEXT_PRICE = "0.0001"
TEXT_PRICE_PER_INPUT_TOKEN = "0.000001"
TEXT_PRICE_PER_OUTPUT_TOKEN = "0.00001"
TEXT_MAX_OUTPUT_TOKENS = 256
out = LazyConsole()


def _deployment(w3: Web3, fresh_chain: bool, accounts: list[LocalAccount]) -> Deployment:
    """Deploy on a fresh chain (and fund the dev accounts); reuse a valid record on a given one."""
    from marketplace.chain.deploy import Deployment, default_deployments_dir, deploy_contracts
    from marketplace.chain.market import Market

    if not fresh_chain:
        try:
            return Deployment.load(default_deployments_dir(), w3)
        except DeploymentNotFound:
            pass
    deployment = deploy_contracts(w3, accounts[0])
    market = Market(w3, deployment, accounts[0])
    for account in accounts:
        market.token.mint(account.address, DEMO_TOKENS)
    deployment.save(default_deployments_dir())
    out.print(f"funded {len(accounts)} Anvil dev accounts with {DEMO_TOKENS // 10**18:,} MKT each")
    return deployment


def up(
    port: Annotated[int, typer.Option(help="Port of the daemon (catalog, API, paid inference).")] = 8000,
    anvil_port: Annotated[int, typer.Option(help="Port of the embedded Anvil (0 = any free port).")] = 8545,
    rpc_url: Annotated[
        str | None, typer.Option(help="Use this Anvil-compatible node (chain 31337) instead of starting one.")
    ] = None,
    ipfs_api: Annotated[
        str | None, typer.Option(help="Use this Kubo RPC API for artifacts instead of the embedded blockstore.")
    ] = None,
    database_url: Annotated[
        str | None, typer.Option(help="Credit ledger database (sqlite:///… or postgresql://…) [default: per run].")
    ] = None,
    exit_after_start: Annotated[
        bool, typer.Option("--exit-after-start", help="Stop everything once it is up (for scripts and tests).")
    ] = False,
) -> None:
    """Start a chain, deploy, list two demo models (iris, text) and serve them with the paid daemon; run until
    Ctrl-C."""
    import uvicorn  # the daemon's stack is imported only by the commands that run it

    from marketplace.chain.anvil import Anvil
    from marketplace.chain.connection import connect
    from marketplace.chain.deploy import default_deployments_dir
    from marketplace.chain.devkeys import dev_accounts
    from marketplace.chain.market import Market
    from marketplace.daemon.app import create_app
    from marketplace.daemon.settings import DaemonSettings
    from marketplace.ipfs.artifacts import open_store
    from marketplace.listing import list_model
    from marketplace.metadata import ModelMetadata
    from marketplace.runners.demo_models import train_iris_classifier
    from marketplace.runners.text_model import train_text_model

    home = data_dir() / "up"
    home.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        node_url = rpc_url or stack.enter_context(Anvil(port=anvil_port)).url
        w3 = connect(node_url)
        accounts = dev_accounts(10, w3.eth.chain_id)
        deployment = _deployment(w3, rpc_url is None, accounts)
        print_deployment(deployment, node_url, default_deployments_dir() / f"{deployment.chain_id}.json")

        provider = accounts[1]
        spec = train_iris_classifier(home / "iris.onnx")
        store = stack.enter_context(open_store("kubo" if ipfs_api else "local", api=ipfs_api,
                                               data_dir=data_dir() / "ipfs"))
        daemon_url = f"http://127.0.0.1:{port}"
        listed = list_model(Market(w3, deployment, provider), store, spec.path,
                            ModelMetadata.model_validate(spec.metadata()), price=parse_tokens(DEMO_PRICE),
                            payee=provider.address, endpoint=daemon_url)
        text_spec = train_text_model(home / "text.onnx")
        text = list_model(Market(w3, deployment, provider), store, text_spec.path,
                          ModelMetadata.model_validate(text_spec.metadata()), price=parse_tokens(TEXT_PRICE),
                          payee=provider.address, endpoint=daemon_url)
        text_pricing = TokenPricing(parse_tokens(TEXT_PRICE), parse_tokens(TEXT_PRICE_PER_INPUT_TOKEN),
                                    parse_tokens(TEXT_PRICE_PER_OUTPUT_TOKEN), TEXT_MAX_OUTPUT_TOKENS)
        Market(w3, deployment, provider).registry.set_token_prices(text.model_id, text_pricing)
        ledger = home / "ledger.db"
        if database_url is None:  # a fresh chain has fresh channels: start the ledger afresh too
            for stale in home.glob("ledger.db*"):
                stale.unlink()
        settings = DaemonSettings(
            data_dir=data_dir(), rpc_url=node_url, chain_id=deployment.chain_id,
            deployments_dir=default_deployments_dir(), database_url=database_url or f"sqlite:///{ledger}",
            ipfs_store="kubo" if ipfs_api else "local", ipfs_api=ipfs_api,
            private_key="0x" + provider.key.hex(), public_url=daemon_url,
            models=[{"model_id": "0x" + listed.model_id.hex()},
                    {"model_id": "0x" + text.model_id.hex(), "runner": {"kind": "onnx-text"}}],
        )
        server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                               log_level="warning", access_log=False))
        thread = threading.Thread(target=server.run, name="daemon", daemon=True)
        thread.start()
        stack.callback(thread.join, 15)
        stack.callback(setattr, server, "should_exit", True)
        _wait_started(server, thread)
        _print_welcome(daemon_url, node_url, settings.database_url, "0x" + listed.model_id.hex(),
                       str(listed.artifact), spec.example_input, dashboard_hint(daemon_url, settings),
                       f"0x{text.model_id.hex()}  (built-in text model, {format_pricing(text_pricing)}, artifact "
                       f"{text.artifact}; OpenAI routes /v1/chat/completions, /v1/completions)")
        if not exit_after_start:
            out.print("[bold green]marketplace is up[/] — press Ctrl-C to stop")
            _wait_for_interrupt()
    out.print("stopped")


def _wait_started(server: object, thread: threading.Thread) -> None:
    for _ in range(600):
        if getattr(server, "started", False):
            return
        if not thread.is_alive():
            raise ToolchainError("the daemon did not start (is the port in use? see the messages above)")
        thread.join(0.05)
    raise ChainError("the daemon did not start within 30 s")


def _print_welcome(
    url: str, rpc_url: str, database_url: str, model: str, artifact: str, example: object, dashboard: str,
    text_model: str,
) -> None:
    body = json.dumps(example)
    chain = "" if rpc_url == DEFAULT_RPC_URL else f" --rpc-url {rpc_url}"
    out.print(f"\ncatalog    {url}/")
    out.print(f"dashboard  {dashboard}", soft_wrap=True, highlight=False)
    out.print(f"API docs   {url}/docs")
    out.print(f"model      {model}  (iris classifier, {DEMO_PRICE} MKT per call, artifact {artifact})",
              soft_wrap=True, highlight=False)
    out.print(f"text model {text_model}", soft_wrap=True, highlight=False)
    out.print("\nsee what a call costs (402 + PAYMENT-REQUIRED):")
    out.print(f"  curl -i -X POST {url}/v1/models/{model}/infer -H 'content-type: application/json' "
              f"-d {shlex.quote(body)}", soft_wrap=True, highlight=False)
    out.print("pay for one inference as Anvil dev account 2 (a channel first, then calls):")
    out.print(f"  marketplace consumer open-channel {model} --deposit 1 --expires 1d --account dev2{chain}",
              soft_wrap=True, highlight=False)
    out.print(f"  marketplace consumer call {model} --input {shlex.quote(body)} --account dev2{chain}",
              soft_wrap=True, highlight=False)
    out.print("claim the provider's earnings (dev account 1 lists the demo model):")
    out.print(f"  marketplace provider claim --account dev1 --database-url {database_url}{chain}",
              soft_wrap=True, highlight=False)


def _wait_for_interrupt() -> None:
    """Block until Ctrl-C (SIGINT) or SIGTERM, whatever dispositions the process inherited."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(0.5):  # a timed wait lets the main thread run the signal handler promptly
        pass
