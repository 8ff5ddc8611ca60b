"""Deploy the marketplace contracts to any JSON-RPC node.

    python scripts/deploy.py --rpc-url URL [--chain-id N] [--keystore FILE]
        key from --keystore (password: $MARKETPLACE_PASSWORD or a prompt) or $MARKETPLACE_PRIVATE_KEY
    ape run deploy --network ethereum:local:foundry
        as an ape script: deploys through ape's connected provider; the key is
        $MARKETPLACE_PRIVATE_KEY, or ape's first test account on a local network

Both paths run the same command as `marketplace chain deploy` (only the chain commands are
imported, so ape's own virtual environment needs no daemon dependencies).
"""

from __future__ import annotations

import os
import sys

import typer

from marketplace.chain.keys import PRIVATE_KEY_ENV
from marketplace.cli import chain
from marketplace.cli.console import run


def _ape_provider_url() -> str | None:
    """The RPC URL of ape's connected provider when ape runs this script, else None."""
    if "ape" not in sys.modules:
        return None
    from ape import accounts, networks

    provider = networks.active_provider
    if provider is None:
        return None
    if not os.environ.get(PRIVATE_KEY_ENV) and provider.network.name == "local":
        os.environ[PRIVATE_KEY_ENV] = accounts.test_accounts[0].private_key
    return str(provider.http_uri)


def main() -> None:
    """Entry point for both `python scripts/deploy.py` and `ape run deploy`."""
    ape_url = _ape_provider_url()
    arguments = ["--rpc-url", ape_url] if ape_url else sys.argv[1:]
    sys.argv = ["deploy.py", *arguments]
    script = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    script.command()(chain.deploy)
    try:
        run(script)
    except SystemExit as done:  # ape treats any SystemExit as a failure; succeed quietly on 0
        if done.code not in (0, None):
            raise


if __name__ == "__main__":
    main()
