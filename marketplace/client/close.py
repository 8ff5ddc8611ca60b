"""Ask a daemon to co-sign a cooperative close of a channel (`POST /v1/channels/{id}/close`).

The request is the channel signer's EIP-712 `CloseRequest(channelId, deadline)`; the answer, the
payee's `CloseChannel(channelId, payout, deadline)` signature, is checked here before anyone submits
it: it must recover to the channel's payee and `payout` must not exceed what this consumer signed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
from eth_account.signers.local import LocalAccount

from marketplace.chain.contracts import ChannelTerms
from marketplace.client.errors import CallFailed, ClientError, DaemonUnreachable
from marketplace.payments.eip712 import CLOSE_CHANNEL, CLOSE_REQUEST, Domain, recover_address, sign_digest
from marketplace.payments.errors import InvalidSignature

__all__ = ["CLOSE_WINDOW", "CloseCosignature", "request_close"]

CLOSE_WINDOW = 120  # seconds the request (and the daemon's co-signature) stay good: the daemon takes <= 300


@dataclass(frozen=True)
class CloseCosignature:
    """The payee's agreement to close `channel_id` now, paying it `payout` in all."""

    channel_id: int
    payout: int
    deadline: int
    signature: bytes  # 65 bytes, the payee's CloseChannel signature


def request_close(daemon_url: str, account: LocalAccount, domain: Domain, terms: ChannelTerms, channel_id: int,
                  *, most: int, now: int | None = None, timeout: float = 30.0) -> CloseCosignature:
    """Ask `daemon_url` for the payee's co-signature; `most` is the highest payout to accept (what
    this consumer signed, or the deposit). ClientError if the daemon refuses or cheats."""
    deadline = (now if now is not None else int(time.time())) + CLOSE_WINDOW
    request = sign_digest(account, domain.digest(CLOSE_REQUEST, channel_id, deadline))
    url = f"{daemon_url.rstrip('/')}/v1/channels/0x{channel_id:064x}/close"
    try:
        answer = httpx.post(url, json={"deadline": deadline, "signature": "0x" + request.hex()}, timeout=timeout)
    except httpx.HTTPError as error:
        raise DaemonUnreachable(url, str(error) or type(error).__name__) from None
    try:
        body = answer.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise CallFailed(url, answer.status_code, "invalid_answer", answer.text[:200])
    if answer.status_code != 200:
        raise CallFailed(url, answer.status_code, str(body.get("error")), str(body.get("detail"))[:300])
    try:
        payout, signature = int(body["payout"]), bytes.fromhex(str(body["signature"]).removeprefix("0x"))
        if int(body["deadline"]) != deadline:
            raise ValueError("another deadline")
        signer = recover_address(domain.digest(CLOSE_CHANNEL, channel_id, payout, deadline), signature)
    except (KeyError, ValueError, TypeError, InvalidSignature) as error:
        raise ClientError(f"{url} answered a close that does not check out: {error}") from None
    if signer.hex() != terms.payee.lower().removeprefix("0x"):
        raise ClientError(f"{url} answered a close not signed by the channel's payee {terms.payee}")
    if payout > most:
        raise ClientError(f"{url} asks a payout of {payout} units, more than the {most} you signed: not submitted")
    return CloseCosignature(channel_id, payout, deadline, signature)
