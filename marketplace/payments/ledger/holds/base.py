"""The interface of the exact-hold store: EIP-3009 authorizations reserved against payers' balances.

A hold is one authorization the daemon has accepted and not yet seen expire: (payer, nonce) is
unique, so a nonce is served at most once by every replica sharing the database. A reservation is
judged at a block N whose number, timestamp and the payer's ``balanceOf`` at N the caller read
from the chain, and is granted iff

    value + sum(value of the payer's holds still to be paid from balance@N) <= balance@N

where a hold is still to be paid from balance@N if it is unsettled and could still be mined
(``validBefore > timestamp(N)``) or it was settled in a block after N. A hold settled at or
before N is in balance@N already; an unsettled one with ``validBefore <= timestamp(N)`` can no
longer be mined after N (the token refuses it), and if it was mined at or before N, balance@N
shows it. So the sum of the values of the authorizations served never exceeds what the payer
could pay, however many replicas reserve at once: each reservation is one transaction that
excludes the others of the same payer.

Rows are kept until ``validBefore + retention`` (timestamp of the block judged at), well after
verification refuses the authorization as expired, so a replay never finds its row gone.

A hold whose call was not served although its transfer may be or was mined (the settlement was
not mined in time, or the model failed after someone else had submitted the authorization) is
*abandoned*: it keeps counting as before, and the first request that comes back with the same
authorization once its transfer is on chain can `adopt` it, exactly once, and be served.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

__all__ = ["MAX_VALID_BEFORE", "RETENTION_SECONDS", "BlockHead", "ExactHolds", "Hold"]

MAX_VALID_BEFORE = 2**63 - 1  # stored validBefore is capped: a later one ("never expires") means the same
RETENTION_SECONDS = 3600


@dataclass(frozen=True, slots=True)
class Hold:
    """One EIP-3009 authorization reserved against its payer's balance."""

    payer: bytes  # 20 bytes
    nonce: bytes  # 32 bytes
    value: int
    valid_before: int  # capped at MAX_VALID_BEFORE
    settled_block: int | None = None  # the block its transfer was mined in, once known
    abandoned: bool = False  # its call was not served: a request with the same authorization may adopt it

    def __post_init__(self) -> None:
        if len(self.payer) != 20 or len(self.nonce) != 32:
            raise ValueError("a hold names a 20-byte payer and a 32-byte nonce")
        object.__setattr__(self, "valid_before", min(self.valid_before, MAX_VALID_BEFORE))

    @property
    def payer_hex(self) -> str:
        return "0x" + self.payer.hex()


@dataclass(frozen=True, slots=True)
class BlockHead:
    """The block a reservation is judged at: its number and timestamp."""

    number: int
    timestamp: int


class ExactHolds(abc.ABC):
    """A durable store of exact holds shared by every replica (async; one event loop per store).

    Every change is committed to stable storage before the method returns.
    """

    @abc.abstractmethod
    async def reserve(self, hold: Hold, head: BlockHead, balance: int) -> None:
        """Insert the unsettled `hold` iff it fits in `balance` (the payer's at `head`), atomically.

        Raises AuthorizationHeld if (payer, nonce) is held already, BalanceCommitted if it does
        not fit. Also drops the rows whose retention ended by `head`.
        """

    @abc.abstractmethod
    async def record_paid(self, hold: Hold, settled_block: int) -> None:
        """Insert `hold` as settled in `settled_block` (a transfer someone else submitted).

        No balance check: it is paid. Raises AuthorizationHeld if (payer, nonce) is held already.
        """

    @abc.abstractmethod
    async def settle(self, payer: bytes, nonce: bytes, block: int) -> None:
        """Record that the hold's transfer was mined in `block`."""

    @abc.abstractmethod
    async def release(self, payer: bytes, nonce: bytes) -> None:
        """Its call was not served and nothing was sent: drop the hold if unsettled, else abandon it."""

    @abc.abstractmethod
    async def abandon(self, payer: bytes, nonce: bytes) -> None:
        """Its call was not served, but its transfer may still be mined: keep the hold, abandoned."""

    @abc.abstractmethod
    async def adopt(self, payer: bytes, nonce: bytes, settled_block: int) -> bool:
        """Take over an abandoned hold whose transfer was mined in `settled_block`, atomically: True
        for the one caller that did (it serves the call), False if the hold is not abandoned."""

    @abc.abstractmethod
    async def hold(self, payer: bytes, nonce: bytes) -> Hold | None:
        """The hold of (payer, nonce), if any."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the database. Idempotent."""
