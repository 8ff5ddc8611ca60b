"""`marketplace chain ...`: deploy the contracts to any JSON-RPC node."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from marketplace.chain.keys import PASSWORD_ENV, load_account
from marketplace.cli.console import LazyConsole

if TYPE_CHECKING:
    from marketplace.chain.deploy import Deployment

__all__ = ["app", "print_deployment"]

app = typer.Typer(help="Deploy and inspect the marketplace contracts.", no_args_is_help=True)
out = LazyConsole()


def print_deployment(deployment: Deployment, rpc_url: str, record: Path) -> None:
    out.print(f"chain id   {deployment.chain_id}   rpc {rpc_url}")
    for name, address in deployment.addresses.items():
        out.print(f"{name:<16} {address}")
    out.print(f"deployment record: {record}")


@app.command()
def deploy(
    rpc_url: Annotated[str, typer.Option(help="JSON-RPC URL of the node.", envvar="MARKETPLACE_RPC_URL")],
    chain_id: Annotated[
        int | None, typer.Option(help="Refuse to deploy unless the node serves this chain id.")
    ] = None,
    keystore: Annotated[
        Path | None,
        typer.Option(help=f"Encrypted keystore (v3 JSON) of the deployer; password from ${PASSWORD_ENV} or a prompt."),
    ] = None,
    deployments_dir: Annotated[
        Path | None, typer.Option(help="Where to write <chainId>.json (default: the data dir's deployments/).")
    ] = None,
) -> None:
    """Deploy MarketToken, ModelRegistry, PaymentChannels and Licenses to any node.

    The deployer key comes from --keystore or from $MARKETPLACE_PRIVATE_KEY (hex)."""
    from marketplace.chain.connection import connect  # the chain stack is imported by the command that uses it
    from marketplace.chain.deploy import default_deployments_dir, deploy_contracts

    w3 = connect(rpc_url, expected_chain_id=chain_id)
    account = load_account(keystore, ask_password=lambda: typer.prompt("keystore password", hide_input=True))
    deployment = deploy_contracts(w3, account)
    print_deployment(deployment, rpc_url, deployment.save(deployments_dir or default_deployments_dir()))
