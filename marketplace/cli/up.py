"""`marketplace up`: the whole marketplace on this machine, with embedded defaults."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer
from rich.console import Console

from marketplace.chain.anvil import Anvil
from marketplace.chain.connection import connect
from marketplace.chain.deploy import default_deployments_dir, deploy_contracts
from marketplace.chain.devkeys import dev_accounts
from marketplace.chain.transactions import Sender
from marketplace.cli.chain import print_deployment

__all__ = ["up"]

DEMO_TOKENS = 1_000_000 * 10**18  # minted to each Anvil dev account, so consumers can pay
out = Console()


def up(
    anvil_port: Annotated[int, typer.Option(help="Port of the embedded Anvil (0 = any free port).")] = 8545,
    exit_after_start: Annotated[
        bool, typer.Option("--exit-after-start", help="Stop everything once started (for scripts and tests).")
    ] = False,
) -> None:
    """Start a local chain, deploy the contracts, fund the dev accounts; run until Ctrl-C."""
    with Anvil(port=anvil_port) as node:
        w3 = connect(node.url, expected_chain_id=node.chain_id)
        accounts = dev_accounts(10, node.chain_id)
        deployment = deploy_contracts(w3, accounts[0])
        token = deployment.contract(w3, "MarketToken")
        sender = Sender(w3, accounts[0])
        for account in accounts:
            sender.transact(token.functions.mint(account.address, DEMO_TOKENS))
        print_deployment(deployment, node.url, deployment.save(default_deployments_dir()))
        out.print(f"funded {len(accounts)} Anvil dev accounts with {DEMO_TOKENS // 10**18:,} MKT each")
        if exit_after_start:
            return
        out.print("[bold green]marketplace is up[/] — press Ctrl-C to stop")
        _wait_for_interrupt()
    out.print("stopped")


def _wait_for_interrupt() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
