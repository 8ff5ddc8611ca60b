"""The client side of the `metered` scheme (docs/payment-protocol.md, "metered"): a channel voucher for
our own record of what was charged plus a cap, then the charge checked against what we received.

A metered call is paid on an ordinary channel (this payer is the channel payer with two changes):

- `price` picks the cap, the most this call may cost: `pricing.cost(input bound, max output)` with
  the output bounded by the request's `max_tokens` (or `max_completion_tokens`) and the model's
  `maxOutputTokens`, lowered to the caller's ceiling (max_price, the per-call limit); without any
  bound the ceiling is the cap. The input bound is the exact count of the built-in tokenizer when
  the offer says `inputBound: exact` (marketplace/text: the daemon's own code), else the UTF-8 length
  of the body sent (an upper bound of any tokenizer's count: each token carries at least one byte).
- `sign` signs `max(calls in flight, owed) + cap`, `owed` being our own durable record of the charges
  we checked (`ChannelStore.owe`), never the daemon's `consumed`; the channel's `signed` keeps what
  we exposed (the highest voucher: the daemon may use each cap voucher up to its amount).

The answer's charge is checked, then added to `owed` and settled with the spending limits:
a streamed answer (`text/event-stream`) through `MeteredStream` when it ends (client/sse.py
counts tokens, bounded per chunk, and reads the settlement line); a plain answer from its
PAYMENT-RESPONSE receipt. A stream cut short is owed at our own count; one we stop reading before
its end also adds `cap - count` to the channel's `slack` (the daemon charges what it wrote, which
may never have arrived): a later view with `consumed` within `owed + slack` is accepted (`observe`).
A settlement that claims more than we counted, a charge that is not `pricing.cost(...)`, above the
cap, or a receipt that does not name the bytes we received is a `ChannelDispute`: our count is
owed, the daemon's figure recorded for the user (`marketplace consumer resolve`) and nothing more
is signed on the channel.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, Literal

import anyio.to_thread
import httpx

from marketplace.client.errors import NoPaymentOption, SettlementRefused
from marketplace.client.schemes.channel import ChannelAttempt, ChannelPayer
from marketplace.client.sse import Meter, MeteredStream
from marketplace.client.store import DaemonView
from marketplace.payments.errors import ReceiptInvalid
from marketplace.payments.receipts import body_hash, verify_receipt
from marketplace.payments.x402 import PAYMENT_RESPONSE_HEADER, PaymentRequirements, parse_payment_response
from marketplace.text.errors import InvalidPrompt
from marketplace.text.prompt import prompt_tokens
from marketplace.types import TokenAmount, TokenPricing

__all__ = [
    "MeteredAttempt",
    "MeteredPayer",
    "cap_for",
    "check_settlement",
    "input_bound",
    "pricing_of",
]


@dataclass(kw_only=True)
class MeteredAttempt(ChannelAttempt):
    """A cap voucher for one metered call, and what its charge is checked against."""

    pricing: TokenPricing
    input_bound: int
    request_body: bytes
    owed_at_sign: int = 0


def _uint(value: object) -> int | None:
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def pricing_of(requirements: PaymentRequirements) -> TokenPricing | None:
    """The pricing a `metered` offer states (`extra.pricing`), or None when it is malformed."""
    pricing = requirements.extra.get("pricing")
    if not isinstance(pricing, Mapping):
        return None
    values = [_uint(pricing.get(key)) for key in ("perCall", "perInputToken", "perOutputToken", "maxOutputTokens")]
    if any(value is None for value in values):
        return None
    per_call, per_input, per_output, max_output = (int(value or 0) for value in values)
    return TokenPricing(per_call, per_input, per_output, max_output)


def _max_tokens(body: bytes) -> int | None:
    try:
        request = json.loads(body) if body else None
    except ValueError:
        return None
    if not isinstance(request, dict):
        return None
    found = [n for key in ("max_tokens", "max_completion_tokens") if (n := _uint(request.get(key))) is not None]
    return min(found, default=None)


def input_bound(request: httpx.Request, requirements: PaymentRequirements) -> int:
    """The most input tokens the call can be charged for: the exact count of the built-in tokenizer
    (our own copy of the daemon's) when the offer says `inputBound: exact`, else the UTF-8 length of
    the body sent (an upper bound of any tokenizer's count)."""
    path = request.url.path
    kind: Literal["chat", "completion"] | None = (
        "chat" if path.endswith("/chat/completions") else "completion" if path.endswith("/completions") else None)
    if requirements.extra.get("inputBound") == "exact" and kind is not None:
        try:
            body = json.loads(request.content)
            if isinstance(body, Mapping):
                return min(prompt_tokens(kind, body), len(request.content))
        except (ValueError, InvalidPrompt):
            pass  # the daemon will refuse the body; the byte bound is safe meanwhile
    return len(request.content)


def cap_for(pricing: TokenPricing, body: bytes, ceiling: int | None, inputs: int | None = None) -> int | None:
    """The cap of a call with `body` and at most `inputs` input tokens (default: its UTF-8 length;
    see the module doc); None when nothing bounds it."""
    inputs = len(body) if inputs is None else inputs
    base = pricing.cost(inputs, 0)
    bounds = [n for n in (_max_tokens(body), pricing.max_output_tokens) if n]
    if not bounds:
        return ceiling
    cap = pricing.cost(inputs, min(bounds))
    if ceiling is not None and ceiling < cap:  # the daemon gives the tokens the cap pays for; one at least
        cap = max(ceiling, base + pricing.per_output_token)
    return cap


def _plain_figures(amount: int | None, extra: Mapping[str, Any]) -> dict[str, Any]:
    """A plain answer's settlement figures: the PAYMENT-RESPONSE's amount, its receipt's tokens."""
    receipt = extra.get("receipt")
    message = receipt.get("message") if isinstance(receipt, Mapping) else None
    named = message if isinstance(message, Mapping) else {}
    return {"charge": amount if amount is not None else named.get("amount"), "inputTokens": named.get("inputTokens"),
            "outputTokens": named.get("outputTokens"), "receipt": receipt}


def check_settlement(attempt: MeteredAttempt, figures: Mapping[str, Any], *, counted: int | None,
                     digest: bytes | None) -> int:
    """The charge a daemon's settlement states, once checked against what we sent, counted and received
    (`counted`, `digest`: None for a plain answer, whose tokens we did not count); SettlementRefused if not."""
    charge, inputs, outputs = (_uint(figures.get(key)) for key in ("charge", "inputTokens", "outputTokens"))
    if charge is None or inputs is None or outputs is None:
        raise SettlementRefused("the settlement lacks charge, inputTokens or outputTokens", attempt.price)
    if counted is not None and outputs > counted:
        raise SettlementRefused(f"{outputs} output tokens claimed, {counted} received", charge)
    if inputs > attempt.input_bound:
        raise SettlementRefused(f"{inputs} input tokens claimed, at most {attempt.input_bound} sent", charge)
    if charge != attempt.pricing.cost(inputs, outputs) or charge > attempt.price:
        raise SettlementRefused(f"charge {charge} is not the price of {inputs} + {outputs} tokens within the cap "
                                f"{attempt.price}", charge)
    receipt = figures.get("receipt")
    if not isinstance(receipt, Mapping) or not isinstance(message := receipt.get("message"), Mapping):
        raise SettlementRefused("the settlement carries no receipt", charge)
    try:
        verify_receipt(receipt)
    except ReceiptInvalid as error:
        raise SettlementRefused(f"receipt: {error}", charge) from None
    named = {"amount": charge, "inputTokens": inputs, "outputTokens": outputs}
    if any(_uint(message.get(key)) != value for key, value in named.items()):
        raise SettlementRefused("the receipt names other figures than the settlement", charge)
    if message.get("requestHash") != "0x" + body_hash(attempt.request_body).hex():
        raise SettlementRefused("the receipt names another request than the one sent", charge)
    if digest is not None and message.get("responseHash") != "0x" + digest.hex():
        raise SettlementRefused("the receipt names other bytes than the stream received", charge)
    return charge


class MeteredPayer(ChannelPayer):
    """Pays `metered` offers from a channel of the model (see the module doc)."""

    name = "metered"
    _owed: ClassVar[bool] = True

    def price(self, request: httpx.Request, requirements: PaymentRequirements, ceiling: int | None) -> int:
        pricing = pricing_of(requirements)
        url = str(request.url)
        if pricing is None:
            raise NoPaymentOption(url, self.name, requirements.extra.get("pricing"),
                                  "the offer states no valid pricing")
        cap = cap_for(pricing, request.content, ceiling, input_bound(request, requirements))
        if cap is None:
            raise NoPaymentOption(url, self.name, "no max_tokens", "a metered call needs max_tokens in the request, "
                                  "the model's maxOutputTokens or a maximum price per call to bound its cap")
        return cap

    def offered(self, requirements: PaymentRequirements) -> None:
        """The daemon's view of our channel; with no call of ours in flight its `consumed` is held to `owed`."""
        view = requirements.extra.get("channel")
        if isinstance(view, dict) and isinstance(raw := view.get("channelId"), str) and raw[:2] in ("0x", "0X"):
            channel_id = int(raw, 16)
            book = self._books.get(channel_id)
            self.store.observe(channel_id, view, owed=book is None or book.in_flight == 0)

    def sign(self, request: httpx.Request, requirements: PaymentRequirements, url: str,
             price: int) -> MeteredAttempt:
        base = super().sign(request, requirements, url, price)
        pricing = pricing_of(requirements)
        assert pricing is not None  # `price` checked it
        record = self.store.get(base.channel_id)
        attempt = MeteredAttempt(requirements=requirements, payload={**base.payload, "cap": str(price)},
                                 cost=base.cost, price=price, channel_id=base.channel_id, amount=base.amount,
                                 pricing=pricing, input_bound=input_bound(request, requirements),
                                 request_body=request.content,
                                 owed_at_sign=record.owed if record is not None else 0)
        base.released = True  # its book entry now belongs to `attempt`
        request.headers["accept-encoding"] = "identity"  # the receipt hashes the bytes as sent: count those
        return attempt

    def complete(self, attempt: ChannelAttempt, response: httpx.Response) -> int | None:
        assert isinstance(attempt, MeteredAttempt)
        header = response.headers.get(PAYMENT_RESPONSE_HEADER)
        if not response.is_success or header is None:
            self.release(attempt)
            return 0
        settlement = parse_payment_response(header)
        extra = settlement.extra or {}
        try:
            if isinstance(view := extra.get("channel"), dict):
                self.store.observe(attempt.channel_id, view)
        except BaseException:
            self.release(attempt)
            raise
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            meter = Meter()
            response.stream = MeteredStream(response.stream, meter, partial(self._finish_stream, attempt, meter),
                                            run_sync=anyio.to_thread.run_sync)
            return None
        figures = _plain_figures(settlement.amount, extra)
        self._finish(attempt, lambda: check_settlement(attempt, figures, counted=None, digest=None),
                     own=attempt.price)  # a plain answer's tokens are not ours to count: the cap
        return None  # settled by `_finish`

    def _finish_stream(self, attempt: MeteredAttempt, meter: Meter, ended: bool) -> None:
        own = min(attempt.pricing.cost(attempt.input_bound, meter.counted), attempt.price)
        settlement = meter.settlement
        if settlement is None:  # cut short: what we received, at our own count
            # (not read to its end: what the daemon sent meanwhile may be charged, up to the cap: `slack`)
            self._finish(attempt, lambda: own, own=own, slack=0 if ended else attempt.price - own)
        else:
            self._finish(attempt, lambda: check_settlement(attempt, settlement, counted=meter.counted,
                                                           digest=meter.digest), own=own)

    def _finish(self, attempt: MeteredAttempt, charge_of: Callable[[], int], *, own: int, slack: int = 0) -> int:
        """Owe the checked charge and settle the limits; a refused settlement owes `own` and raises the dispute."""
        try:
            try:
                charge = int(charge_of())
            except SettlementRefused as refused:
                self.store.owe(attempt.channel_id, own)
                attempt.settle(own)
                record = self.store.get(attempt.channel_id)
                authorized = record.authorized if record is not None else TokenAmount(0)
                self.store.dispute(attempt.channel_id, DaemonView(
                    authorized, TokenAmount(attempt.owed_at_sign + refused.claimed))).check_dispute()
                raise  # check_dispute raised: a dispute is recorded
            self.store.owe(attempt.channel_id, charge, slack)
            attempt.settle(charge + slack)
            return charge
        finally:
            self.release(attempt)
