"""The SSE parser: events whole, however the bytes are cut."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from marketplace.text import SseParser

STREAM = (
    b": a comment\r\n"
    b"data: {\"a\": \"caf\xc3\xa9\"}\r\n\r\n"
    b"event: ignored\ndata: two\ndata:lines\n\n"
    b"id: 7\rdata: cr\r\r"
    b"data: [DONE]\n\n"
)
EVENTS = ['{"a": "café"}', "two\nlines", "cr", "[DONE]"]


def test_events_of_a_whole_stream() -> None:
    assert SseParser().feed(STREAM) == EVENTS


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_events_are_the_same_wherever_the_bytes_are_cut(cuts: list[int]) -> None:
    parser, events, start = SseParser(), [], 0
    for cut in [*sorted(cuts), len(STREAM)]:
        events += parser.feed(STREAM[start:cut])
        start = cut
    assert events == EVENTS


def test_an_unfinished_event_is_not_returned() -> None:
    parser = SseParser()
    assert parser.feed(b"data: half") == [] and parser.feed(b"\n") == [] and parser.feed(b"\n") == ["half"]
