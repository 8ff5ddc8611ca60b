"""Spending limits: per call, per day (UTC) and in total, kept durably for every process of a consumer.

    limits = SpendingLimits(per_call=parse_tokens("0.01"), per_day=parse_tokens("1"), total=parse_tokens("20"))
    PaymentAuth(account, store=store, limits=limits)          # or MarketplaceClient(..., limits=limits)

`SpendingBook` keeps what was spent per UTC day in the client store's SQLite file (beside the
channels, WAL, `synchronous=FULL`), and the user's default limits (`marketplace consumer limits`).
Before a payment leaves the process, `hold` checks the limits and adds the most the call can cost
(the price; a metered call's cap) to the day's figure in ONE write transaction under SQLite's lock,
so concurrent calls, in one process or several, can never together pass a limit. When the real
charge is known `settle` gives the difference back (a refused call: all of it). A crash between the
two leaves the whole hold counted: the figures may overstate what was spent, never understate it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from marketplace.errors import SpendingLimitReached

__all__ = ["LIMIT_NAMES", "Hold", "SpendingBook", "SpendingLimits", "utc_day"]

LIMIT_NAMES = ("per_call", "per_day", "total")
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS spending (day TEXT PRIMARY KEY, spent TEXT NOT NULL)",  # YYYY-MM-DD (UTC), decimal
    "CREATE TABLE IF NOT EXISTS spending_limit (name TEXT PRIMARY KEY, amount TEXT NOT NULL)",
)


def utc_day(moment: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(moment))


@dataclass(frozen=True)
class SpendingLimits:
    """Token units; None = no limit. `per_call` bounds one call's price (a metered call's cap)."""

    per_call: int | None = None
    per_day: int | None = None
    total: int | None = None

    def __post_init__(self) -> None:
        for name in LIMIT_NAMES:
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"the {name} spending limit must be >= 0, got {value}")

    def over(self, other: SpendingLimits) -> SpendingLimits:
        """These limits where set, `other`'s elsewhere (command-line flags over the stored defaults)."""
        return SpendingLimits(*(getattr(self, name) if getattr(self, name) is not None else getattr(other, name)
                                for name in LIMIT_NAMES))


@dataclass(frozen=True)
class Hold:
    """What `hold` added to the figures of `day`, until `settle`d to the real charge."""

    day: str
    amount: int


class SpendingBook:
    """What one consumer spent, per UTC day and in total, and its default limits (see the module doc)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        for statement in _SCHEMA:
            self._db.execute(statement)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def spent(self) -> tuple[int, int]:
        """(spent today (UTC), spent in total), holds of calls in flight included."""
        with self._lock:
            return self._figures(utc_day(self._clock()))

    def hold(self, url: str, amount: int, limits: SpendingLimits) -> Hold:
        """Count `amount` as spent today, on disk, unless it takes the consumer past a limit
        (`SpendingLimitReached`, nothing recorded)."""
        day = utc_day(self._clock())
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                today, total = self._figures(day)
                for name, spent in (("per_call", 0), ("per_day", today), ("total", total)):
                    limit = getattr(limits, name)
                    if limit is not None and spent + amount > limit:
                        raise SpendingLimitReached(url, name, limit, spent, amount)
                if amount:
                    self._add(day, amount)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return Hold(day, amount)

    def settle(self, hold: Hold, charge: int) -> None:
        """The call held `hold` cost `charge` (<= the hold): give the rest back."""
        rest = hold.amount - min(charge, hold.amount)
        if rest:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._add(hold.day, -rest)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")

    def defaults(self) -> SpendingLimits:
        """The user's default limits (`marketplace consumer limits --per-day ...`)."""
        with self._lock:
            rows = dict(self._db.execute("SELECT name, amount FROM spending_limit").fetchall())
        return SpendingLimits(*(int(rows[name]) if name in rows else None for name in LIMIT_NAMES))

    def set_defaults(self, limits: SpendingLimits) -> None:
        """Store `limits` as the defaults (a None limit is removed)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            for name in LIMIT_NAMES:
                value = getattr(limits, name)
                if value is None:
                    self._db.execute("DELETE FROM spending_limit WHERE name = ?", (name,))
                else:
                    self._db.execute("INSERT OR REPLACE INTO spending_limit VALUES (?, ?)", (name, str(value)))
            self._db.execute("COMMIT")

    def _figures(self, day: str) -> tuple[int, int]:
        rows = self._db.execute("SELECT day, spent FROM spending").fetchall()
        return sum(int(spent) for d, spent in rows if d == day), sum(int(spent) for _, spent in rows)

    def _add(self, day: str, amount: int) -> None:
        row = self._db.execute("SELECT spent FROM spending WHERE day = ?", (day,)).fetchone()
        spent = max((int(row[0]) if row else 0) + amount, 0)
        self._db.execute("INSERT OR REPLACE INTO spending VALUES (?, ?)", (day, str(spent)))
