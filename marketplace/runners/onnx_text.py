"""Run the built-in text model (:mod:`marketplace.runners.text_model`) with onnxruntime.

One ``session.run`` per token gives the ``TOP_K`` likely successors of the last token and their
log-probabilities; sampling is in Python: ``temperature`` (0: always the likeliest), ``top_p``
(nucleus), ``seed`` (the same seed and request give the same text), ``stop`` (up to 4 strings;
the text ends before the first one, which is not sent; text that could begin one is held back until
it cannot). A reply starts from the last known token of the last message (chat) or of the prompt
(completion) and ends at the model's boundary token (``finish_reason: "stop"``) or after
``TextCall.max_tokens`` tokens (``"length"``). Every chunk with text carries the tokens it
completes (a token cut by a stop sequence counts: part of it was sent); usage is exact (the
input by :func:`marketplace.text.prompt.prompt_tokens`). A run per token costs tens of µs
(onnxruntime's per-call overhead; the Gather itself is nothing), less than handing it to a thread:
the runner runs on the event loop and lets other tasks run every ``_YIELD_EVERY`` tokens.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from marketplace.runners.errors import InferenceFailed, InvalidInput, ModelLoadFailed
from marketplace.runners.text import TextCall, TextChunk, TextRunner, TextStream, TextUsage
from marketplace.runners.text_model import VOCABULARY_KEY
from marketplace.text.errors import InvalidPrompt
from marketplace.text.prompt import chat_context, prompt_tokens
from marketplace.text.tokenizer import tokenize
from marketplace.types import ModelArtifact

__all__ = ["OnnxTextRunner", "Sampling"]

_MAX_STOPS = 4
_YIELD_EVERY = 16  # tokens generated between two turns given to the event loop


def _prompt_tokens(call: TextCall) -> int:
    """The prompt's exact token count; a body without a usable prompt is the runner's InvalidInput."""
    try:
        return prompt_tokens(call.kind, call.body)
    except InvalidPrompt as error:
        raise InvalidInput(error.detail, path=error.path) from None


@dataclass(frozen=True, slots=True)
class Sampling:
    """The sampling options of one request (OpenAI names and defaults)."""

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Sampling:
        """The options of ``body``; InvalidInput names a bad one."""
        temperature, top_p = body.get("temperature", 1.0), body.get("top_p", 1.0)
        seed, stop, n = body.get("seed"), body.get("stop"), body.get("n", 1)
        if temperature is None:
            temperature = 1.0
        if top_p is None:
            top_p = 1.0
        if not _number(temperature) or not 0 <= temperature <= 2:
            raise InvalidInput("a number from 0 to 2", path="temperature")
        if not _number(top_p) or not 0 < top_p <= 1:
            raise InvalidInput("a number above 0, at most 1", path="top_p")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise InvalidInput("an integer", path="seed")
        if n not in (1, None):
            raise InvalidInput("only one choice per call", path="n")
        stops = (stop,) if isinstance(stop, str) else tuple(stop) if isinstance(stop, list) else stop
        if stops is None:
            stops = ()
        if not isinstance(stops, tuple) or len(stops) > _MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
            raise InvalidInput(f"a non-empty string or a list of at most {_MAX_STOPS}", path="stop")
        return cls(float(temperature), float(top_p), seed, stops)

    def pick(self, rng: random.Random, candidates: list[int], logprobs: list[float]) -> int:
        """One of ``candidates`` (sorted likeliest first, as the model gives them)."""
        if self.temperature == 0:
            return candidates[0]
        scaled = [lp / self.temperature for lp in logprobs]
        top = max(scaled)
        weights = [math.exp(s - top) for s in scaled]
        total = sum(weights)
        if self.top_p < 1:
            kept, mass = 0, 0.0
            while kept < len(weights) and mass < self.top_p * total:
                mass += weights[kept]
                kept += 1
            candidates, weights, total = candidates[:kept], weights[:kept], mass
        point = rng.random() * total
        for candidate, weight in zip(candidates, weights, strict=True):
            point -= weight
            if point < 0:
                return candidate
        return candidates[-1]


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _held(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` could begin a stop sequence."""
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


