"""The built-in text model's tokenizer: words and punctuation, each with the whitespace before it.

A token is a run of whitespace (possibly empty) followed by one word (``\\w+``) or one other
character, or a run of whitespace at the very end of the text. So ``"Hello, world!\\n"`` is
``["Hello", ",", " world", "!", "\\n"]``: every character belongs to exactly one token, the
tokens concatenated give the text back byte for byte, and a text has exactly one tokenization.
The daemon charges the built-in model's input tokens by ``count_tokens`` of the prompt
(:mod:`marketplace.text.prompt`), which a client computes the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["TOKEN_PATTERN", "count_tokens", "detokenize", "tokenize"]

TOKEN_PATTERN = re.compile(r"\s*(?:\w+|[^\w\s])|\s+")


def tokenize(text: str) -> list[str]:
    """The tokens of ``text``, in order; ``"".join(tokenize(text)) == text``."""
    return TOKEN_PATTERN.findall(text)


def count_tokens(text: str) -> int:
    """``len(tokenize(text))`` without building the list."""
    return sum(1 for _ in TOKEN_PATTERN.finditer(text))


def detokenize(tokens: Iterable[str]) -> str:
    """The text of ``tokens`` (their concatenation: whitespace is part of the tokens)."""
    return "".join(tokens)
