"""A text model priced per token, served by a small fake TextRunner (tests only, until the real
runners land), behind a daemon on a real socket (uvicorn in the test's event loop).

The chain does not carry per-token prices yet: the fixture sets them on the daemon's cached
ModelInfo (`set_pricing`, the one test-only override: `ChainStateCache._models`), which reprice
events keep (they `dataclasses.replace` the cached model).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import uvicorn
from daemon_fixtures import Channel, open_channel_on, pay_header, register_model
from daemon_process import free_port

from marketplace.daemon.app import create_app
from marketplace.daemon.settings import DaemonSettings
from marketplace.payments.x402 import PaymentRequirements, parse_payment_required
from marketplace.runners.errors import UpstreamFailed
from marketplace.runners.text import TextCall, TextChunk, TextRunner, TextStream, TextUsage
from marketplace.types import ModelArtifact, TokenPricing

PRICING = TokenPricing(per_call=1_000, per_input_token=10, per_output_token=100)
SETTLEMENT = b": x402-settlement "


def prompt_words(call: TextCall) -> int:
    """The fake tokenizer: one token per whitespace-separated word of the prompt or messages."""
    body = call.body
    if call.kind == "chat":
        return sum(len(str(m.get("content") or "").split()) for m in body["messages"])
    prompt = body["prompt"]
    return sum(len(p.split()) for p in ([prompt] if isinstance(prompt, str) else prompt))


class FakeStream(TextStream):
    def __init__(self, runner: FakeTextRunner, call: TextCall) -> None:
        self.runner, self.call = runner, call
        self.produced = 0
        self.closed = False
        self._usage: TextUsage | None = None

    def __aiter__(self) -> AsyncIterator[TextChunk]:
        return self._chunks()

    async def batches(self) -> AsyncIterator[list[TextChunk]]:
        """The chunks `runner.batch` at a time (as an upstream read holding several)."""
        batch: list[TextChunk] = []
        async for chunk in self._chunks():
            batch.append(chunk)
            if len(batch) == self.runner.batch:
                yield batch
                batch = []
        if batch:
            yield batch

    async def _chunks(self) -> AsyncIterator[TextChunk]:
        runner = self.runner
        length = min(runner.length, self.call.max_tokens)
        runner.started += 1
        for n in range(length):
            if runner.break_after is not None and n == runner.break_after:
                raise UpstreamFailed("fake://model", None, "the model broke off")  # 502
            if runner.delay:
                await asyncio.sleep(runner.delay)
            self.produced += 1
            yield TextChunk(self._chunk(f"w{n} ", None), runner.tokens_per_chunk)
        yield TextChunk(self._chunk("", "stop" if length == runner.length else "length"), 0)
        self._usage = TextUsage(prompt_words(self.call), self.produced)

    def _chunk(self, text: str, finish: str | None) -> dict[str, Any]:
        if self.call.kind == "chat":
            choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
            kind = "chat.completion.chunk"
        else:
            choice, kind = {"index": 0, "text": text, "finish_reason": finish}, "text_completion"
        return {"id": "cmpl-fake", "object": kind, "created": 1, "model": "fake", "choices": [choice]}

    @property
    def usage(self) -> TextUsage:
        if self._usage is None:
            raise RuntimeError("not iterated to the end")
        return self._usage

    async def aclose(self) -> None:
        self.closed = True


class FakeTextRunner(TextRunner):
    """Answers `length` words ("w0 w1 ..."), one token each, `delay` s apart, in batches of
    `batch`; breaks after `break_after` words when set; counts prompt words exactly."""

    exact_input = True
    artifact = ModelArtifact(0x55, b"\x07" * 32, 1)

    def __init__(self) -> None:
        self.reset()

    def reset(self, *, length: int = 20, delay: float = 0.0, break_after: int | None = None,
               tokens_per_chunk: int = 1, batch: int = 1) -> None:
        self.length, self.delay, self.break_after, self.tokens_per_chunk = length, delay, break_after, tokens_per_chunk
        self.batch = batch
        self.started = 0
        self.calls: list[TextCall] = []
        self.streams: list[FakeStream] = []

    def input_tokens(self, call: TextCall) -> int:
        return prompt_words(call)

    def stream(self, call: TextCall) -> TextStream:
        self.calls.append(call)
        self.streams.append(FakeStream(self, call))
        return self.streams[-1]


@dataclass
class MeteredDaemon:
    url: str
    client: httpx.AsyncClient
    app: Any
    model_id: bytes
    runner: FakeTextRunner

    @property
    def model_hex(self) -> str:
        return "0x" + self.model_id.hex()

    @property
    def services(self) -> Any:
        return self.app.state.services

    def set_pricing(self, pricing: TokenPricing) -> None:
        state = self.services.state
        model = state.model(self.model_id)
        state._models[self.model_id] = dataclasses.replace(model, price=pricing.per_call, token_pricing=pricing)

    async def requirements(self, body: Mapping[str, Any], path: str = "/v1/chat/completions") -> PaymentRequirements:
        answer = await self.client.post(path, json=dict(body))
        assert answer.status_code == 402, answer.text
        required = parse_payment_required(answer.headers["PAYMENT-REQUIRED"])
        return next(r for r in required.accepts if r.scheme == "metered")

    async def call(self, body: Mapping[str, Any], channel: Channel, amount: int, cap: int,
                   path: str = "/v1/chat/completions", requirements: PaymentRequirements | None = None
                   ) -> httpx.Response:
        requirements = requirements or await self.requirements(body, path)
        header = pay_header(requirements, {**channel.voucher(amount), "cap": str(cap)})
        return await self.client.post(path, json=dict(body), headers={"PAYMENT-SIGNATURE": header})

    async def credit(self, channel: Channel) -> tuple[int, int]:
        credit = await self.services.ledger.credit(channel.channel_id)
        return (credit.authorized, credit.consumed) if credit is not None else (0, 0)


    def chat(self, words: str = "one two three", **options: Any) -> dict[str, Any]:
        """A chat request for the model: `words` (one input token each) as the user's message."""
        return {"model": self.model_hex, "messages": [{"role": "user", "content": words}], **options}


