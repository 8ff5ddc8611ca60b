"""The built-in text model: a word-level bigram language model with back-off, exported to ONNX.

Trained at first use on English prose that ships with the Python standard library and with
scikit-learn, nothing downloaded: the Python Language Reference topics (``pydoc_data.topics``)
and scikit-learn's dataset descriptions (``sklearn/datasets/descr/*.rst``). Only paragraphs that
read as prose are kept (no code, tables or markup), with their whitespace reflowed; each
paragraph is one sequence between two boundary tokens.

The model, for the tokenizer of :mod:`marketplace.text.tokenizer`:

- the vocabulary is every token seen ``MIN_COUNT`` times or more, most frequent first, with the
  boundary token ``""`` (id 0: a reply's start and end);
- ``P(b | a) = max(c(a, b) - D, 0) / c(a) + D * n(a) / c(a) * P(b)``: absolute discounting of the
  bigram counts with back-off to the unigram distribution ``P(b)`` (``n(a)``: distinct successors
  of ``a``), pruned to the ``TOP_K`` most likely successors of each token.

The ONNX graph has one input ``token`` (int64 ``[N]``, context token ids) and two outputs by
``Gather`` on two initializers: ``next_tokens`` (int32 ``[N, TOP_K]``) and ``next_logprobs``
(float32 ``[N, TOP_K]``, natural log). The vocabulary is in the model's ``metadata_props``
(``vocabulary``: a JSON list), so the artifact is one file. Training is deterministic: the same
Python and scikit-learn versions write the same bytes, so the same CID.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

from marketplace.runners.demo_models import ModelSpec
from marketplace.text.tokenizer import tokenize

__all__ = ["MIN_COUNT", "TOP_K", "VOCABULARY_KEY", "chat_request_schema", "corpus", "train_text_model"]

MIN_COUNT = 2
TOP_K = 32
DISCOUNT = 0.75
VOCABULARY_KEY = "vocabulary"
_MIN_WORDS = 8
_PROSE = re.compile(r"[A-Z][^\n]*")
_MARKUP = ("::", "**", "``", ".. ", "===", "---", "***", "|", ">>>", "\\", "_:")


def _paragraphs(text: str) -> list[str]:
    """The paragraphs of ``text`` that read as prose, reflowed to single spaces."""
    kept = []
    for block in re.split(r"\n\s*\n", text):
        if not block or block[0].isspace() or not _PROSE.match(block) or any(m in block for m in _MARKUP):
            continue  # indented (code, quotes), not a sentence, or markup
        words = block.split()
        if len(words) >= _MIN_WORDS and block.rstrip()[-1] in ".!?:":
            kept.append(" ".join(words))
    return kept


def corpus() -> list[str]:
    """The training paragraphs, in a fixed order (sorted topics, then sorted file names)."""
    import pydoc_data.topics

    from sklearn import datasets

    texts = [pydoc_data.topics.topics[name] for name in sorted(pydoc_data.topics.topics)]
    descr = Path(datasets.__file__).parent / "descr"
    texts += [path.read_text(encoding="utf-8") for path in sorted(descr.glob("*.rst"))]
    return [paragraph for text in texts for paragraph in _paragraphs(text)]


def _train(paragraphs: list[str]) -> tuple[list[str], list[list[int]], list[list[float]]]:
    """The vocabulary, and for each token its TOP_K successors and their log-probabilities."""
    sequences = [tokenize(paragraph) for paragraph in paragraphs]
    counts = Counter(token for tokens in sequences for token in tokens)
    vocabulary = ["", *sorted((t for t, c in counts.items() if c >= MIN_COUNT), key=lambda t: (-counts[t], t))]
    ids = {token: index for index, token in enumerate(vocabulary)}
    unigram = [0] * len(vocabulary)
    bigrams: list[Counter[int]] = [Counter() for _ in vocabulary]
    for tokens in sequences:
        previous = 0
        for token in tokens:
            current = ids.get(token)
            if current is None:  # a rare token breaks the chain: no bigram through it
                previous = -1
                continue
            unigram[current] += 1
            if previous >= 0:
                bigrams[previous][current] += 1
            previous = current
        if previous >= 0:
            bigrams[previous][0] += 1
        unigram[0] += 1
    total = sum(unigram)
    p_unigram = [count / total for count in unigram]
    by_unigram = sorted(range(len(vocabulary)), key=lambda i: (-unigram[i], i))[:TOP_K]
    successors, logprobs = [], []
    for following in bigrams:
        seen = sum(following.values())
        candidates = set(following) | set(by_unigram)
        if seen:
            backoff = DISCOUNT * len(following) / seen
            probs = {b: max(following[b] - DISCOUNT, 0) / seen + backoff * p_unigram[b] for b in candidates}
        else:
            probs = {b: p_unigram[b] for b in candidates}
        best = sorted(candidates, key=lambda b: (-probs[b], b))[:TOP_K]
        successors.append(best)
        logprobs.append([math.log(probs[b]) for b in best])
    return vocabulary, successors, logprobs


def chat_request_schema() -> dict[str, Any]:
    """The JSON Schema of the requests the text model takes (what its metadata shows consumers)."""
    message = {
        "type": "object",
        "required": ["role", "content"],
        "properties": {"role": {"type": "string"}, "content": {"type": "string"}},
    }
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "OpenAI chat completion request (POST /v1/chat/completions)",
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            "model": {"type": "string"},
            "messages": {"type": "array", "minItems": 1, "items": message},
            "max_tokens": {"type": "integer", "minimum": 1},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "seed": {"type": "integer"},
            "stop": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]},
            "stream": {"type": "boolean"},
        },
    }


def train_text_model(path: Path) -> ModelSpec:
    """Train the built-in text model and write it to ``path`` as one ONNX file."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    vocabulary, successors, logprobs = _train(corpus())
    size = len(vocabulary)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["successors", "token"], ["next_tokens"], axis=0),
            helper.make_node("Gather", ["logprobs", "token"], ["next_logprobs"], axis=0),
        ],
        "text_bigram",
        [helper.make_tensor_value_info("token", TensorProto.INT64, ["N"])],
        [
            helper.make_tensor_value_info("next_tokens", TensorProto.INT32, ["N", TOP_K]),
            helper.make_tensor_value_info("next_logprobs", TensorProto.FLOAT, ["N", TOP_K]),
        ],
        initializer=[
            numpy_helper.from_array(np.array(successors, dtype=np.int32), "successors"),
            numpy_helper.from_array(np.array(logprobs, dtype=np.float32), "logprobs"),
        ],
    )
    description = (
        f"Built-in text model: a word-level bigram language model with back-off ({size} tokens, "
        f"top {TOP_K} successors each) trained on the Python Language Reference and scikit-learn's "
        "dataset descriptions. Small and honest: it writes plausible technical English, not answers."
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8,
                              producer_name="marketplace", doc_string=description)
    helper.set_model_props(model, {VOCABULARY_KEY: json.dumps(vocabulary, ensure_ascii=False)})
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    example = {"model": "0x…", "messages": [{"role": "user", "content": "What does the iris dataset hold?"}],
               "max_tokens": 32}
    return ModelSpec(
        path=path,
        name="text-bigram",
        description=description,
        input_schema=chat_request_schema(),
        example_input=example,
        outputs={"choices": "OpenAI chat completion (or chunks when streamed), usage in tokens"},
    )
