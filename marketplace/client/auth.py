"""`PaymentAuth`: an `httpx.Auth` that pays a marketplace daemon for each call (x402 v2).

    auth = PaymentAuth(account, store=ChannelStore(), max_price=parse_tokens("0.01"), budget=parse_tokens("1"))
    httpx.Client(auth=auth).post(f"{daemon}/v1/models/{model}/infer", json=...)       # or httpx.AsyncClient

1. A URL paid before is paid upfront with the same offer; otherwise the request goes out unpaid
   (`announce`: the channel payer names our channel in `PAYMENT-CHANNEL`, so that the daemon's 402
   carries its view of it).
2. On a 402 (the upfront offer is forgotten: its price may have changed) each payer learns from the
   offers of its scheme (the channel payer checks the daemon's view against our own record); then
   the first scheme the caller allows that is offered and that its payer `pays` is signed, and the
   request is sent again, once (and once more if the refused scheme `falls_back`: a trial used up
   meanwhile lets the next scheme pay). A price above `max_price`, or one that would take the client
   past its `budget` or a spending limit (`limits`, durable: `SpendingBook`), aborts before anything
   is signed; the limits hold the price (a metered call's cap; a trial's 0) on disk before the
   payment leaves.
3. A 2xx with PAYMENT-RESPONSE is `complete`d by the payer (the channel's state moves forward,
   committed to disk before the caller sees the answer) and the hold is settled to the charge (a
   metered stream's when it ends); a refused payment gives the hold back (but an `exact` transfer's).
   A call lost in transit keeps its hold: the figures never understate what was spent.

Only a 402 is read by the flow: a paid answer reaches the caller unread, so a stream streams.

Signing is each scheme's business (`marketplace.client.schemes`); this class chooses the scheme and
enforces `max_price` and the budget. Its flow does no I/O itself: it yields either a request to
send or a `_Blocking` step (a payer's store read or commit); `sync_auth_flow` runs the steps in
place, `async_auth_flow` on a worker thread, so an AsyncClient's event loop never waits on the
disk. Only `release` (memory only) runs on the loop, also when a call is cancelled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio.to_thread
import httpx
from eth_account.signers.local import LocalAccount

from marketplace.client.errors import BudgetExceeded, ChannelExhausted, NoPaymentOption, PriceAboveMax
from marketplace.client.schemes import (
    Attempt,
    ChannelPayer,
    ExactPayer,
    LicensePayer,
    MeteredPayer,
    SchemePayer,
    TrialPayer,
)
from marketplace.client.spending import Hold, SpendingBook, SpendingLimits
from marketplace.client.store import ChannelRecord, ChannelStore
from marketplace.payments.schemes.trial import TrialToken
from marketplace.payments.x402 import (
    PAYMENT_REQUIRED_HEADER,
    PAYMENT_RESPONSE_HEADER,
    PAYMENT_SIGNATURE_HEADER,
    PaymentPayload,
    PaymentRequirements,
    parse_payment_required,
)
from marketplace.types import SCHEMES

__all__ = ["DEFAULT_SCHEMES", "SCHEMES", "ChannelAuth", "PaymentAuth"]

# free trials first while offered, then a channel (flat-priced models) or `metered` (per-token models)
DEFAULT_SCHEMES = ("trial", "channel", "metered")


@dataclass(frozen=True)
class _Blocking:
    """A step of the flow that may block (the channel store's reads and commits): the driver runs it."""

    run: Callable[[], Any]


@dataclass
class _Call:
    """One request through the flow, and the payment it carries until its answer is in."""

    request: httpx.Request
    url: str
    attempt: Attempt | None = None


_Flow = Generator[httpx.Request | _Blocking, Any, None]


def _resource(request: httpx.Request) -> str:
    return str(request.url.copy_with(query=None, fragment=None))


def _offers(response: httpx.Response) -> tuple[PaymentRequirements, ...] | None:
    """The offers of a 402 that asks to be paid (PAYMENT-REQUIRED), else None."""
    if response.status_code != 402 or PAYMENT_REQUIRED_HEADER not in response.headers:
        return None
    return parse_payment_required(response.headers[PAYMENT_REQUIRED_HEADER]).accepts


class PaymentAuth(httpx.Auth):
    """Pays x402 402s with a free trial, a payment channel (default: trial, then channel), a
    license, or an EIP-3009 transfer.

    `schemes` is the caller's order of preference among "trial", "channel", "exact", "license" and
    "metered" (a daemon offers a metered model `metered` only, a flat one never: list both to call
    either); "trial" is used while the daemon offers trials left for this account (`trial_tokens`:
    the providers' TrialTokens for it, when a model's trials need one).
    `channel_id` pins the channel; otherwise the store's best unexpired channel for the model is
    used. `license_id` (or `licenses`, per model id) enables "license". `max_price` (per call) and
    `budget` (in total: what this client's signatures can cost, see `committed`) are in token units.
    `payer_wallet`: "exact" transfers are drawn from this ERC-1271 contract wallet, which accepts
    `account`'s signatures (a wallet's channels need nothing: their signer is `account`).
    `store` keeps channel state on disk (default `<data dir>/client/channels.db`). `limits` (per
    call, per UTC day, in total) are enforced over every process sharing the store's file: the figures
    are kept in it (`spending`, a `SpendingBook`, opened on that file unless given).
    """

    def __init__(
        self,
        account: LocalAccount,
        *,
        store: ChannelStore | None = None,
        channel_id: int | None = None,
        schemes: Sequence[str] = DEFAULT_SCHEMES,
        license_id: int | None = None,
        licenses: Mapping[bytes, int] | None = None,
        trial_tokens: Sequence[TrialToken] = (),
        max_price: int | None = None,
        budget: int | None = None,
        limits: SpendingLimits | None = None,
        spending: SpendingBook | None = None,
        payer_wallet: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        unknown = [scheme for scheme in schemes if scheme not in SCHEMES]
        if unknown or not schemes:
            raise ValueError(f"schemes must be among {SCHEMES}, got {list(schemes)}")
        self.account = account
        self.store = store if store is not None else ChannelStore()
        self.schemes = tuple(schemes)
        self.max_price = max_price
        self.budget = budget
        self.limits = limits
        self.spending = spending if spending is not None or limits is None else SpendingBook(self.store.path)
        payers: dict[str, Callable[[], SchemePayer[Any]]] = {
            "channel": lambda: ChannelPayer(account, self.store, channel_id=channel_id, clock=clock),
            "exact": lambda: ExactPayer(account, clock, wallet=payer_wallet),
            "license": lambda: LicensePayer(account, license_id=license_id, licenses=licenses, clock=clock),
            "metered": lambda: MeteredPayer(account, self.store, channel_id=channel_id, clock=clock),
            "trial": lambda: TrialPayer(account, tokens=trial_tokens, clock=clock),
        }
        self._payers = {scheme: payers[scheme]() for scheme in self.schemes}  # in the caller's order
        self._lock = threading.Lock()  # the budget's counters only: never held across I/O
        self._committed = 0
        self._held = 0  # prices of signatures being made, until their cost is known
        self._paid: dict[str, PaymentRequirements] = {}  # URL -> the offer that paid it

    @property
    def committed(self) -> int:
        """What this client's signatures can cost, in token units: each `exact` transfer signed, plus
        how far its vouchers raised each channel's record of what was signed (credit reused costs 0)."""
        return self._committed

    def channel_state(self, channel_id: int) -> ChannelRecord | None:
        """The stored state of a channel (our own record and the daemon's view as last heard)."""
        return self.store.get(channel_id)

    # --- the drivers: httpx's hooks for flows that do I/O ---------------------------------------

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise NotImplementedError("PaymentAuth reads and commits its channel store: httpx.Client and "
                                  "httpx.AsyncClient drive it through sync_auth_flow and async_auth_flow")

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.read()  # a license signs the body
        flow = self._flow(request)
        try:
            step = next(flow)
            while True:
                if isinstance(step, httpx.Request):
                    response = yield step
                    if response.status_code == 402:
                        response.read()
                    step = flow.send(response)
                    continue
                try:
                    result = step.run()
                except Exception as error:  # noqa: BLE001  # handed to the flow, which re-raises what it does not handle
                    step = flow.throw(error)
                else:
                    step = flow.send(result)
        except StopIteration:
            return
        finally:
            flow.close()

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        await request.aread()
        flow = self._flow(request)
        try:
            step = next(flow)
            while True:
                if isinstance(step, httpx.Request):
                    response = yield step
                    if response.status_code == 402:
                        await response.aread()
                    step = flow.send(response)
                    continue
                try:  # on a worker thread; a cancelled caller waits for it, so no reservation is lost
                    result = await anyio.to_thread.run_sync(step.run)
                except Exception as error:  # noqa: BLE001  # handed to the flow, which re-raises what it does not handle
                    step = flow.throw(error)
                else:
                    step = flow.send(result)
        except StopIteration:
            return
        finally:
            flow.close()

    # --- the flow (no I/O: it yields what blocks) -------------------------------------------------

    def _flow(self, request: httpx.Request) -> _Flow:
        call = _Call(request, _resource(request))
        try:
            yield _Blocking(partial(self._upfront, call))
            response = yield request
            if (offers := _offers(response)) is not None:
                yield _Blocking(partial(self._refused, call))
                self._paid.pop(call.url, None)  # the offer paid upfront may be outdated (a new price)
                yield _Blocking(partial(self._pay, call, offers))
                response = yield request
                if (offers := _offers(response)) is not None:
                    refused = call.attempt
                    yield _Blocking(partial(self._refused, call))
                    yield _Blocking(partial(self._learn, offers))  # so that the next call starts from the daemon's view
                    if refused is None or not self._payers[refused.requirements.scheme].falls_back:
                        return
                    # e.g. a trial refused (used up meanwhile): the next scheme pays, once
                    yield _Blocking(partial(self._pay, call, offers, skip=refused.requirements.scheme))
                    response = yield request
                    if (offers := _offers(response)) is not None:
                        yield _Blocking(partial(self._refused, call))
                        yield _Blocking(partial(self._learn, offers))
                        return
            if call.attempt is not None:
                yield _Blocking(partial(self._complete, call, response))
        finally:
            self._release(call)  # the request failed in transit, or the caller stopped

    # --- the steps (they may block) ---------------------------------------------------------------

    def _upfront(self, call: _Call) -> None:
        """Pay a URL paid before with the same offer; otherwise let the payers announce the unpaid request."""
        known = self._paid.get(call.url)
        upfront = self._payers[known.scheme] if known is not None else None
        # a scheme that falls back (trial) is paid upfront only while its payer still pays (trials left)
        if known is not None and upfront is not None and (not upfront.falls_back or upfront.pays(known, call.url)):
            try:
                self._sign(call, upfront, known)
                return
            except ChannelExhausted:  # the deposit looks spent: ask the daemon first (a top-up?)
                pass
        for payer in self._payers.values():
            payer.announce(call.request, call.url)

    def _pay(self, call: _Call, offers: Sequence[PaymentRequirements], skip: str | None = None) -> None:
        """Pay the first offer of the caller's schemes (but `skip`, just refused) that its payer can pay."""
        self._learn(offers)
        offered = {requirements.scheme: requirements for requirements in offers if requirements.scheme != skip}
        reasons = []
        for scheme, payer in self._payers.items():
            requirements = offered.get(scheme)
            if scheme == skip:
                reasons.append(f"{scheme} was refused")
            elif requirements is None:
                reasons.append(f"{scheme} is not offered")
            elif not payer.pays(requirements, call.url):
                reasons.append(payer.missing)
            else:
                self._sign(call, payer, requirements)
                return
        raise NoPaymentOption(call.url, list(self.schemes), sorted(offered), "; ".join(reasons))

    def _learn(self, offers: Sequence[PaymentRequirements]) -> None:
        """Each payer learns from the offers of its scheme (the channel's view: a dispute raises here)."""
        for requirements in offers:
            payer = self._payers.get(requirements.scheme)
            if payer is not None:
                payer.offered(requirements)

    def _sign(self, call: _Call, payer: SchemePayer[Any], requirements: PaymentRequirements) -> None:
        """Sign `requirements` for the call (every payment goes through here: `max_price`, the budget, the limits)."""
        ceilings = [c for c in (self.max_price, self.limits.per_call if self.limits else None) if c is not None]
        price = payer.price(call.request, requirements, min(ceilings, default=None))
        if self.max_price is not None and price > self.max_price:
            raise PriceAboveMax(call.url, requirements.scheme, price, self.max_price)
        with self._lock:
            if self.budget is not None and self._committed + self._held + price > self.budget:
                raise BudgetExceeded(call.url, price, self._committed + self._held, self.budget)
            self._held += price  # a concurrent call cannot spend it meanwhile
        cost, spending = 0, self.spending
        hold: Hold | None = None
        try:
            if spending is not None:  # on disk before the payment leaves; concurrent calls wait on SQLite's lock
                hold = spending.hold(call.url, price, self.limits or SpendingLimits())
            call.attempt = payer.sign(call.request, requirements, call.url, price)
            cost = call.attempt.cost
            if spending is not None and hold is not None:
                call.attempt.settle = partial(spending.settle, hold)
        except BaseException:
            if spending is not None and hold is not None:
                spending.settle(hold, 0)
            raise
        finally:
            with self._lock:
                self._held -= price
                self._committed += cost
        call.request.headers[PAYMENT_SIGNATURE_HEADER] = PaymentPayload(
            accepted=requirements, payload=call.attempt.payload).header()

    def _complete(self, call: _Call, response: httpx.Response) -> None:
        """A paid answer: the payer records it; a paid URL is paid upfront next time."""
        attempt, call.attempt = call.attempt, None
        assert attempt is not None
        charge = self._payers[attempt.requirements.scheme].complete(attempt, response)
        if charge is not None:
            attempt.settle(charge)
        if response.is_success and PAYMENT_RESPONSE_HEADER in response.headers:
            self._paid[call.url] = attempt.requirements

    def _refused(self, call: _Call) -> None:
        """The daemon refused the call's payment (a 402): let it go; the hold is given back unless binding."""
        attempt, call.attempt = call.attempt, None
        if attempt is not None:
            payer = self._payers[attempt.requirements.scheme]
            payer.release(attempt)
            attempt.settle(attempt.price if payer.binding else 0)

    def _release(self, call: _Call) -> None:
        """Let go of the call's payment without an answer to record (memory only: never blocks)."""
        attempt, call.attempt = call.attempt, None
        if attempt is not None:
            self._payers[attempt.requirements.scheme].release(attempt)


ChannelAuth = PaymentAuth  # the name of earlier releases
