"""Per-client token buckets (marketplace/daemon/limits.py): burst, refill, Retry-After, bounded memory."""

from __future__ import annotations

from marketplace.daemon.limits import ClientBuckets, client_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_client_gets_its_burst_then_the_rate_and_is_told_when_to_come_back() -> None:
    clock = Clock()
    buckets = ClientBuckets(10, 2.0, clock=clock)
    assert [buckets.take("203.0.113.7") for _ in range(10)] == [0] * 10
    assert buckets.take("203.0.113.7") == 1  # half a second to the next token: Retry-After 1
    assert buckets.take("198.51.100.9") == 0  # another client has its own bucket
    clock.now += 0.5
    assert buckets.take("203.0.113.7") == 0
    assert buckets.take("203.0.113.7") == 1
    slow = ClientBuckets(1, 0.1, clock=clock)
    assert (slow.take("a"), slow.take("a")) == (0, 10)


def test_ipv6_clients_are_their_64_and_mapped_ipv4_is_ipv4() -> None:
    assert client_key("2001:db8:7:7::1") == client_key("2001:db8:7:7:ffff::2") == "2001:db8:7:7::/64"
    assert client_key("::ffff:203.0.113.7") == client_key("203.0.113.7") == "203.0.113.7"
    assert client_key(None) == "-"


def test_memory_is_bounded_and_refilled_buckets_are_forgotten_first() -> None:
    clock = Clock()
    buckets = ClientBuckets(2, 1.0, max_clients=100, clock=clock)
    for index in range(100):
        buckets.take(f"10.0.0.{index}")
    clock.now += 1.0  # not yet refilled (2 tokens at 1/s): all still held
    buckets.take("10.0.1.1")
    assert len(buckets._buckets) <= 100
    buckets.take("10.0.1.2")
    buckets.take("10.0.1.2")
    clock.now += 10.0  # everyone refilled: forgotten when the next newcomer needs room
    for index in range(98, 110):
        buckets.take(f"10.0.2.{index}")
    assert len(buckets._buckets) <= 100
    assert buckets.take("10.0.1.2") == 0  # a forgotten bucket starts full again
