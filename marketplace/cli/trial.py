"""Free trials on the command line: the provider's `trial-token` (under `marketplace provider`) and
the consumer's `--trial-token` reader (`marketplace consumer call`). See docs/payment-protocol.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from marketplace.cli.account import (
    AccountOption,
    DeploymentsDirOption,
    RpcUrlOption,
    err,
    format_time,
    model_id_arg,
    open_session,
    out,
    parse_duration,
    read_json_argument,
)
from marketplace.config import DEFAULT_RPC_URL
from marketplace.errors import ConfigError
from marketplace.payments.errors import PaymentRejected

if TYPE_CHECKING:
    from marketplace.payments.schemes.trial import TrialToken

__all__ = ["TrialTokenOption", "read_trial_tokens", "trial_token"]

TrialTokenOption = Annotated[list[str] | None, typer.Option(
    help="A trial token the provider gave you (JSON, @FILE or @-), for models whose free trials need one; "
         "repeatable.")]


def trial_token(
    consumer: Annotated[str, typer.Argument(metavar="ADDRESS", help="The consumer's address (0x...).")],
    model: Annotated[str, typer.Option(help="Model id (0x + 64 hex digits) the free calls are for.")],
    calls: Annotated[int, typer.Option(min=1, help="Free calls the consumer gets in all (not added to "
                                                    "earlier tokens: the latest token's count is the limit).")],
    expires: Annotated[str, typer.Option(help="How long the token is valid: 7d, 12h, ...")] = "7d",
    output: Annotated[Path | None, typer.Option(help="Write the token here (default: stdout).")] = None,
    account: AccountOption = None,
    rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
    deployments_dir: DeploymentsDirOption = None,
) -> None:
    """Sign a trial token: ADDRESS may make CALLS free calls of MODEL until it expires (give it the
    JSON; `marketplace consumer call --trial-token @FILE`). Sign with the model's owner or payee."""
    from web3 import Web3

    from marketplace.payments.schemes.trial import TrialToken, trial_domain

    if not Web3.is_address(consumer):
        raise ConfigError(f"ADDRESS must be a 0x-prefixed 20-byte hex address, got {consumer!r}")
    model_id, lifetime = model_id_arg(model), parse_duration(expires, what="--expires")
    session = open_session(rpc_url, account, deployments_dir=deployments_dir)
    market, signer = session.market, session.market.account
    assert signer is not None
    info = market.registry.get_model(model_id)
    if signer.address.lower() not in (info.owner.lower(), info.payee.lower()):
        raise ConfigError(f"{signer.address} is neither the owner nor the payee of model {model}: daemons "
                          "accept trial tokens signed by one of them (or by the daemon's own key)")
    domain = trial_domain(session.chain_id, session.deployment.addresses["ModelRegistry"])
    token = TrialToken.sign(signer, domain, consumer, model_id, calls, market.now() + lifetime)
    text = json.dumps(token.to_json(), indent=2)
    if output is None:
        out.print_json(text)
    else:
        output.write_text(text + "\n")
    err.print(f"trial token for {token.consumer}: {calls} free calls of model {model} until "
              f"{format_time(token.expiry)}" + (f", written to {output}" if output else ""))


def read_trial_tokens(texts: list[str]) -> list[TrialToken]:
    """The tokens given as `--trial-token` (JSON text, @FILE or @-), each checked for form."""
    from marketplace.payments.schemes.trial import TrialToken

    tokens = []
    for text in texts:
        try:
            tokens.append(TrialToken.from_json(read_json_argument(text, "--trial-token")))
        except PaymentRejected as error:
            raise ConfigError(f"--trial-token is not a trial token: {error.detail}") from None
    return tokens
