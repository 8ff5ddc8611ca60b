"""`ChannelAuth`: an `httpx.Auth` that pays a marketplace daemon for each call (x402 v2).

    auth = ChannelAuth(account, store=ChannelStore(), max_price=parse_tokens("0.01"), budget=parse_tokens("1"))
    httpx.Client(auth=auth).post(f"{daemon}/v1/models/{model}/infer", json=...)       # or httpx.AsyncClient

One generator (`auth_flow`) serves both the sync and the async httpx clients:

1. A URL paid before is paid upfront with the same offer; otherwise the request goes out unpaid,
   naming our channel in `PAYMENT-CHANNEL` so that the daemon's 402 carries its view of it.
2. On a 402 (the upfront offer is forgotten: its price may have changed), the daemon's view of the
   channel (`extra.channel`) is checked against our own record; then the first scheme the caller
   allows that is offered and usable is paid, and the request is sent again, once. A price above
   `max_price`, or one that would take the client past its `budget`, aborts before anything is signed.
3. A 2xx with PAYMENT-RESPONSE moves the channel's state forward (`ChannelStore.observe`,
   committed to disk before the caller sees the answer).

The daemon's numbers are never trusted. The store keeps our own record of the highest cumulative
amount ever signed on each channel (`signed`), raised on disk before a voucher leaves the process,
and no voucher is above `signed + price`. A view whose `authorized` or `consumed` is above
`signed` is a dispute (`ChannelDispute`): nothing is signed on that channel until the user
resolves it (`ChannelStore.accept_view` / `keep_own_view`, `marketplace consumer resolve`).

Concurrent calls on one channel each reserve a distinct cumulative amount under a lock: while
calls are in flight each new voucher is the highest reserved so far plus the price; when none is,
the next starts from what the daemon says was consumed (so credit given back for a failed call is
used again, below our record). Every voucher of a run of overlapping calls is at least `price` above
the previous one, so the daemon's rule `max(authorized, voucher) - consumed >= price` admits them in
any order. Processes sharing the store see each other's `signed`; two of them starting from the same
`consumed` may sign the same amount, and the one refused pays again one price higher after the 402.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass

import httpx
from eth_account.signers.local import LocalAccount

from marketplace.client.signing import (
    chain_id_of,
    channel_payload,
    exact_payload,
    license_payload,
)
from marketplace.client.store import ChannelRecord, ChannelStore
from marketplace.errors import (
    BudgetExceeded,
    ChannelExhausted,
    NoPaymentOption,
    PriceAboveMax,
)
from marketplace.payments.schemes.channel import CHANNEL_HEADER
from marketplace.payments.x402 import (
    PAYMENT_REQUIRED_HEADER,
    PAYMENT_RESPONSE_HEADER,
    PAYMENT_SIGNATURE_HEADER,
    PaymentPayload,
    PaymentRequirements,
    parse_payment_required,
    parse_payment_response,
)
from marketplace.types import SCHEMES, ChannelId, LicenseId, TokenAmount

__all__ = ["SCHEMES", "ChannelAuth"]

_MODEL_IN_PATH = re.compile(r"/v1/models/(0x[0-9a-fA-F]{64})(?:/|$)")


@dataclass
class _Book:
    """One channel in memory: its record (for its fixed terms) and the calls in flight on it."""

    record: ChannelRecord
    high: int = 0  # the highest cumulative amount reserved by the current run of overlapping calls
    in_flight: int = 0


@dataclass
class _Attempt:
    """One payment sent with a request, until its answer is in."""

    requirements: PaymentRequirements
    channel_id: int | None = None
    amount: int = 0


def _resource(request: httpx.Request) -> str:
    return str(request.url.copy_with(query=None, fragment=None))


def _hex_id(value: object) -> int | None:
    if isinstance(value, str) and value[:2] in ("0x", "0X") and 2 < len(value) <= 66:
        try:
            return int(value, 16)
        except ValueError:
            return None
    return None


class ChannelAuth(httpx.Auth):
    """Pays x402 402s from a payment channel (default), a license, or an EIP-3009 transfer.

    `schemes` is the caller's order of preference among "channel", "exact" and "license".
    `channel_id` pins the channel; otherwise the store's best unexpired channel for the model is
    used. `license_id` (or `licenses`, per model id) enables "license". `max_price` (per call) and
    `budget` (in total: what this client's signatures can cost, see `committed`) are in token units.
    `store` keeps channel state on disk (default `<data dir>/client/channels.db`).
    """

    requires_request_body = True
    requires_response_body = True

    def __init__(
        self,
        account: LocalAccount,
        *,
        store: ChannelStore | None = None,
        channel_id: int | None = None,
        schemes: Sequence[str] = ("channel",),
        license_id: int | None = None,
        licenses: Mapping[bytes, int] | None = None,
        max_price: int | None = None,
        budget: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        unknown = [scheme for scheme in schemes if scheme not in SCHEMES]
        if unknown or not schemes:
            raise ValueError(f"schemes must be among {SCHEMES}, got {list(schemes)}")
        self.account = account
        self.store = store if store is not None else ChannelStore()
        self.channel_id = ChannelId(channel_id) if channel_id is not None else None
        self.schemes = tuple(schemes)
        self.license_id = LicenseId(license_id) if license_id is not None else None
        self.licenses = {bytes(model): LicenseId(lic) for model, lic in (licenses or {}).items()}
        self.max_price = TokenAmount(max_price) if max_price is not None else None
        self.budget = TokenAmount(budget) if budget is not None else None
        self._committed = 0
        self._clock = clock
        self._lock = threading.Lock()
        self._books: dict[int, _Book] = {}
        self._paid: dict[str, tuple[PaymentRequirements, int | None]] = {}  # URL -> the offer that paid it

    # --- the flow (shared by httpx.Client and httpx.AsyncClient) ------------------------------

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        url = _resource(request)
        attempt = self._pay_upfront(request, url)
        try:
            response = yield request
            if response.status_code == 402 and PAYMENT_REQUIRED_HEADER in response.headers:
                self._release(attempt)
                attempt = None
                self._paid.pop(url, None)  # the offer paid upfront may be outdated (a new price)
                accepts = self._resync(response)
                attempt = self._pay(request, url, accepts)
                response = yield request
                if response.status_code == 402 and PAYMENT_REQUIRED_HEADER in response.headers:
                    self._release(attempt)
                    attempt = None
                    self._resync(response)  # so that the next call starts from the daemon's view
                    return
            self._complete(attempt, url, response)
            attempt = None
        finally:
            self._release(attempt)  # the request failed in transit, or the caller stopped

    # --- state --------------------------------------------------------------------------------

    def channel_state(self, channel_id: int) -> ChannelRecord | None:
        """The stored state of a channel (our own record and the daemon's view as last heard)."""
        return self.store.get(channel_id)

    @property
    def committed(self) -> int:
        """What this client's signatures can cost, in token units: each `exact` transfer signed, plus
        how far its vouchers raised each channel's record of what was signed (credit reused costs 0)."""
        return self._committed

    def _book(self, channel_id: int, requirements: PaymentRequirements, url: str) -> _Book:
        """The channel's book (lock held); its record is created from the offer when unknown."""
        book = self._books.get(channel_id)
        if book is None:
            chain_id, escrow = chain_id_of(requirements, url), str(requirements.extra.get("escrow", "")).lower()
            record = self.store.get(channel_id) or self.store.remember(ChannelRecord(
                channel_id=ChannelId(channel_id), chain_id=chain_id, escrow=escrow, payer=self.account.address,
                signer=self.account.address, payee=requirements.pay_to,
                model_id=bytes.fromhex(str(requirements.extra.get("modelId", "0x" + "00" * 32))[2:])))
            view = requirements.extra.get("channel")
            if isinstance(view, dict) and _hex_id(view.get("channelId")) == channel_id:
                self.store.observe(channel_id, view)  # the daemon's view came with the offer
            book = self._books[channel_id] = _Book(record)
        record = book.record
        if (record.chain_id, record.escrow) != (chain_id_of(requirements, url),
                                                str(requirements.extra.get("escrow", "")).lower()):
            raise NoPaymentOption(url, "channel", f"escrow {requirements.extra.get('escrow')} on {requirements.network}",
                                  f"channel {channel_id:#x} is in escrow {record.escrow} on chain {record.chain_id}")
        return book

    def _reserve(self, channel_id: int, requirements: PaymentRequirements, url: str) -> int:
        """A cumulative amount for one more call, distinct from every other call in flight, on disk as signed."""
        with self._lock:
            book = self._book(channel_id, requirements, url)
            self._check_budget(url, requirements)
            reservation = self.store.reserve(channel_id, requirements.amount, book.high if book.in_flight else 0)
            self._committed += reservation.added
            book.high = reservation.amount
            book.in_flight += 1
            return reservation.amount

    def _check_budget(self, url: str, requirements: PaymentRequirements) -> None:
        """Refuse a price that would take `committed` past the budget (lock held)."""
        if self.budget is not None and self._committed + requirements.amount > self.budget:
            raise BudgetExceeded(url, requirements.amount, self._committed, self.budget)

    def _release(self, attempt: _Attempt | None) -> None:
        if attempt is None or attempt.channel_id is None:
            return
        with self._lock:
            book = self._books.get(attempt.channel_id)
            if book is not None and book.in_flight > 0:
                book.in_flight -= 1
        attempt.channel_id = None  # released once

    def _resync(self, response: httpx.Response) -> tuple[PaymentRequirements, ...]:
        """The offers of a 402; the daemon's view of our channel moves ours forward (`ChannelStore.observe`).

        A view above our own record raises `ChannelDispute`. A view behind ours never moves it back:
        it predates answers we already have, or the daemon forgot vouchers it was paid with;
        cumulative vouchers make the higher amount right either way (a voucher pays only what is
        above the chain's `claimed`)."""
        required = parse_payment_required(response.headers[PAYMENT_REQUIRED_HEADER])
        for requirements in required.accepts:
            view = requirements.extra.get("channel") if requirements.scheme == "channel" else None
            channel_id = _hex_id(view.get("channelId")) if isinstance(view, dict) else None
            if channel_id is not None and isinstance(view, dict):
                self.store.observe(channel_id, view)
        return required.accepts

    # --- paying -------------------------------------------------------------------------------

    def _pay_upfront(self, request: httpx.Request, url: str) -> _Attempt | None:
        known = self._paid.get(url)
        if known is not None:
            try:
                return self._sign(request, url, *known)
            except ChannelExhausted:  # the deposit looks spent: ask the daemon first (a top-up?)
                pass
        channel_id = self._channel_for(url, None)
        if "channel" in self.schemes and channel_id is not None:
            request.headers[CHANNEL_HEADER] = f"0x{channel_id:064x}"
        return None

    def _pay(self, request: httpx.Request, url: str, accepts: Sequence[PaymentRequirements]) -> _Attempt:
        offered = {requirements.scheme: requirements for requirements in accepts}
        reasons = []
        for scheme in self.schemes:
            requirements = offered.get(scheme)
            if requirements is None:
                reasons.append(f"{scheme} is not offered")
                continue
            channel_id = self._channel_for(url, requirements) if scheme == "channel" else None
            if scheme == "channel" and channel_id is None:
                reasons.append(f"no open channel for this model in {self.store.path}")
                continue
            if scheme == "license" and self._license_for(requirements) is None:
                reasons.append("no license given")
                continue
            return self._sign(request, url, requirements, channel_id)
        raise NoPaymentOption(url, list(self.schemes), sorted(offered), "; ".join(reasons))

    def _sign(self, request: httpx.Request, url: str, requirements: PaymentRequirements,
              channel_id: int | None) -> _Attempt:
        """Sign `requirements` for this request (every payment goes through here: `max_price` and the budget)."""
        if self.max_price is not None and requirements.amount > self.max_price:
            raise PriceAboveMax(url, requirements.scheme, requirements.amount, self.max_price)
        now = int(self._clock())
        attempt = _Attempt(requirements)
        if requirements.scheme == "channel":
            assert channel_id is not None
            attempt.amount = self._reserve(channel_id, requirements, url)
            attempt.channel_id = channel_id
            try:
                payload = channel_payload(self.account, requirements, url, channel_id, attempt.amount)
            except BaseException:
                self._release(attempt)
                raise
            request.headers[CHANNEL_HEADER] = f"0x{channel_id:064x}"
        elif requirements.scheme == "exact":
            with self._lock:  # a signed transfer may be settled even if refused: it counts at once
                self._check_budget(url, requirements)
                payload = exact_payload(self.account, requirements, url, now)
                self._committed += requirements.amount
        else:
            license_id = self._license_for(requirements)
            assert license_id is not None
            payload = license_payload(self.account, requirements, url, license_id, request, now)
        request.headers[PAYMENT_SIGNATURE_HEADER] = PaymentPayload(accepted=requirements, payload=payload).header()
        return attempt

    def _complete(self, attempt: _Attempt | None, url: str, response: httpx.Response) -> None:
        """A paid answer: record the daemon's view of the channel, then let the next call go."""
        if attempt is None:
            return
        header = response.headers.get(PAYMENT_RESPONSE_HEADER)
        if response.is_success and header is not None:
            settlement = parse_payment_response(header)
            view = (settlement.extra or {}).get("channel")
            if attempt.channel_id is not None and isinstance(view, dict):
                self.store.observe(attempt.channel_id, view)  # on disk before the caller sees the answer
            self._paid[url] = (attempt.requirements, attempt.channel_id)
        self._release(attempt)

    def _channel_for(self, url: str, requirements: PaymentRequirements | None) -> int | None:
        if self.channel_id is not None:
            return self.channel_id
        if requirements is not None:
            model = requirements.extra.get("modelId")
            if not isinstance(model, str) or len(model) != 66:
                return None
            record = self.store.find(bytes.fromhex(model[2:]), self.account.address,
                                     chain_id=chain_id_of(requirements, url),
                                     escrow=str(requirements.extra.get("escrow", "")), now=self._clock())
        else:
            match = _MODEL_IN_PATH.search(httpx.URL(url).path)
            record = self.store.find(bytes.fromhex(match.group(1)[2:]), self.account.address,
                                     now=self._clock()) if match else None
        return record.channel_id if record is not None else None

    def _license_for(self, requirements: PaymentRequirements) -> LicenseId | None:
        model = requirements.extra.get("modelId")
        if isinstance(model, str) and len(model) == 66:
            found = self.licenses.get(bytes.fromhex(model[2:]))
            if found is not None:
                return found
        return self.license_id
