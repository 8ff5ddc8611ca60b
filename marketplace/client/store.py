"""The consumer's durable record of its payment channels: a small SQLite file, keyed by channel id.

Per channel it keeps the fixed terms (chain, escrow, payer, signer, payee, model, salt), what the
chain said (deposit, expiry), the daemon's view of the channel's credit, `authorized` (the
highest voucher the daemon holds) and `consumed` (what its calls used; never below the chain's
`claimed`: a claimed voucher is public, so the daemon refuses any voucher not above it), and the
client's own record, `signed`: the highest cumulative amount it ever signed on the channel.

`signed` is what the client trusts. `reserve` picks the amount of the next voucher and raises
`signed` to it in the same transaction, so the record is on disk before the voucher leaves the
process, and no voucher is ever above `signed + price`. The daemon's view moves forward only
(`observe`), and only while it stays within `signed`: a view claiming more is a dispute, recorded
(`dispute`) and raised as `ChannelDispute`; the channel signs nothing more until the user resolves
it (`accept_view`: the daemon's figures become ours; `keep_own_view`: they are dropped). `resync`
takes a view as the whole truth for the credit fields (tools, tests); it never touches `signed`.

Every change is committed before the method returns (WAL, `synchronous=FULL`: on disk once
COMMIT returns), so a crash right after signing or after a paid call loses nothing. Several
processes may share the file: each change is one short write transaction under SQLite's lock.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Self

from web3 import Web3

from marketplace.chain.contracts import ChannelTerms
from marketplace.config import data_dir
from marketplace.errors import ChannelDispute, ChannelExhausted, ConfigError
from marketplace.types import ChannelId, ModelId, TokenAmount

__all__ = ["ChannelRecord", "ChannelStore", "DaemonView", "Reservation", "default_store_path"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS channel (
    channel_id TEXT PRIMARY KEY,          -- 0x + 64 hex digits
    chain_id   INTEGER NOT NULL,
    escrow     TEXT NOT NULL,             -- PaymentChannels address, lowercase
    payer      TEXT NOT NULL,
    signer     TEXT NOT NULL,
    payee      TEXT NOT NULL,
    model_id   TEXT NOT NULL,             -- 0x + 64 hex digits
    salt       TEXT NOT NULL,             -- decimal
    deposit    TEXT NOT NULL,             -- decimal token units (uint256 as text)
    expiry     INTEGER NOT NULL,
    authorized TEXT NOT NULL,             -- the daemon's view: highest voucher it holds
    consumed   TEXT NOT NULL,             -- the daemon's view: what its calls used
    updated_at REAL NOT NULL
)
"""
_ADDED = {  # columns added since the first release (`_migrate` adds them to every file)
    "signed": "TEXT NOT NULL DEFAULT '0'",  # ours: the highest cumulative amount ever signed
    "disputed_authorized": "TEXT",  # a daemon's view above `signed`, until the user resolves it (else NULL)
    "disputed_consumed": "TEXT",
    "owed": "TEXT NOT NULL DEFAULT '0'",  # ours, metered calls: the sum of their charges as we checked them
    "slack": "TEXT NOT NULL DEFAULT '0'",  # ours: what streams we cut short may have been charged beyond `owed`
}
_COLUMNS = ("channel_id", "chain_id", "escrow", "payer", "signer", "payee", "model_id", "salt", "deposit", "expiry",
            "authorized", "consumed", "updated_at", *_ADDED)


def default_store_path() -> Path:
    """`<data dir>/client/channels.db` ($MARKETPLACE_DATA_DIR overrides the data dir)."""
    return data_dir() / "client" / "channels.db"


@dataclass(frozen=True)
class DaemonView:
    """A daemon's figures for a channel: the highest voucher it holds and what its calls used."""

    authorized: TokenAmount
    consumed: TokenAmount


