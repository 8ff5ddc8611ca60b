"""The client side of the `channel` scheme: cumulative vouchers on a payment channel, never above
our own durable record of what was signed plus the price.

The daemon's numbers are never trusted. The store (`ChannelStore`, the only place that touches
the disk) keeps our own record of the highest cumulative amount ever signed on each channel
(`signed`), raised on disk before a voucher leaves the process, and no voucher is above
`signed + price`. A daemon's view (a 402's `extra.channel`, a PAYMENT-RESPONSE's) moves the
record forward; one whose `authorized` or `consumed` is above `signed` is a dispute
(`ChannelDispute`): nothing is signed on that channel until the user resolves it
(`ChannelStore.accept_view` / `keep_own_view`, `marketplace consumer resolve`).

Concurrent calls on one channel each reserve a distinct cumulative amount: reservations are
serialised by a lock held across the store's commit (so taken only where blocking is allowed),
while calls are in flight each new voucher is the highest reserved so far plus the price; when
none is, the next starts from what the daemon says was consumed (so credit given back for a failed
call is used again, below our record). Every voucher of a run of overlapping calls is at least
`price` above the previous one, so the daemon's rule `max(authorized, voucher) - consumed >= price`
admits them in any order. Processes sharing the store see each other's `signed`; two of them
starting from the same `consumed` may sign the same amount, and the one refused pays again one
price higher after the 402.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import httpx
from eth_account.signers.local import LocalAccount

from marketplace.client.schemes.base import Attempt, SchemePayer, charged, model_of
from marketplace.client.signing import chain_id_of, channel_payload, voucher_domain
from marketplace.client.store import ChannelRecord, ChannelStore, Reservation
from marketplace.errors import NoPaymentOption
from marketplace.payments.schemes.channel import CHANNEL_HEADER
from marketplace.payments.x402 import PAYMENT_RESPONSE_HEADER, PaymentRequirements, parse_payment_response
from marketplace.types import ChannelId, TokenAmount

__all__ = ["ChannelAttempt", "ChannelPayer"]

_MODEL_IN_PATH = re.compile(r"/v1/models/0x([0-9a-fA-F]{64})(?:/|$)")


@dataclass(kw_only=True)
class ChannelAttempt(Attempt):
    """A voucher for the cumulative `amount` on `channel_id`, in flight until answered or released."""

    channel_id: ChannelId
    amount: TokenAmount
    released: bool = False


@dataclass
class _Book:
    """One channel in memory: its record (for its fixed terms) and the calls in flight on it."""

    record: ChannelRecord
    high: int = 0  # the highest cumulative amount reserved by the current run of overlapping calls
    in_flight: int = 0


def _hex_id(value: object) -> int | None:
    if isinstance(value, str) and value[:2] in ("0x", "0X") and 2 < len(value) <= 66:
        try:
            return int(value, 16)
        except ValueError:
            return None
    return None


def _offer(requirements: PaymentRequirements) -> tuple[bytes | None, str, str]:
    """What makes two offers payable from the same channel: the model, the network, the escrow."""
    return model_of(requirements), requirements.network, str(requirements.extra.get("escrow", "")).lower()


class ChannelPayer(SchemePayer[ChannelAttempt]):
    """Pays from `channel_id` when given, else from the store's best unexpired channel for the
    offer's model (the one `pays` chose on the last 402 for that offer)."""

    name = "channel"
    _owed: ClassVar[bool] = False  # vouchers start from our own record of charges (metered), not the daemon's consumed

    def __init__(self, account: LocalAccount, store: ChannelStore, *, channel_id: int | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(account, clock)
        self.store = store
        self.channel_id = ChannelId(channel_id) if channel_id is not None else None
        self.missing = f"no open channel for this model in {store.path}"
        self._reserving = threading.Lock()  # held across the store's commit: only where blocking is allowed
        self._lock = threading.Lock()  # the books' counters only: never held across I/O
        self._books: dict[int, _Book] = {}
        self._chosen: dict[tuple[bytes | None, str, str], ChannelId] = {}  # offer -> the channel that pays it

    def announce(self, request: httpx.Request, url: str) -> None:
        """Name our channel in PAYMENT-CHANNEL, so that the 402 carries the daemon's view of it."""
        channel_id = self.channel_id
        if channel_id is None and (match := _MODEL_IN_PATH.search(request.url.path)) is not None:
            record = self.store.find(bytes.fromhex(match.group(1)), self.account.address, now=self._clock())
            channel_id = record.channel_id if record is not None else None
        if channel_id is not None:
            request.headers[CHANNEL_HEADER] = f"0x{channel_id:064x}"

    def offered(self, requirements: PaymentRequirements) -> None:
        """The daemon's view of our channel moves ours forward (`ChannelStore.observe`).

        A view above our own record raises `ChannelDispute`. A view behind ours never moves it back:
        it predates answers we already have, or the daemon forgot vouchers it was paid with;
        cumulative vouchers make the higher amount right either way (a voucher pays only what is
        above the chain's `claimed`)."""
        view = requirements.extra.get("channel")
        channel_id = _hex_id(view.get("channelId")) if isinstance(view, dict) else None
        if channel_id is not None and isinstance(view, dict):
            self.store.observe(channel_id, view)

    def pays(self, requirements: PaymentRequirements, url: str) -> bool:
        """Whether a channel pays this offer; chooses it (the store's, unless one was given)."""
        if self.channel_id is not None:
            return True
        model = model_of(requirements)
        record = self.store.find(model, self.account.address, chain_id=chain_id_of(requirements, url),
                                 escrow=str(requirements.extra.get("escrow", "")),
                                 now=self._clock()) if model is not None else None
        if record is not None:
            self._chosen[_offer(requirements)] = record.channel_id
        return record is not None

    def sign(self, request: httpx.Request, requirements: PaymentRequirements, url: str, price: int) -> ChannelAttempt:
        """A voucher `price` above the calls in flight (or what was consumed), on disk as signed first."""
        channel_id = self.channel_id if self.channel_id is not None else self._chosen.get(_offer(requirements))
        if channel_id is None:
            raise NoPaymentOption(url, self.name, requirements.extra.get("modelId"), self.missing)
        domain = voucher_domain(requirements, url)
        reservation = self._reserve(channel_id, requirements, url, price)
        attempt = ChannelAttempt(requirements=requirements, payload={}, cost=reservation.added, price=price,
                                 channel_id=channel_id, amount=reservation.amount)
        try:
            attempt.payload = channel_payload(self.account, domain, channel_id, reservation.amount)
        except BaseException:
            self.release(attempt)
            raise
        request.headers[CHANNEL_HEADER] = f"0x{channel_id:064x}"
        return attempt

    def complete(self, attempt: ChannelAttempt, response: httpx.Response) -> int | None:
        """A paid answer: its view of the channel is on disk before the caller sees the answer."""
        try:
            header = response.headers.get(PAYMENT_RESPONSE_HEADER)
            if response.is_success and header is not None:
                view = (parse_payment_response(header).extra or {}).get("channel")
                if isinstance(view, dict):
                    self.store.observe(attempt.channel_id, view)
        finally:
            self.release(attempt)
        return charged(attempt, response)

    def release(self, attempt: ChannelAttempt) -> None:
        with self._lock:
            if attempt.released:
                return
            attempt.released = True
            book = self._books.get(attempt.channel_id)
            if book is not None and book.in_flight > 0:
                book.in_flight -= 1

    def _reserve(self, channel_id: ChannelId, requirements: PaymentRequirements, url: str,
                 price: int) -> Reservation:
        """A cumulative amount for one more call, distinct from every other call in flight, on disk as signed."""
        with self._reserving:
            book = self._book(channel_id, requirements, url)
            with self._lock:
                floor = book.high if book.in_flight else 0
            reservation = self.store.reserve(channel_id, price, floor, owed=self._owed)
            with self._lock:
                book.high = reservation.amount
                book.in_flight += 1
        return reservation

    def _book(self, channel_id: ChannelId, requirements: PaymentRequirements, url: str) -> _Book:
        """The channel's book (`_reserving` held); its record is created from the offer when unknown."""
        chain_id, escrow = chain_id_of(requirements, url), str(requirements.extra.get("escrow", "")).lower()
        book = self._books.get(channel_id)
        if book is None:
            record = self.store.get(channel_id)
            if record is None:
                record = self.store.remember(ChannelRecord(
                    channel_id=channel_id, chain_id=chain_id, escrow=escrow, payer=self.account.address,
                    signer=self.account.address, payee=requirements.pay_to,
                    model_id=model_of(requirements) or bytes(32)))
                self.offered(requirements)  # the daemon's view came with the offer
            book = _Book(record)
            with self._lock:
                self._books[channel_id] = book
        if (book.record.chain_id, book.record.escrow) != (chain_id, escrow):
            offered = f"escrow {requirements.extra.get('escrow')} on {requirements.network}"
            raise NoPaymentOption(url, self.name, offered, f"channel {channel_id:#x} is in escrow "
                                  f"{book.record.escrow} on chain {book.record.chain_id}")
        return book
