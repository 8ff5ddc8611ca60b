"""The text model's tokenizer: exact round trip, exact counts, importable without the heavy stacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from marketplace.text import count_tokens, detokenize, tokenize

ROOT = Path(__file__).resolve().parents[2]


def test_words_and_punctuation_carry_the_whitespace_before_them() -> None:
    assert tokenize("Hello, world!\n") == ["Hello", ",", " world", "!", "\n"]
    assert tokenize("  two  spaces\tand\ttabs ") == ["  two", "  spaces", "\tand", "\ttabs", " "]
    assert tokenize("café naïve 北京 3.14") == ["café", " naïve", " 北京", " 3", ".", "14"]
    assert tokenize("") == [] and count_tokens("") == 0


@given(st.text())
def test_any_text_round_trips_and_counts_its_tokens(text: str) -> None:
    tokens = tokenize(text)
    assert detokenize(tokens) == text
    assert count_tokens(text) == len(tokens)
    assert all(tokens)  # no empty token: every token holds at least one character
    assert tokenize(detokenize(tokens)) == tokens  # one tokenization per text


@given(st.lists(st.text(min_size=1)))
def test_a_text_has_at_most_one_token_per_character(parts: list[str]) -> None:
    text = "".join(parts)
    assert count_tokens(text) <= len(text) <= len(text.encode())  # the bound a client checks against


def test_the_client_side_imports_no_heavy_stack() -> None:
    code = "import sys, json, marketplace.text; print(json.dumps(sorted(sys.modules)))"
    env = {"PYTHONPATH": str(ROOT)}
    modules = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                        check=True).stdout)
    heavy = {"numpy", "onnxruntime", "onnx", "web3", "pydantic", "httpx", "aiohttp", "sklearn"}
    assert not heavy & {name.split(".")[0] for name in modules}
