"""`POST /v1/channels/{id}/close`: the daemon co-signs a cooperative early close of a channel.

The channel's signer asks with an EIP-712 `CloseRequest(channelId, deadline)`; the daemon stops
admitting calls on the channel in the ledger itself (`CreditLedger.close_channel`: every replica
refuses them, `channel_closing`, until the deadline plus `CLOSE_GRACE`, after which the co-signature
is worthless on chain), then signs `CloseChannel(channelId, payout, deadline)` with its key (the
channel's payee) for `payout` = what the ledger counts consumed: the payer submits it with
`PaymentChannels.closeCooperatively` and gets the rest of the deposit back in the same transaction.
Asking again (a lost answer, a close a reorg dropped after its deadline) co-signs the same payout,
or less if a call in flight at the close was refunded since.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from marketplace.daemon.errors import ApiError
from marketplace.daemon.limits import peer_address
from marketplace.daemon.services import Services
from marketplace.payments.eip712 import CLOSE_CHANNEL, CLOSE_REQUEST, checksum_address, recover_address, sign_digest
from marketplace.payments.errors import InvalidSignature, PaymentRejected
from marketplace.payments.x402 import parse_uint256_text
from marketplace.types import ChannelId

__all__ = ["CLOSE_GRACE", "MAX_CLOSE_WINDOW", "router"]

router = APIRouter(tags=["channels"])

MAX_CLOSE_WINDOW = 300  # seconds: a close request (and the co-signature) is good for at most this long
CLOSE_GRACE = 120  # seconds after the deadline before calls are admitted again: block times may lag


class CloseRequestBody(BaseModel):
    deadline: int  # unix seconds, within MAX_CLOSE_WINDOW
    signature: str  # 0x + 65 bytes: the channel's signer over CloseRequest(channelId, deadline)


class CloseAnswer(BaseModel):
    payout: str  # what the payee gets in all (the ledger's consumed), decimal
    deadline: int
    signature: str  # the daemon's CloseChannel(channelId, payout, deadline) signature, 0x + 65 bytes


@router.post("/v1/channels/{channel_id}/close", response_model=CloseAnswer,
             summary="Co-sign a cooperative close of a channel (asked by its signer)")
async def close_channel(channel_id: str, body: CloseRequestBody, request: Request) -> CloseAnswer:
    services: Services = request.app.state.services
    scheme = services.channel
    number = parse_uint256_text(channel_id)
    channel = None
    if number is not None:
        try:
            channel = await scheme.find(number, peer_address(request))
        except PaymentRejected as refusal:
            services.metrics.rejections.labels(refusal.code).inc()
            raise
    if number is None or channel is None:
        raise ApiError(404, "unknown_channel", f"no channel {channel_id[:80]!r} on chain {services.state.chain_id}")
    key = ChannelId(number)
    now = int(services.state.now())
    if body.deadline <= now:
        raise ApiError(402, "access_expired", f"the close request's deadline {body.deadline} passed")
    if body.deadline > now + MAX_CLOSE_WINDOW:
        raise ApiError(402, "access_window_too_long", f"the deadline is more than {MAX_CLOSE_WINDOW} s away")
    domain = scheme.domain.eip712
    try:
        signature = bytes.fromhex(body.signature.removeprefix("0x"))
        signer = checksum_address(recover_address(domain.digest(CLOSE_REQUEST, number, body.deadline), signature))
    except (ValueError, InvalidSignature) as error:
        raise ApiError(402, "bad_signature", f"the close request's signature is malformed: {error}") from None
    if signer != checksum_address(channel.signer):
        raise ApiError(402, "bad_signature", f"the close request is signed by {signer}, not by the channel's signer")
    if checksum_address(channel.payee) != services.account.address:
        raise ApiError(409, "not_payee", f"channel {number:#x} pays {channel.payee}, not this daemon's key")
    await services.ledger.close_channel(key, body.deadline + CLOSE_GRACE)
    if await services.ledger.reserved_by_calls(key) > 0:  # read after the close: no stream starts since
        raise ApiError(409, "calls_in_flight", f"channel {number:#x} has streams in flight; no new call is "
                       "admitted on it: ask again once they end")
    credit = await services.ledger.credit(key)  # read after the reservations: a stream's refund is in it
    payout = credit.consumed if credit is not None else 0
    close_signature = sign_digest(services.account, domain.digest(CLOSE_CHANNEL, number, payout, body.deadline))
    return CloseAnswer(payout=str(payout), deadline=body.deadline, signature="0x" + close_signature.hex())
