"""The built-in text model: trained deterministically, run by onnxruntime, sampled as asked."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import onnx
import pytest

from marketplace.errors import InferenceFailed, InvalidInput, ModelLoadFailed
from marketplace.ipfs import Importer
from marketplace.runners.demo_models import ModelSpec
from marketplace.runners.onnx_text import OnnxTextRunner
from marketplace.runners.text import TextCall, TextChunk, TextUsage
from marketplace.runners.text_model import TOP_K, VOCABULARY_KEY, train_text_model
from marketplace.text import count_tokens, prompt_text, tokenize

pytestmark = pytest.mark.anyio

QUESTION = {"model": "0xmodel", "messages": [{"role": "user", "content": "What does the iris dataset hold?"}]}


@pytest.fixture(scope="module")
def runner(text_model: ModelSpec) -> OnnxTextRunner:
    return OnnxTextRunner(text_model.path)


def _text(chunks: list[TextChunk]) -> str:
    parts = []
    for chunk in chunks:
        choice = chunk.data["choices"][0]
        parts.append(choice["delta"].get("content", "") if "delta" in choice else choice["text"])
    return "".join(parts)


async def _run(runner: OnnxTextRunner, body: dict[str, object], max_tokens: int = 64,
               kind: str = "chat") -> tuple[list[TextChunk], TextUsage]:
    stream = runner.stream(TextCall(kind, body, max_tokens))  # type: ignore[arg-type]
    chunks = [chunk async for chunk in stream]
    return chunks, stream.usage


def test_training_twice_writes_the_same_bytes_and_cid(text_model: ModelSpec, tmp_path: Path) -> None:
    again = train_text_model(tmp_path / "again.onnx")
    assert again.path.read_bytes() == text_model.path.read_bytes()
    with Importer() as importer:
        assert importer.add_path(again.path).cid == importer.add_path(text_model.path).cid
    assert again.metadata() == text_model.metadata()


def test_the_artifact_is_one_onnx_file_with_its_vocabulary(text_model: ModelSpec) -> None:
    model = onnx.load(str(text_model.path))
    onnx.checker.check_model(model)
    vocabulary = json.loads({p.key: p.value for p in model.metadata_props}[VOCABULARY_KEY])
    assert vocabulary[0] == "" and len(vocabulary) == len(set(vocabulary)) > 1000
    assert {" the", " dataset", " statement", "."} <= set(vocabulary)
    assert [init.name for init in model.graph.initializer] == ["successors", "logprobs"]
    assert list(model.graph.initializer[0].dims) == [len(vocabulary), TOP_K]
    assert text_model.path.stat().st_size < 1_000_000  # small: a bigram table pruned to its top successors


async def test_generates_english_from_its_vocabulary_and_counts_what_it_sends(runner: OnnxTextRunner) -> None:
    chunks, usage = await _run(runner, {**QUESTION, "seed": 7}, max_tokens=200)
    text = _text(chunks)
    words = [token.strip() for token in tokenize(text) if token.strip().isalpha()]
    assert len(words) >= 3 and all(word.isascii() for word in words)
    vocabulary = set(runner.vocabulary)
    for chunk in chunks:
        content = chunk.data["choices"][0]["delta"].get("content")
        if chunk.output_tokens:  # one model token per chunk without stop sequences, from the vocabulary
            assert chunk.output_tokens == 1 and content in vocabulary
    assert usage == TextUsage(count_tokens(prompt_text("chat", QUESTION)), sum(c.output_tokens for c in chunks))
    assert 1 <= usage.output_tokens <= 200
    first, last = chunks[0].data, chunks[-1].data
    assert first["object"] == "chat.completion.chunk" and first["model"] == "0xmodel"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""} and chunks[0].output_tokens == 0
    assert last["choices"][0]["finish_reason"] in ("stop", "length") and last["choices"][0]["delta"] == {}
    assert len({chunk.data["id"] for chunk in chunks}) == 1


async def test_max_tokens_bounds_the_reply(runner: OnnxTextRunner) -> None:
    body = {"model": "m", "prompt": "The", "temperature": 0}  # greedy: loops, never ends by itself
    for limit in (1, 5, 50):
        chunks, usage = await _run(runner, body, max_tokens=limit, kind="completion")
        assert usage.output_tokens == limit == sum(c.output_tokens for c in chunks)
        assert chunks[-1].data["choices"][0]["finish_reason"] == "length"
        assert chunks[0].data["object"] == "text_completion"


async def test_the_same_seed_gives_the_same_text_and_another_seed_another(runner: OnnxTextRunner) -> None:
    texts = [_text((await _run(runner, {**QUESTION, "seed": seed, "temperature": 1.2}, 40))[0]) for seed in (1, 1, 2)]
    assert texts[0] == texts[1] != texts[2]
    greedy = [_text((await _run(runner, {**QUESTION, "temperature": 0}, 20))[0]) for _ in range(2)]
    assert greedy[0] == greedy[1]


async def test_a_stop_sequence_ends_the_text_before_it(runner: OnnxTextRunner) -> None:
    body = {"model": "m", "prompt": "The if statement", "seed": 3}
    full = _text((await _run(runner, body, 200, "completion"))[0])
    assert "." in full
    chunks, usage = await _run(runner, {**body, "stop": ["."]}, 200, "completion")
    stopped = _text(chunks)
    assert stopped == full[: full.index(".")]
    assert chunks[-1].data["choices"][0]["finish_reason"] == "stop"
    assert usage.output_tokens == sum(c.output_tokens for c in chunks) == len(tokenize(stopped))
    # a stop sequence spanning tokens: the text that could begin it is held back, never sent
    words = tokenize(full)
    stop = "".join(words[3:5])
    chunks, usage = await _run(runner, {**body, "stop": stop}, 200, "completion")
    assert _text(chunks) == full[: full.index(stop)] and stop not in _text(chunks)
    assert usage.output_tokens == 3


async def test_closing_early_keeps_the_usage_of_what_was_sent(runner: OnnxTextRunner) -> None:
    stream = runner.stream(TextCall("chat", {**QUESTION, "temperature": 0}, 100))
    with pytest.raises(RuntimeError):
        stream.usage  # noqa: B018 - not ended yet
    received = 0
    async for chunk in stream:
        received += chunk.output_tokens
        if received == 4:
            break
    await stream.aclose()
    assert stream.usage.output_tokens == 4
    unstarted = runner.stream(TextCall("chat", QUESTION, 100))
    await unstarted.aclose()
    assert unstarted.usage == TextUsage(runner.input_tokens(TextCall("chat", QUESTION, 100)), 0)


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0]"),
        ({**QUESTION, "temperature": 3}, "temperature"),
        ({**QUESTION, "top_p": 0}, "top_p"),
        ({**QUESTION, "n": 2}, "n"),
        ({**QUESTION, "seed": "7"}, "seed"),
        ({**QUESTION, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({**QUESTION, "stop": [""]}, "stop"),
    ],
)
def test_bad_requests_are_refused_before_the_run(runner: OnnxTextRunner, body: dict[str, object], path: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        runner.input_tokens(TextCall("chat", body, 10))
    assert refused.value.path == path


def test_input_tokens_are_the_exact_count_of_the_rendered_prompt(runner: OnnxTextRunner) -> None:
    body = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi, model!"}]}
    assert prompt_text("chat", body) == "system: Be brief.\n\nuser: Hi, model!\n\nassistant:"
    assert tokenize(prompt_text("chat", body)) == [
        "system", ":", " Be", " brief", ".", "\n\nuser", ":", " Hi", ",", " model", "!", "\n\nassistant", ":"
    ]
    assert runner.input_tokens(TextCall("chat", body, 10)) == 13
    assert runner.input_tokens(TextCall("completion", {"prompt": "one two, three"}, 10)) == 4
    assert runner.input_tokens(TextCall("completion", {"prompt": ["one two"]}, 10)) == 2


def test_a_model_that_is_not_the_text_model_is_refused(iris: ModelSpec) -> None:
    with pytest.raises(ModelLoadFailed, match="not the built-in text model"):
        OnnxTextRunner(iris.path)


async def test_a_long_reply_lets_other_tasks_run(runner: OnnxTextRunner) -> None:
    turns = 0

    async def other_task() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    ticker = asyncio.create_task(other_task())
    await asyncio.sleep(0)
    turns = 0
    _, usage = await _run(runner, {"model": "m", "prompt": "The", "temperature": 0}, 1600, "completion")
    ticker.cancel()
    assert usage.output_tokens == 1600 and turns >= 1600 // 16 - 1  # a turn every 16 tokens at least


async def test_a_model_naming_tokens_outside_its_vocabulary_fails_the_call(
    text_model: ModelSpec, tmp_path: Path
) -> None:
    model = onnx.load(str(text_model.path))
    vocabulary = json.loads({p.key: p.value for p in model.metadata_props}[VOCABULARY_KEY])
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {VOCABULARY_KEY: json.dumps(vocabulary[:10])})  # ids beyond 9 unknown
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(model.SerializeToString())
    runner = OnnxTextRunner(broken)
    with pytest.raises(InferenceFailed, match="outside the vocabulary"):
        await _run(runner, QUESTION)