@dataclass(frozen=True)
class ChannelRecord:
    channel_id: ChannelId
    chain_id: int
    escrow: str
    payer: str
    signer: str
    payee: str
    model_id: bytes
    salt: int = 0
    deposit: TokenAmount = TokenAmount(0)  # noqa: RUF009 - a NewType call is the value itself
    expiry: int = 0
    authorized: TokenAmount = TokenAmount(0)  # noqa: RUF009
    consumed: TokenAmount = TokenAmount(0)  # noqa: RUF009
    updated_at: float = 0.0
    signed: TokenAmount = TokenAmount(0)  # noqa: RUF009 - ours: the highest voucher ever signed
    dispute: DaemonView | None = None  # a daemon's view above `signed`, until the user resolves it
    owed: TokenAmount = TokenAmount(0)  # noqa: RUF009 - ours, metered calls: what their charges add up to
    slack: TokenAmount = TokenAmount(0)  # noqa: RUF009 - cut streams: tokens sent but never received, at most

    @classmethod
    def opened(cls, chain_id: int, escrow: str, terms: ChannelTerms, deposit: int, expiry: int) -> ChannelRecord:
        """The record of a channel just opened with `terms` (no credit used yet)."""
        return cls(terms.channel_id, chain_id, escrow.lower(), terms.payer, terms.signer, terms.payee,
                   bytes(terms.model_id), terms.salt, TokenAmount(deposit), expiry)

    @property
    def terms(self) -> ChannelTerms:
        return ChannelTerms(Web3.to_checksum_address(self.payer), Web3.to_checksum_address(self.signer),
                            Web3.to_checksum_address(self.payee), ModelId(self.model_id), self.salt)

    @property
    def available(self) -> int:
        """Deposit not yet promised to the daemon."""
        return max(self.deposit - max(self.authorized, self.consumed, self.signed), 0)

    def check_dispute(self) -> None:
        """Raise `ChannelDispute` when a daemon's view awaits the user's decision."""
        if self.dispute is not None:
            raise ChannelDispute(self.channel_id, self.signed, self.dispute.authorized, self.dispute.consumed)


@dataclass(frozen=True)
class Reservation:
    """The cumulative amount of the next voucher, how much it raised our record, and the record after."""

    amount: TokenAmount
    added: TokenAmount
    record: ChannelRecord


def _row(record: ChannelRecord) -> tuple[Any, ...]:
    dispute = record.dispute
    return (f"0x{record.channel_id:064x}", record.chain_id, record.escrow.lower(), record.payer, record.signer,
            record.payee, "0x" + bytes(record.model_id).hex(), str(record.salt), str(record.deposit), record.expiry,
            str(record.authorized), str(record.consumed), record.updated_at, str(record.signed),
            str(dispute.authorized) if dispute else None, str(dispute.consumed) if dispute else None,
            str(record.owed), str(record.slack))


def _record(row: tuple[Any, ...]) -> ChannelRecord:
    values = dict(zip(_COLUMNS, row, strict=True))
    return ChannelRecord(
        channel_id=ChannelId(int(values["channel_id"], 16)), chain_id=int(values["chain_id"]),
        escrow=values["escrow"], payer=values["payer"], signer=values["signer"], payee=values["payee"],
        model_id=bytes.fromhex(values["model_id"][2:]), salt=int(values["salt"]),
        deposit=TokenAmount(int(values["deposit"])), expiry=int(values["expiry"]),
        authorized=TokenAmount(int(values["authorized"])), consumed=TokenAmount(int(values["consumed"])),
        updated_at=float(values["updated_at"]), signed=TokenAmount(int(values["signed"])),
        dispute=DaemonView(TokenAmount(int(values["disputed_authorized"])),
                           TokenAmount(int(values["disputed_consumed"])))
        if values["disputed_authorized"] is not None else None,
        owed=TokenAmount(int(values["owed"])), slack=TokenAmount(int(values["slack"])),
    )


def _migrate(db: sqlite3.Connection) -> None:
    """Add the columns a file of an older release lacks; its `signed` starts at the daemon's view as last
    heard (what that release trusted)."""
    present = {row[1] for row in db.execute("PRAGMA table_info(channel)")}
    missing = [name for name in _ADDED if name not in present]
    if not missing:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        for name in missing:
            db.execute(f"ALTER TABLE channel ADD COLUMN {name} {_ADDED[name]}")
        if "signed" in missing:
            for channel_id, authorized, consumed in db.execute(
                    "SELECT channel_id, authorized, consumed FROM channel").fetchall():
                db.execute("UPDATE channel SET signed = ? WHERE channel_id = ?",
                           (str(max(int(authorized), int(consumed))), channel_id))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _uint(view: Mapping[str, Any], key: str) -> int | None:
    value = view.get(key)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


