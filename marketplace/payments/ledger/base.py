"""The credit ledger's interface: what the paid-inference daemon asks of its voucher store.

Per payment channel the ledger keeps `authorized` (the highest voucher amount seen, with its
signature), per deposit seen the highest voucher accepted under it (so the claimer can pay the
best one within the deposit after a reorg rolled a top-up back), `consumed` (the sum of the
prices of the calls served), `earned` (the best voucher seen whose amount the calls served cover,
``earned <= consumed``, with its signature; from before partial claims, see docs/ledger.md) and
`claimed` (what the claimer has claimed on-chain, confirmed). The claimer claims the stored voucher
for ``payout = consumed`` (PaymentChannels pays any payout up to a voucher's amount), so a claim
takes exactly what the calls served are worth.
A call with a voucher for the cumulative amount A and a price P, on a channel whose deposit on
chain is D, is admitted iff ``min(max(authorized, A), D) - consumed >= P`` (DESIGN.md section 4,
capped by the deposit); the signature, the channel's state on-chain and ``A <= D`` are checked by
the caller before it asks.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from marketplace.types import ChannelId, TokenAmount

__all__ = [
    "SIGNATURE_LENGTH",
    "UINT256_MAX",
    "Credit",
    "CreditLedger",
    "PendingCall",
    "check_signature",
    "check_uint256",
    "display_url",
]

UINT256_MAX = 2**256 - 1
SIGNATURE_LENGTH = 65  # r, s, v
_NO_MINIMUM = TokenAmount(0)


@dataclass(frozen=True, slots=True)
class Credit:
    """One channel's row in the ledger."""

    channel_id: ChannelId
    authorized: TokenAmount  # the highest voucher amount accepted
    consumed: TokenAmount  # the sum of the prices of the calls admitted and not refunded
    claimed: TokenAmount  # what has been claimed on-chain, as recorded by the claimer
    # the voucher signature for `authorized`; None until a voucher raised it. A bearer credential
    # for `authorized - consumed`: only the claimer reads it, nothing shows it (not even repr).
    signature: bytes | None = field(repr=False)
    # the best voucher the calls served cover (amount <= consumed): what the claimer claims
    earned: TokenAmount = TokenAmount(0)  # noqa: RUF009
    earned_signature: bytes | None = field(default=None, repr=False)  # None while `earned` is 0

    @property
    def available(self) -> TokenAmount:
        """Credit left for calls without a higher voucher."""
        return TokenAmount(self.authorized - self.consumed)

    @property
    def unclaimed(self) -> TokenAmount:
        """What the calls served and not yet claimed are worth: what a partial claim of the stored
        voucher (``payout = consumed``) would pay now (never negative)."""
        return TokenAmount(max(self.consumed - self.claimed, 0))


@dataclass(frozen=True, slots=True)
class PendingCall:
    """One admitted metered call: its cap reserved on `channel_id`, `charge` as last checkpointed.

    Recorded by the admission that reserves its cap and deleted by the refund that settles it, in
    the same transactions (`CreditLedger.admit`, `refund`): ledger/metered.py says why."""

    call_id: bytes  # 16 random bytes
    owner: str  # the daemon that serves it (settle_unfinished settles only its own)
    pid: int  # the daemon process (one of its workers) that serves it
    channel_id: ChannelId
    cap: TokenAmount
    charge: TokenAmount = TokenAmount(0)  # noqa: RUF009