class OnnxTextRunner(TextRunner):
    """The built-in text model, loaded once from its ONNX file (already verified against its CID)."""

    exact_input = True  # input tokens counted by marketplace/text, which clients run too

    def __init__(self, path: Path, *, artifact: ModelArtifact | None = None) -> None:
        self.artifact = artifact
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own unrelated types for bad files
            raise ModelLoadFailed(path, f"onnxruntime cannot load it: {exc}") from exc
        try:
            vocabulary = json.loads(self._session.get_modelmeta().custom_metadata_map[VOCABULARY_KEY])
        except (KeyError, ValueError) as exc:
            raise ModelLoadFailed(path, f"not the built-in text model (no {VOCABULARY_KEY} in its metadata)") from exc
        if not isinstance(vocabulary, list) or not all(isinstance(token, str) for token in vocabulary):
            raise ModelLoadFailed(path, "the text model's vocabulary is not a list of strings")
        self.vocabulary: list[str] = vocabulary
        self._ids = {token: index for index, token in enumerate(vocabulary)}

    def __repr__(self) -> str:
        return f"OnnxTextRunner({len(self.vocabulary)} tokens)"

    def input_tokens(self, call: TextCall) -> int:
        Sampling.of(call.body)  # refuse bad options before the call is paid for
        return _prompt_tokens(call)

    def stream(self, call: TextCall) -> TextStream:
        return _Generation(self, call, Sampling.of(call.body), _prompt_tokens(call))

    def context_of(self, call: TextCall) -> int:
        """The token the reply continues: the last known one of the prompt's end, else the boundary."""
        try:
            context = chat_context(call.kind, call.body)
        except InvalidPrompt as error:
            raise InvalidInput(error.detail, path=error.path) from None
        for token in reversed(tokenize(context)):
            if (index := self._ids.get(token)) is not None:
                return index
        return 0

    def successors(self, token: int) -> tuple[list[int], list[float]]:
        """The likely next tokens after ``token`` and their log-probabilities, likeliest first."""
        try:
            next_tokens, logprobs = self._session.run(None, {"token": np.array([token], dtype=np.int64)})
        except Exception as exc:  # onnxruntime's pybind exceptions share no useful base class
            raise InferenceFailed(f"onnxruntime: {exc}") from exc
        candidates: list[int] = next_tokens[0].tolist()
        if not all(0 <= candidate < len(self.vocabulary) for candidate in candidates):
            raise InferenceFailed("a token id outside the vocabulary")
        return candidates, logprobs[0].tolist()


class _Generation(TextStream):
    def __init__(self, runner: OnnxTextRunner, call: TextCall, sampling: Sampling, input_tokens: int) -> None:
        self._runner, self._call, self._sampling = runner, call, sampling
        self._usage: TextUsage | None = None
        self._input_tokens = input_tokens
        model = call.body.get("model")
        chat = call.kind == "chat"
        self._envelope = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": model if isinstance(model, str) else "",
        }
        self._iterator: AsyncIterator[TextChunk] = self._generate()

    def __aiter__(self) -> AsyncIterator[TextChunk]:
        return self._iterator

    @property
    def usage(self) -> TextUsage:
        if self._usage is None:
            raise RuntimeError("the stream has not ended")
        return self._usage

    async def aclose(self) -> None:
        await self._iterator.aclose()  # type: ignore[attr-defined]
        if self._usage is None:  # closed before it started
            self._usage = TextUsage(self._input_tokens, 0)

    def _chunk(self, text: str | None, tokens: int, finish: str | None = None) -> TextChunk:
        if self._call.kind == "chat":
            delta: dict[str, str] = {} if text is None else {"content": text}
            if text == "" and tokens == 0 and finish is None:
                delta["role"] = "assistant"
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return TextChunk({**self._envelope, "choices": [choice]}, tokens)

    async def _generate(self) -> AsyncIterator[TextChunk]:
        seed = self._sampling.seed
        rng = random.Random(seed) if seed is not None else random.Random()
        delivered = 0
        try:
            async for chunk in self._tokens(rng):
                delivered += chunk.output_tokens
                yield chunk
        finally:  # ended, or stopped early by aclose: the usage is what was sent
            self._usage = TextUsage(self._input_tokens, delivered)

    async def _tokens(self, rng: random.Random) -> AsyncIterator[TextChunk]:
        runner, sampling, limit = self._runner, self._sampling, self._call.max_tokens
        delivered = 0
        if self._call.kind == "chat":
            yield self._chunk("", 0)
        text = ""  # generated so far
        sent = 0  # characters of `text` sent
        pending: list[int] = []  # end offsets in `text` of the tokens not sent yet
        token, finish = runner.context_of(self._call), "length"
        generated = 0
        while delivered + len(pending) < limit:
            generated += 1
            if generated % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            candidates, logprobs = runner.successors(token)
            token = sampling.pick(rng, candidates, logprobs)
            if token == 0:
                finish = "stop"
                break
            text += runner.vocabulary[token]
            pending.append(len(text))
            cut = min((i for i in (text.find(s, max(sent - len(s), 0)) for s in sampling.stop) if i >= 0), default=-1)
            if cut >= 0:
                starts = [sent, *pending[:-1]]
                tokens = sum(1 for start in starts if start < cut)
                if cut > sent:
                    yield self._chunk(text[sent:cut], tokens)
                pending, finish = [], "stop"
                break
            safe = len(text) - _held(text, sampling.stop)
            ready = sum(1 for end in pending if end <= safe)
            if ready:
                end = pending[ready - 1]
                yield self._chunk(text[sent:end], ready)
                delivered, sent, pending = delivered + ready, end, pending[ready:]
        if pending:
            yield self._chunk(text[sent:], len(pending))
        yield self._chunk(None, 0, finish)
