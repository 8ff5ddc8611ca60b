"""Demo models: trained from bundled data, deterministic, self-describing, served as described."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from marketplace.runners import OnnxRunner, RunnerRequest
from marketplace.runners.demo_models import ModelSpec, train_iris_classifier
from marketplace.runners.onnx import compile_validator


def test_training_is_deterministic(iris: ModelSpec, tmp_path: Path) -> None:
    again = train_iris_classifier(tmp_path / "again.onnx")
    assert again.path.read_bytes() == iris.path.read_bytes()  # same bytes, so the same CID


@pytest.mark.parametrize("name", ["iris", "diabetes"])
def test_spec_describes_the_model(name: str, request: pytest.FixtureRequest) -> None:
    spec: ModelSpec = request.getfixturevalue(name)
    metadata = json.loads(json.dumps(spec.metadata()))
    assert metadata["format"] == "onnx" and metadata["description"] and metadata["outputs"]
    compile_validator(spec.input_schema)(spec.example_input)  # the example obeys the schema
    assert spec.path.stat().st_size < 10_000


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["iris", "diabetes"])
async def test_example_input_runs(name: str, request: pytest.FixtureRequest) -> None:
    spec: ModelSpec = request.getfixturevalue(name)
    async with OnnxRunner(spec.path, spec.input_schema) as runner:
        response = await runner.infer(RunnerRequest(spec.example_body()))
    assert response.body is not None
    outputs = json.loads(response.body)["outputs"]
    assert set(outputs) == set(spec.outputs)
    assert len(next(iter(outputs.values()))) == len(spec.example_input["inputs"])
