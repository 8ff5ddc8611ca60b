"""An admission acknowledged is never lost: SIGKILL a process under load, reopen, compare."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from marketplace.payments.ledger import open_ledger
from marketplace.types import ChannelId

pytestmark = pytest.mark.anyio

CHANNEL = ChannelId(2**200 + 5)
PRICE = 10**15
ACKNOWLEDGED_BEFORE_KILL = 400  # lines printed before the parent kills the child
REPO = Path(__file__).resolve().parents[2]

# The child: 16 concurrent clients on one channel, each call with a fresh voucher one price
# higher than the last (amount = n * PRICE for the n-th voucher signed), printing the amount
# only after admit() has returned -- the moment the daemon would send its response.
CHILD = """
import asyncio, itertools, sys
from marketplace.payments.ledger import open_ledger

url, channel, price = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
vouchers = itertools.count(1)

def sig(amount):
    return amount.to_bytes(32, "big") + bytes(32) + b"\\x1b"

async def client(ledger):
    while True:
        amount = next(vouchers) * price
        await ledger.admit(channel, amount, sig(amount), price)
        sys.stdout.write(f"{amount}\\n")
        sys.stdout.flush()

async def main():
    ledger = open_ledger(url)
    await asyncio.gather(*(client(ledger) for _ in range(16)))

asyncio.run(main())
"""


def _run_and_kill(url: str) -> list[int]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(CHANNEL), str(PRICE)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    printed: list[int] = []
    deadline = time.monotonic() + 30
    try:
        assert child.stdout is not None
        while len(printed) < ACKNOWLEDGED_BEFORE_KILL and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            printed.append(int(line))
    finally:
        os.kill(child.pid, signal.SIGKILL)  # mid-load: admissions are in flight right now
        rest, errors = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, errors
    assert len(printed) == ACKNOWLEDGED_BEFORE_KILL, errors
    printed += [int(line) for line in rest.splitlines(keepends=True) if line.endswith("\n")]
    return printed


async def test_sigkill_under_load_loses_no_acknowledged_voucher(ledger_url: str) -> None:
    async with open_ledger(ledger_url):  # create the schema first, so the child starts at full speed
        pass
    printed = _run_and_kill(ledger_url)
    async with open_ledger(ledger_url) as ledger:
        credit = await ledger.credit(CHANNEL)
    assert credit is not None
    assert credit.authorized >= max(printed)
    assert credit.signature == credit.authorized.to_bytes(32, "big") + bytes(32) + b"\x1b"
    # Every printed call was admitted and stays consumed; whatever else was consumed was
    # admitted too (committed, just not printed before the kill), never more than authorized.
    assert credit.consumed % PRICE == 0
    assert len(printed) * PRICE <= credit.consumed <= credit.authorized