class CreditLedger(abc.ABC):
    """A durable, concurrency-safe store of per-channel credit (async; one event loop per ledger).

    Every method that changes the ledger returns only once the change is committed to stable
    storage, so a response sent after `admit` returns is never lost, even on SIGKILL.
    """

    @abc.abstractmethod
    async def admit(
        self,
        channel_id: ChannelId,
        amount: TokenAmount,
        signature: bytes,
        price: TokenAmount,
        *,
        deposit: TokenAmount | None = None,
        now: int | None = None,
        call: PendingCall | None = None,
    ) -> Credit:
        """Admit one call of `price` with a voucher for the cumulative `amount`, atomically.

        Raises `authorized` to `amount` (storing `signature`, and keeping the voucher as the best
        under `deposit`) when higher, adds `price` to `consumed`, and raises `earned` to the best
        of the stored `authorized` voucher and this one whose amount the new `consumed` covers, iff
        ``min(max(authorized, amount), deposit) - consumed >= price`` (`deposit`: the channel's
        deposit on chain now; None: no cap) and no cooperative close holds the channel at `now`
        (unix seconds, chain time; None: the wall clock); otherwise changes nothing and raises
        InsufficientCredit with the values, or ChannelClosing. The channel's row is created on
        first use. With `call` (a metered call on `channel_id` whose cap is `price`), the call is
        recorded in the same transaction, iff admitted.
        If the caller is cancelled while its admission is being committed, the ledger gives the
        price back by itself (the voucher itself stays accepted).
        """

    @abc.abstractmethod
    async def close_channel(self, channel_id: ChannelId, until: int) -> Credit:
        """Refuse every admission on `channel_id` until `until` (unix seconds, chain time; a later
        `until` extends it, an earlier one changes nothing), atomically with reading the row, which
        is returned (created if the ledger has never seen the channel). Once this returns, no
        replica admits a call on the channel before `until`, so `consumed` can only go down
        (refunds): the daemon co-signs a cooperative close for it."""

    @abc.abstractmethod
    async def refund(self, channel_id: ChannelId, price: TokenAmount, *, call: PendingCall | None = None) -> Credit:
        """Give back the price of a call that failed (`consumed` never goes below 0); with `call`
        (a metered call on `channel_id`), delete its record in the same transaction.

        `earned` stays at most `consumed`: if the refund takes `consumed` below it, it falls back
        to the voucher it replaced when that one is still covered, else to nothing (the next
        admission earns again from the stored voucher).

        Not idempotent: the caller refunds each admitted call at most once. Raises
        CreditNotFound for a channel the ledger has never seen.
        """

    @abc.abstractmethod
    async def checkpoint_call(self, call: PendingCall, charge: TokenAmount) -> None:
        """Record what the metered `call` has cost so far (at most its cap): what a restart after a
        crash settles it at (ledger/metered.py, `settle_unfinished`)."""

    @abc.abstractmethod
    async def unfinished_calls(self, owner: str) -> list[PendingCall]:
        """The metered calls of `owner` recorded and not refunded (in flight, or left by a crash)."""

    @abc.abstractmethod
    async def reserved_by_calls(self, channel_id: ChannelId) -> TokenAmount:
        """What the channel's metered calls in flight (any daemon) hold beyond their checkpointed
        charge, ``sum(cap - charge)``: counted as `consumed` but may still be given back, so the
        claimer must not take it."""

    @abc.abstractmethod
    async def credit(self, channel_id: ChannelId) -> Credit | None:
        """The channel's row, or None if the ledger has never seen the channel."""

    @abc.abstractmethod
    async def claimable(self, min_unclaimed: TokenAmount = _NO_MINIMUM) -> list[Credit]:
        """Channels holding a voucher whose ``consumed - claimed`` (`Credit.unclaimed`) is positive
        and at least `min_unclaimed`, by channel id: a partial claim of the stored voucher for
        ``payout = consumed`` takes exactly what was served."""

    @abc.abstractmethod
    async def best_voucher(self, channel_id: ChannelId, at_most: TokenAmount) -> tuple[TokenAmount, bytes] | None:
        """The highest voucher kept for the channel (the best under each deposit seen) whose
        amount is at most `at_most` (the deposit on chain), as (amount, signature); None if none."""

    @abc.abstractmethod
    async def record_claim(self, channel_id: ChannelId, amount: TokenAmount) -> None:
        """Record that the voucher for `amount` was claimed (confirmed): ``claimed = max(claimed,
        amount)``, and forget the channel's vouchers below `amount` (they can pay nothing more).

        Idempotent and monotone, so the claimer can record a claim again after a crash or learn
        one from chain events; creates the channel's row if needed.
        """

    @abc.abstractmethod
    async def reset_claim(self, channel_id: ChannelId, claimed: TokenAmount) -> None:
        """Set `claimed` to what the chain says now, even lower (a reorg rolled a claim back), so
        the claimer claims again. No-op for a channel the ledger has never seen."""

    @abc.abstractmethod
    async def check_writable(self) -> None:
        """Commit a change that alters no channel, proving the store takes durable writes now
        (the daemon's readiness); LedgerUnavailable if it does not (disk full, read-only, down)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish every pending change, then release the database. Idempotent."""

    async def __aenter__(self) -> CreditLedger:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def check_uint256(name: str, value: int) -> None:
    """ValueError unless `value` is an int in [0, 2**256 - 1] (amounts and channel ids)."""
    if type(value) is int and 0 <= value <= UINT256_MAX:  # the hot path: one test
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= value <= UINT256_MAX:
        raise ValueError(f"{name} must fit in a uint256, got {value}")


def check_signature(signature: bytes) -> None:
    """ValueError unless `signature` is 65 bytes (it is checked cryptographically by the caller)."""
    if not isinstance(signature, bytes | bytearray) or len(signature) != SIGNATURE_LENGTH:
        shown = len(signature) if isinstance(signature, bytes | bytearray) else type(signature).__name__
        raise ValueError(f"a voucher signature has {SIGNATURE_LENGTH} bytes, got {shown}")


def display_url(url: str) -> str:
    """`url` as it may be shown in messages and logs: any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
        items = parts.query.split("&") if parts.query else []
        secret_query = any(item.partition("=")[0].lower() == "password" for item in items)
        if parts.password is None and not secret_query:
            return url
        netloc = parts.netloc
        if parts.password is not None:
            netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
        query = "&".join("password=***" if item.partition("=")[0].lower() == "password" else item for item in items)
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:  # not even a URL: show only its scheme
        return url.partition(":")[0] + ":<unparsable URL>"
