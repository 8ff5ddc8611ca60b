"""The built-in ONNX runner: same answers as scikit-learn, both JSON shapes, precise refusals."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from sklearn.datasets import load_diabetes, load_iris

from marketplace.errors import (
    BodyTooLarge,
    InferenceFailed,
    InvalidInput,
    ModelLoadFailed,
)
from marketplace.runners import OnnxRunner, RunnerRequest
from marketplace.runners.demo_models import ModelSpec

pytestmark = pytest.mark.anyio

IRIS_X = load_iris().data.astype(np.float32)


@pytest.fixture
async def runner(iris: ModelSpec) -> AsyncIterator[OnnxRunner]:
    async with OnnxRunner(iris.path, iris.input_schema, model_name="iris", model_version="bafy-test") as runner:
        yield runner


async def call(runner: OnnxRunner, document: Any, content_type: str = "application/json") -> dict[str, Any]:
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    response = await runner.infer(RunnerRequest(body, content_type))
    assert response.status == 200 and response.content_type == "application/json" and response.body is not None
    return json.loads(response.body)  # type: ignore[no-any-return]


async def refusal(runner: OnnxRunner, document: Any, content_type: str = "application/json") -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        await call(runner, document, content_type)
    return caught.value


def write_model(path: Path, nodes: list[Any], inputs: list[Any], outputs: list[Any]) -> Path:
    graph = helper.make_graph(nodes, "test", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


# -- answers ----------------------------------------------------------------------------------


async def test_plain_json_matches_sklearn(runner: OnnxRunner, iris: ModelSpec) -> None:
    answer = await call(runner, {"inputs": IRIS_X.tolist()})
    assert answer["model_name"] == "iris"
    assert answer["outputs"]["label"] == iris.estimator.predict(IRIS_X).tolist()
    np.testing.assert_allclose(answer["outputs"]["probabilities"], iris.estimator.predict_proba(IRIS_X), atol=1e-5)


async def test_without_a_schema_one_is_derived_from_the_model(iris: ModelSpec) -> None:
    async with OnnxRunner(iris.path, max_batch=8) as runner:
        inputs = runner.input_schema["properties"]["inputs"]
        assert (inputs["minItems"], inputs["maxItems"]) == (1, 8)
        assert inputs["items"] == {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4}
        answer = await call(runner, {"inputs": IRIS_X[:3].tolist()})
        assert answer["outputs"]["label"] == iris.estimator.predict(IRIS_X[:3]).tolist()
        assert "must be array" in (await refusal(runner, {"inputs": {"input": IRIS_X[:3].tolist()}})).detail


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
async def test_kserve_v2_matches_sklearn(runner: OnnxRunner, iris: ModelSpec, nested: bool) -> None:
    rows = IRIS_X[::10]
    data = rows.tolist() if nested else rows.ravel().tolist()
    answer = await call(
        runner,
        {"id": "req-1", "inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32", "data": data}]},
    )
    assert (answer["model_name"], answer["model_version"], answer["id"]) == ("iris", "bafy-test", "req-1")
    label, probabilities = answer["outputs"]
    assert (label["name"], label["datatype"], label["shape"]) == ("label", "INT64", [len(rows)])
    assert label["data"] == iris.estimator.predict(rows).tolist()
    assert (probabilities["name"], probabilities["datatype"], probabilities["shape"]) == (
        "probabilities",
        "FP32",
        [len(rows), 3],
    )
    np.testing.assert_allclose(
        np.reshape(probabilities["data"], (len(rows), 3)), iris.estimator.predict_proba(rows), atol=1e-5
    )


async def test_kserve_v2_requested_outputs_only(runner: OnnxRunner) -> None:
    answer = await call(
        runner,
        {
            "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}],
            "outputs": [{"name": "label"}],
        },
    )
    assert [o["name"] for o in answer["outputs"]] == ["label"]
    assert answer["outputs"][0]["data"] == [0]


async def test_regressor_matches_sklearn(diabetes: ModelSpec) -> None:
    x = load_diabetes().data.astype(np.float32)[:50]
    async with OnnxRunner(diabetes.path, diabetes.input_schema) as runner:
        answer = await call(runner, {"inputs": x.tolist()})
        example = await call(runner, diabetes.example_input)
    np.testing.assert_allclose(np.ravel(answer["outputs"]["variable"]), diabetes.estimator.predict(x), rtol=1e-4)
    assert len(example["outputs"]["variable"]) == 1


async def test_concurrent_calls_get_their_own_answers(runner: OnnxRunner, iris: ModelSpec) -> None:
    expected = iris.estimator.predict(IRIS_X).tolist()
    answers = await asyncio.gather(*(call(runner, {"inputs": [IRIS_X[i].tolist()]}) for i in range(150)))
    assert [a["outputs"]["label"][0] for a in answers] == expected


async def test_metadata_describes_the_tensors(runner: OnnxRunner) -> None:
    assert runner.metadata() == {
        "name": "iris",
        "versions": ["bafy-test"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
        ],
    }


# -- refusals ---------------------------------------------------------------------------------

ROW = [5.1, 3.5, 1.4, 0.2]


def v2(**changes: Any) -> dict[str, Any]:
    tensor = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW} | changes
    return {"inputs": [tensor]}


@pytest.mark.parametrize(
    ("document", "status", "expected"),
    [
        ({"inputs": [[5.1, 3.5, 1.4]]}, 422, "inputs[0]: must contain at least 4 items"),
        ({"inputs": [[5.1, 3.5, 1.4, 0.2, 9.9]]}, 422, "inputs[0]: must contain less than or equal to 4 items"),
        ({"inputs": [[5.1, 3.5, 1.4, "0.2"]]}, 422, "inputs[0][3]: must be number"),
        ({"inputs": [[5.1, 3.5, 1.4, True]]}, 422, "inputs[0][3]: must be number"),
        ({"inputs": [[5.1, 3.5, 1.4, None]]}, 422, "inputs[0][3]: must be number"),
        ({"inputs": [ROW] * 1025}, 422, "inputs: must contain less than or equal to 1024 items"),
        ({"inputs": []}, 422, "inputs: must contain at least 1 items"),
        ({"inputs": ROW}, 422, "inputs[0]: must be array"),
        ({"input": [ROW]}, 422, "missing key 'inputs'"),
        ({"inputs": [ROW], "extra": 1}, 422, "must not contain {'extra'} properties"),
        ([ROW], 422, "the body must be a JSON object, got list"),
        (b"{not json", 400, "the body is not UTF-8 JSON"),
        (b"\xff\xfe{}", 400, "the body is not UTF-8 JSON"),
        (b'{"inputs": [[5.1, 3.5, 1.4, NaN]]}', 400, "NaN is not a JSON number"),
        ({"inputs": [[5.1, 3.5, 1.4, 1e39]]}, 422, "input: holds values too large for FP32"),
        (v2(datatype="FP64"), 422, "inputs[0]: input 'input' has datatype FP32, got 'FP64'"),
        (v2(name="features"), 422, "inputs[0]: unknown input 'features'; the model takes ['input']"),
        (v2(data=ROW[:3]), 422, "inputs[0].data: holds 3 values but shape [1, 4] needs 4"),
        (v2(shape=[1, -4]), 422, "inputs[0]: shape must be a list of non-negative integers"),
        (v2(shape=[2, 2]), 422, "inputs[0]: must contain at least 4 items"),
        (v2(shape=[4]), 422, "inputs[0]: must be array"),
        (v2(data=[[1.0, 2.0], [3.0]]), 422, "inputs[0].data: not a rectangular array"),
        (v2(data=[5.1, 3.5, 1.4, "x"]), 422, "inputs[0][3]: must be number"),
        (v2(parameters={}, extra=1), 422, "inputs[0]: unknown keys ['extra']"),
        (
            {"inputs": [{"name": "input", "data": ROW}]},
            422,
            "inputs[0]: a KServe v2 input needs name, shape, datatype and data",
        ),
        ({"inputs": [v2()["inputs"][0], v2()["inputs"][0]]}, 422, "inputs[1]: input 'input' given twice"),
        (v2() | {"outputs": [{"name": "logits"}]}, 422, "outputs: unknown outputs ['logits']"),
    ],
)
async def test_bad_input_is_refused_with_a_precise_detail(
    runner: OnnxRunner, document: Any, status: int, expected: str
) -> None:
    error = await refusal(runner, document)
    assert error.code == "invalid_input"
    assert error.http_status == status
    assert expected in error.detail, error.detail


async def test_wrong_content_type_is_refused(runner: OnnxRunner) -> None:
    error = await refusal(runner, {"inputs": [ROW]}, content_type="text/csv")
    assert error.http_status == 415
    assert (await call(runner, {"inputs": [ROW]}, content_type="application/vnd.kserve+json; charset=utf-8"))["outputs"]


async def test_oversized_body_is_refused(iris: ModelSpec) -> None:
    async with OnnxRunner(iris.path, iris.input_schema, max_request_bytes=100) as runner:
        with pytest.raises(BodyTooLarge) as caught:
            await call(runner, {"inputs": [ROW] * 10})
    assert caught.value.http_status == 413


async def test_batch_limit_applies_without_a_schema_limit(iris: ModelSpec) -> None:
    schema = {"type": "object", "required": ["inputs"]}  # a loose schema: the runner still checks
    async with OnnxRunner(iris.path, schema, max_batch=2) as runner:
        assert len((await call(runner, {"inputs": [ROW, ROW]}))["outputs"]["label"]) == 2
        assert "has 3 rows, over the limit of 2" in (await refusal(runner, {"inputs": [ROW] * 3})).detail
        assert "must hold numbers only, got strings" in (await refusal(runner, {"inputs": [["a"] * 4]})).detail
        assert "must hold numbers only, got booleans" in (await refusal(runner, {"inputs": [[True] * 4]})).detail
        assert (
            "must hold numbers only, got mixed or null values"
            in (await refusal(runner, {"inputs": [[None] * 4]})).detail
        )
        assert "not a rectangular array" in (await refusal(runner, {"inputs": [ROW, ROW[:3]]})).detail
        assert "must have shape [-1, 4], got [1, 5]" in (await refusal(runner, {"inputs": [[*ROW, 1.0]]})).detail
        assert "must have shape [-1, 4] (2 dimensions), got [4]" in (await refusal(runner, {"inputs": ROW})).detail
        assert "unknown inputs ['x']" in (await refusal(runner, {"inputs": {"x": [ROW]}})).detail


async def test_a_2020_12_schema_is_validated_by_the_reference_validator(iris: ModelSpec) -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "inputs": {
                "type": "array",
                "items": {"type": "array", "prefixItems": [{"type": "number", "minimum": 0}], "minItems": 4},
            }
        },
    }
    async with OnnxRunner(iris.path, schema) as runner:
        assert (await call(runner, {"inputs": [ROW]}))["outputs"]["label"] == [0]
        error = await refusal(runner, {"inputs": [[-1.0, 3.5, 1.4, 0.2]]})
    assert error.detail == "inputs[0][0]: -1.0 is less than the minimum of 0"


# -- other models -----------------------------------------------------------------------------


async def test_several_inputs_by_name_and_integer_tensors(tmp_path: Path) -> None:
    path = write_model(
        tmp_path / "add.onnx",
        [helper.make_node("Add", ["a", "b"], ["sum"])],
        [
            helper.make_tensor_value_info("a", TensorProto.INT32, ["N", 2]),
            helper.make_tensor_value_info("b", TensorProto.INT32, ["N", 2]),
        ],
        [helper.make_tensor_value_info("sum", TensorProto.INT32, ["N", 2])],
    )
    async with OnnxRunner(path) as runner:
        assert runner.input_schema["properties"]["inputs"]["required"] == ["a", "b"]
        answer = await call(runner, {"inputs": {"a": [[1, 2]], "b": [[10, 20]]}})
        assert answer["outputs"] == {"sum": [[11, 22]]}
        answer = await call(
            runner,
            {
                "inputs": [
                    {"name": "b", "shape": [1, 2], "datatype": "INT32", "data": [10, 20]},
                    {"name": "a", "shape": [1, 2], "datatype": "INT32", "data": [1, 2]},
                ]
            },
        )
        assert answer["outputs"] == [{"name": "sum", "shape": [1, 2], "datatype": "INT32", "data": [11, 22]}]
        assert (
            "inputs.a[0][0]: must be integer"
            in (await refusal(runner, {"inputs": {"a": [[1.5, 2]], "b": [[1, 2]]}})).detail
        )
        assert "inputs: must contain ['b'] properties" in (await refusal(runner, {"inputs": {"a": [[1, 2]]}})).detail
        missing = await refusal(
            runner, {"inputs": [{"name": "a", "shape": [1, 2], "datatype": "INT32", "data": [1, 2]}]}
        )
        assert "inputs: must contain ['b'] properties" in missing.detail
        out_of_range = await refusal(runner, {"inputs": {"a": [[2**40, 0]], "b": [[1, 2]]}})
        assert "a: holds values outside the range of INT32" in out_of_range.detail


async def test_nan_output_is_an_inference_failure(tmp_path: Path) -> None:
    path = write_model(
        tmp_path / "log.onnx",
        [helper.make_node("Log", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
    )
    async with OnnxRunner(path) as runner:
        assert (await call(runner, {"inputs": [[1.0]]}))["outputs"] == {"y": [[0.0]]}
        with pytest.raises(InferenceFailed) as caught:
            await call(runner, {"inputs": [[-1.0]]})
    assert (caught.value.code, caught.value.http_status) == ("inference_failed", 500)


def test_unloadable_files_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ModelLoadFailed) as caught:
        OnnxRunner(garbage)
    assert (caught.value.code, caught.value.http_status) == ("model_unavailable", 503)
    assert "garbage.onnx" in str(caught.value) and "garbage.onnx" not in caught.value.detail
    with pytest.raises(ModelLoadFailed):
        OnnxRunner(tmp_path / "missing.onnx")


def test_zipmap_outputs_are_refused_with_a_hint(tmp_path: Path) -> None:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.tree import DecisionTreeClassifier

    iris = load_iris()
    model = DecisionTreeClassifier(max_depth=2, random_state=0).fit(IRIS_X, iris.target)
    path = tmp_path / "zipmap.onnx"
    path.write_bytes(to_onnx(model, initial_types=[("input", FloatTensorType([None, 4]))]).SerializeToString())
    with pytest.raises(ModelLoadFailed, match="zipmap"):
        OnnxRunner(path)


def test_an_invalid_schema_is_refused(iris: ModelSpec) -> None:
    with pytest.raises(ModelLoadFailed, match="invalid JSON Schema"):
        OnnxRunner(iris.path, {"type": "no-such-type"})


async def test_a_closed_runner_refuses_calls(iris: ModelSpec) -> None:
    runner = OnnxRunner(iris.path, iris.input_schema)
    await runner.aclose()
    with pytest.raises(ModelLoadFailed):
        await call(runner, {"inputs": [ROW]})


def test_a_tiny_model_runs_on_the_event_loop_once_measured_cheap(tmp_path) -> None:
    """The first call goes to a worker thread and is timed; cheap ones then run inline, big bodies never."""
    import asyncio
    import threading

    from marketplace.runners import OnnxRunner, RunnerRequest
    from marketplace.runners.demo_models import train_iris_classifier

    spec = train_iris_classifier(tmp_path / "iris.onnx")
    runner = OnnxRunner(spec.path, spec.input_schema, inline_below_seconds=1.0, inline_max_body=200)
    threads: list[str] = []
    original = runner.infer_bytes

    def recording(body: bytes) -> bytes:
        threads.append(threading.current_thread().name)
        return original(body)

    runner.infer_bytes = recording  # type: ignore[method-assign]
    small = RunnerRequest(body=b'{"inputs": [[5.1, 3.5, 1.4, 0.2]]}')
    big = RunnerRequest(body=b'{"inputs": [' + b",".join([b"[5.1, 3.5, 1.4, 0.2]"] * 20) + b"]}")

    async def calls() -> None:
        for request in (small, small, big):
            assert (await runner.infer(request)).status == 200
        await runner.aclose()

    asyncio.run(calls())
    assert threads[0].startswith("onnx-") and threads[1] == "MainThread" and threads[2].startswith("onnx-")