class ChannelStore:
    """The channels of one consumer (see the module doc). Thread-safe; one connection per store."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_store_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        _migrate(self._db)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- reads ---------------------------------------------------------------------------------

    def get(self, channel_id: int) -> ChannelRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM channel WHERE channel_id = ?",
                                   (f"0x{channel_id:064x}",)).fetchone()
        return _record(row) if row else None

    def all(self) -> list[ChannelRecord]:
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM channel ORDER BY updated_at").fetchall()
        return [_record(row) for row in rows]

    def find(self, model_id: bytes, signer: str, *, chain_id: int | None = None, escrow: str | None = None,
             now: float | None = None) -> ChannelRecord | None:
        """The channel to pay `model_id` with as `signer`: unexpired, the most deposit left."""
        moment = time.time() if now is None else now
        candidates = [
            record for record in self.all()
            if record.model_id == bytes(model_id) and record.signer.lower() == signer.lower()
            and (chain_id is None or record.chain_id == chain_id)
            and (escrow is None or record.escrow == escrow.lower())
            and record.expiry > moment
        ]
        return max(candidates, key=lambda record: (record.available, record.updated_at), default=None)

    # --- writes (each committed before returning) ----------------------------------------------

    def remember(self, record: ChannelRecord) -> ChannelRecord:
        """Insert a channel, or update its chain facts (deposit, expiry only grow; credit is kept)."""
        with self._lock, self._transaction():
            existing = self._read(record.channel_id)
            if existing is not None:
                record = replace(existing, deposit=TokenAmount(max(existing.deposit, record.deposit)),
                                 expiry=max(existing.expiry, record.expiry))
            record = self._write(record)
        return record

    def observe(self, channel_id: int, view: Mapping[str, Any], *, owed: bool = False) -> ChannelRecord | None:
        """A daemon's `extra.channel`: move the credit (and chain facts) forward, never back.

        A view whose `authorized`, `consumed` or `claimed` is above our `signed` (with `owed`: whose `consumed` or
        `claimed` is above our `owed + slack`, for metered calls when none is in flight) is not applied: it is
        recorded as the channel's dispute and `ChannelDispute` is raised. With `owed`, a view within it
        settles the streams we cut short: `owed` rises to the daemon's `consumed`, `slack` is spent."""
        # `claimed` lifts our `consumed` too (_applied), so it is held to our record like `consumed`.
        used = max(_uint(view, "consumed") or 0, _uint(view, "claimed") or 0)
        theirs = DaemonView(TokenAmount(_uint(view, "authorized") or 0), TokenAmount(used))
        with self._lock, self._transaction():
            record = self._read(channel_id)
            if record is None:
                return None
            disputed = (max(theirs.authorized, theirs.consumed) > record.signed
                        or (owed and theirs.consumed > record.owed + record.slack))
            observed = replace(record, dispute=theirs) if disputed else self._applied(record, view, exact=False)
            if owed and not disputed:
                observed = replace(observed, owed=TokenAmount(max(record.owed, theirs.consumed)), slack=TokenAmount(0))
            if observed != record:
                record = self._write(observed)
        if disputed:
            record.check_dispute()
        return record

    def resync(self, channel_id: int, view: Mapping[str, Any]) -> ChannelRecord | None:
        """A view taken as the whole truth: the daemon's `authorized`/`consumed` replace ours (never `signed`)."""
        with self._lock, self._transaction():
            record = self._read(channel_id)
            return self._write(self._applied(record, view, exact=True)) if record is not None else None

    def reserve(self, channel_id: int, price: int, floor: int = 0, *, owed: bool = False) -> Reservation:
        """The next voucher for a call at `price`: `max(floor, consumed) + price`, recorded as signed
        (with `owed`, a metered call's cap: `max(floor, owed) + price`).

        `floor` is the highest amount reserved by calls still in flight (0 when none is). Refused
        with `ChannelDispute` when a dispute awaits the user or the amount would pass `signed + price`,
        with `ChannelExhausted` when it would pass the deposit."""
        with self._lock, self._transaction():
            record = self._read(channel_id)
            if record is None:
                raise ConfigError(f"channel {channel_id:#x} is not in the channel store {self.path}")
            record.check_dispute()
            amount = TokenAmount(max(floor, record.owed if owed else record.consumed) + price)
            if amount > record.signed + price:  # a daemon view written past our record (`resync`)
                raise ChannelDispute(channel_id, record.signed, record.authorized, record.consumed)
            if record.deposit and amount > record.deposit:
                raise ChannelExhausted(channel_id, amount, record.deposit)
            added = TokenAmount(max(amount - record.signed, 0))
            if added:
                record = self._write(replace(record, signed=amount))
        return Reservation(amount, added, record)

    def owe(self, channel_id: int, charge: int, slack: int = 0) -> ChannelRecord:
        """A metered call on the channel cost `charge` (as we checked it; a stream we cut short: as we counted
        it, and up to `slack` more may have been sent but never received): add them to `owed` and `slack`."""
        with self._lock, self._transaction():
            record = self._read(channel_id)
            if record is None:
                raise ConfigError(f"channel {channel_id:#x} is not in the channel store {self.path}")
            return self._write(replace(record, owed=TokenAmount(record.owed + charge),
                                       slack=TokenAmount(record.slack + slack)))

    def dispute(self, channel_id: int, view: DaemonView) -> ChannelRecord:
        """Record a daemon's claim we refuse (a metered settlement above our count): the user resolves it."""
        with self._lock, self._transaction():
            record = self._read(channel_id)
            if record is None:
                raise ConfigError(f"channel {channel_id:#x} is not in the channel store {self.path}")
            return self._write(replace(record, dispute=view))

    def accept_view(self, channel_id: int) -> ChannelRecord:
        """Resolve a dispute for the daemon: its figures become ours (`signed` and `owed` rise to them)."""
        with self._lock, self._transaction():
            record, view = self._disputed(channel_id)
            return self._write(replace(record, authorized=view.authorized, consumed=view.consumed, dispute=None,
                                       signed=TokenAmount(max(record.signed, view.authorized, view.consumed)),
                                       owed=TokenAmount(max(record.owed, view.consumed))))

    def keep_own_view(self, channel_id: int) -> ChannelRecord:
        """Resolve a dispute for us: the daemon's figures are dropped; the next call checks them again."""
        with self._lock, self._transaction():
            record, _ = self._disputed(channel_id)
            return self._write(replace(record, dispute=None))

    def _disputed(self, channel_id: int) -> tuple[ChannelRecord, DaemonView]:
        record = self._read(channel_id)
        if record is None or record.dispute is None:
            raise ConfigError(f"channel {channel_id:#x} has no dispute in the channel store {self.path}")
        return record, record.dispute

    @staticmethod
    def _applied(record: ChannelRecord, view: Mapping[str, Any], *, exact: bool) -> ChannelRecord:
        authorized, consumed = _uint(view, "authorized"), _uint(view, "consumed")
        deposit, expiry = _uint(view, "deposit"), _uint(view, "expiry")
        changes: dict[str, Any] = {}
        if authorized is not None:
            changes["authorized"] = authorized if exact else max(record.authorized, authorized)
        if consumed is not None:
            changes["consumed"] = consumed if exact else max(record.consumed, consumed)
        claimed = _uint(view, "claimed")  # spent: the daemon refuses a voucher not above it (voucher_claimed)
        if claimed is not None and claimed > changes.get("consumed", record.consumed):
            changes["consumed"] = claimed
        if deposit is not None:
            changes["deposit"] = max(record.deposit, deposit)
        if expiry is not None and not view.get("reclaimed"):
            changes["expiry"] = max(record.expiry, expiry)
        if view.get("reclaimed"):
            changes["expiry"] = 0
        return replace(record, **changes)

    def _write(self, record: ChannelRecord) -> ChannelRecord:
        record = replace(record, updated_at=time.time())
        self._db.execute(f"INSERT OR REPLACE INTO channel ({', '.join(_COLUMNS)}) VALUES "
                         f"({', '.join('?' * len(_COLUMNS))})", _row(record))
        return record

    def _read(self, channel_id: int) -> ChannelRecord | None:
        row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM channel WHERE channel_id = ?",
                               (f"0x{channel_id:064x}",)).fetchone()
        return _record(row) if row else None

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): one write transaction, durable on COMMIT."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