def split_stream(raw: bytes) -> tuple[list[dict[str, Any]], dict[str, Any] | None, bytes]:
    """The data chunks, the settlement (None if absent) and the bytes before the settlement line."""
    events, settlement, before = [], None, raw
    cut = raw.find(SETTLEMENT)
    if cut >= 0:
        before = raw[:cut]
        settlement = orjson.loads(raw[cut + len(SETTLEMENT):].split(b"\n\n", 1)[0])
    for block in before.split(b"\n\n"):
        if block.startswith(b"data: ") and block != b"data: [DONE]":
            events.append(orjson.loads(block[len(b"data: "):]))
    return events, settlement, before


def sha256(data: bytes) -> str:
    return "0x" + hashlib.sha256(data).hexdigest()


async def serve_metered(settings: DaemonSettings, w3: Any, contracts: Any, provider: Any) -> AsyncIterator[
        MeteredDaemon]:
    """Register a text model for `provider`, serve it (fake runner, PRICING) on a real socket."""
    model_id = register_model(w3, contracts.registry, provider, price=PRICING.per_call)
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    services = app.state.services
    while services.state.model(model_id) is None:
        await asyncio.sleep(0.05)
    runner = FakeTextRunner()
    services.text_runners[model_id] = runner
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        daemon = MeteredDaemon(f"http://127.0.0.1:{port}", client, app, model_id, runner)
        daemon.set_pricing(PRICING)
        try:
            yield daemon
        finally:
            server.should_exit = True
            await task


def open_text_channel(w3: Any, contracts: Any, accounts: list[Any], daemon: MeteredDaemon, deposit: int,
                      payer: Any = None) -> Channel:
    provider = daemon.services.account
    return open_channel_on(w3, contracts, accounts[0], payer or accounts[3], provider.address, daemon.model_id,
                           deposit)
