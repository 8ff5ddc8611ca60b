"""Server-sent events (the WHATWG ``text/event-stream`` format), parsed incrementally from bytes.

Only what OpenAI streams use: ``data:`` lines (several joined by ``\\n``) make one event at the
blank line that ends it; comment lines (``:``) and other fields are skipped; CRLF, CR and LF all
end a line. Text is UTF-8 (a character split across two reads is kept whole).
"""

from __future__ import annotations

import codecs
import re

__all__ = ["SseParser"]

_LINE_END = re.compile(r"\r\n|\r|\n")


class SseParser:
    """Feed it the bytes of a stream as they arrive; it returns the data of each complete event."""

    __slots__ = ("_after_cr", "_data", "_decoder", "_pending")

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._pending = ""
        self._after_cr = False  # the last read ended with CR: an LF starting the next one is its pair
        self._data: list[str] | None = None

    def feed(self, chunk: bytes) -> list[str]:
        """The data of the events completed by ``chunk`` (UnicodeDecodeError on invalid UTF-8)."""
        text = self._decoder.decode(chunk)
        if self._after_cr and text.startswith("\n"):
            text = text[1:]
        if text:
            self._after_cr = text.endswith("\r")
        lines = _LINE_END.split(self._pending + text)
        self._pending = lines.pop()
        events: list[str] = []
        for line in lines:
            if not line:
                if self._data is not None:
                    events.append("\n".join(self._data))
                    self._data = None
            elif line.startswith("data:"):
                if self._data is None:
                    self._data = []
                self._data.append(line[5:].removeprefix(" "))
        return events
