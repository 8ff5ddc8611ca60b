"""Run an ONNX model in the daemon's process with onnxruntime (CPU), JSON in, JSON out.

Two request shapes, told apart by the items of ``inputs``:

- plain JSON: ``{"inputs": [[5.1, 3.5, 1.4, 0.2], ...]}`` for a model with one input (a batch of
  rows, nested lists in the input's shape), or ``{"inputs": {"name": [[...]], ...}}`` naming each
  input. Answer: ``{"model_name": ..., "outputs": {"label": [0], "probabilities": [[...]]}}``.
- KServe v2: ``{"id"?, "inputs": [{"name", "shape", "datatype", "data"}], "outputs"?: [{"name"}]}``
  with ``data`` flat (row-major) or nested. Answer: ``{"model_name", "model_version"?, "id"?,
  "outputs": [{"name", "shape", "datatype", "data"}]}`` with ``data`` flat.

The model's input schema (JSON Schema from its metadata; derived from the ONNX inputs when none
is given) describes the plain form; a v2 request is checked against it after its tensors are
nested. Then every input is checked against the model's declared datatype and shape, and the
batch size is limited. Any refusal is InvalidInput whose detail names the input and the problem.

The schema is compiled once: fastjsonschema for drafts 4, 6 and 7 (about 2 µs for a one-row call;
it generates Python code from the schema, which comes from the provider's own metadata), the
reused ``jsonschema`` validator for later drafts. Decoding, checks, ``session.run`` and encoding
all run on a few worker threads (one onnxruntime thread per call), never on the event loop.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from marketplace.errors import (
    BodyTooLarge,
    InferenceFailed,
    InvalidInput,
    ModelLoadFailed,
    RunnerError,
)
from marketplace.runners.base import Runner, RunnerRequest, RunnerResponse
from marketplace.runners.tensors import TensorSpec, input_schema_for, nest, to_array
from marketplace.runners.threads import WorkerThreads
from marketplace.types import ModelArtifact

__all__ = ["OnnxRunner", "compile_validator"]

_JSON_HEADERS = [("content-type", "application/json")]
_FAST_DRAFTS = ("draft-04", "draft-06", "draft-07")
_V2_KEYS = frozenset({"name", "shape", "datatype", "data", "parameters"})


def compile_validator(schema: Mapping[str, Any]) -> Callable[[Any], None]:
    """A function that checks a document against ``schema`` and raises InvalidInput with the path.

    Raises ``ValueError`` if the schema itself is not a valid JSON Schema.
    """
    import jsonschema  # the reference implementation: checks the schema, and validates drafts >= 2019

    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    try:
        cls.check_schema(dict(schema))  # the stubs want a dict; any mapping does
    except jsonschema.SchemaError as exc:
        raise ValueError(f"invalid JSON Schema: {exc.message} at {exc.json_path}") from exc
    declared = str(schema.get("$schema", "draft-07"))
    if any(draft in declared for draft in _FAST_DRAFTS):
        import fastjsonschema

        fast = fastjsonschema.compile(dict(schema))

        def validate_fast(document: Any) -> None:
            try:
                fast(document)
            except fastjsonschema.JsonSchemaValueException as exc:
                path = (exc.name or "data").removeprefix("data").lstrip(".") or None
                detail = exc.message.removeprefix(exc.name or "").strip() if exc.name else exc.message
                raise InvalidInput(detail, path=path) from None

        return validate_fast
    validator = cls(schema)

    def validate_reference(document: Any) -> None:
        error = jsonschema.exceptions.best_match(validator.iter_errors(document))
        if error is not None:
            raise InvalidInput(error.message, path=error.json_path.removeprefix("$").lstrip(".") or None)

    return validate_reference


def _reject_constant(name: str) -> None:
    raise InvalidInput(f"{name} is not a JSON number", http_status=400)


# Built once: json.loads/dumps with options build a new decoder/encoder on every call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _flatten(data: list[Any], path: str) -> list[Any]:
    """Nested rows as one row-major list, keeping the values as sent (for precise refusals)."""
    if not data or not isinstance(data[0], list):
        return data
    flat: list[Any] = []
    width = None
    for row in data:
        if not isinstance(row, list):
            raise InvalidInput("not a rectangular array (a row is not a list)", path=path)
        values = _flatten(row, path)
        if width is None:
            width = len(values)
        elif len(values) != width:
            raise InvalidInput(f"not a rectangular array (rows of {width} and {len(values)} values)", path=path)
        flat.extend(values)
    return flat


class OnnxRunner(Runner):
    """One ONNX model loaded once (the file was already verified against its CID).

    Loading blocks for the time onnxruntime takes to build the session (milliseconds for small
    models): from async code, build it with ``await asyncio.to_thread(OnnxRunner, path, schema)``.
    ``workers`` calls run at once, each on one onnxruntime thread (``intra_op_threads``).

    A model so small that a whole call costs less than handing it to a worker thread (the average
    of the calls seen so far under ``inline_below_seconds``, ~0.2 ms) runs on the event loop for
    small bodies (``inline_max_body`` bytes); anything else, or any model once it gets slower, goes
    to the worker threads, so the loop is never held longer than a thread hand-off would cost.
    """

    def __init__(
        self,
        path: Path,
        input_schema: Mapping[str, Any] | None = None,
        *,
        model_name: str | None = None,
        model_version: str | None = None,
        max_batch: int = 1024,
        max_request_bytes: int = 10 * 1024 * 1024,
        workers: int | None = None,
        intra_op_threads: int = 1,
        inline_below_seconds: float = 0.0002,
        inline_max_body: int = 4096,
        artifact: ModelArtifact | None = None,
    ) -> None:
        self.path = Path(path)
        self.artifact = artifact  # the registry's name for the file at `path`
        self.model_name = model_name or self.path.stem
        self.model_version = model_version
        self.max_batch = max_batch
        self.max_request_bytes = max_request_bytes
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only
        try:
            self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own unrelated types for bad files
            raise ModelLoadFailed(self.path, f"onnxruntime cannot load it: {exc}") from exc
        try:
            self.inputs = [TensorSpec.from_onnx(i.name, i.type, i.shape) for i in self._session.get_inputs()]
            self.outputs = [TensorSpec.from_onnx(o.name, o.type, o.shape) for o in self._session.get_outputs()]
        except ValueError as exc:
            hint = " (export sklearn classifiers with options={'zipmap': False})" if "seq" in str(exc) else ""
            raise ModelLoadFailed(self.path, f"{exc}{hint}") from exc
        self._input_names = {spec.name: spec for spec in self.inputs}
        self._output_specs = {spec.name: spec for spec in self.outputs}
        self.input_schema = dict(input_schema) if input_schema is not None else input_schema_for(self.inputs, max_batch)
        try:
            self._validate = compile_validator(self.input_schema)
        except ValueError as exc:
            raise ModelLoadFailed(self.path, str(exc)) from exc
        self._threads = WorkerThreads(workers or min(4, os.cpu_count() or 1), f"onnx-{self.model_name}")
        self._closed = False
        self._inline_below = inline_below_seconds
        self._inline_max_body = inline_max_body
        self._mean_seconds: float | None = None  # moving average of a whole call, measured

    def __repr__(self) -> str:
        return f"OnnxRunner({str(self.path)!r}, model_name={self.model_name!r})"

    def metadata(self) -> dict[str, Any]:
        """The KServe v2 model metadata (``GET /v2/models/{name}``)."""
        return {
            "name": self.model_name,
            "versions": [self.model_version] if self.model_version else [],
            "platform": "onnxruntime_onnx",
            "inputs": [spec.to_json() for spec in self.inputs],
            "outputs": [spec.to_json() for spec in self.outputs],
        }

    async def infer(self, request: RunnerRequest) -> RunnerResponse:
        if self._closed:
            raise ModelLoadFailed(self.path, "the runner is closed")
        if len(request.body) > self.max_request_bytes:
            raise BodyTooLarge("request", self.max_request_bytes, len(request.body))
        content_type = request.content_type.partition(";")[0].strip().lower()
        if content_type and not (content_type == "application/json" or content_type.endswith("+json")):
            raise InvalidInput(f"send application/json, not {content_type}", http_status=415)
        inline = (
            self._mean_seconds is not None
            and self._mean_seconds < self._inline_below
            and len(request.body) <= self._inline_max_body
        )
        body = self._timed(request.body) if inline else await self._threads.run(self._timed, request.body)
        return RunnerResponse(200, list(_JSON_HEADERS), body=body)

    def _timed(self, body: bytes) -> bytes:
        started = time.perf_counter()
        answer = self.infer_bytes(body)
        elapsed = time.perf_counter() - started
        mean = self._mean_seconds
        self._mean_seconds = elapsed if mean is None else 0.9 * mean + 0.1 * elapsed
        return answer

    async def aclose(self) -> None:
        self._closed = True
        self._threads.shutdown()

    # -- the synchronous path, run in the pool ---------------------------------------------------

    def infer_bytes(self, body: bytes) -> bytes:
        """One call from request body to response body, synchronously (used by ``infer``)."""
        try:
            document = _DECODER.decode(body.decode())
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            if isinstance(exc, RunnerError):
                raise
            raise InvalidInput(f"the body is not UTF-8 JSON ({exc})", http_status=400) from None
        except RecursionError:
            raise InvalidInput("the body's JSON is nested too deeply", http_status=400) from None
        if not isinstance(document, dict):
            raise InvalidInput(f"the body must be a JSON object, got {type(document).__name__}")
        if "inputs" not in document:
            raise InvalidInput("missing key 'inputs'")
        inputs = document["inputs"]
        if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict):
            return self._answer_v2(document, inputs)
        self._validate(document)
        named = inputs if isinstance(inputs, dict) else {self.inputs[0].name: inputs}
        outputs = self._run(self._feeds(named), None)
        result = {"model_name": self.model_name, "outputs": {name: array.tolist() for name, array in outputs}}
        return self._encode(result)

    def _answer_v2(self, document: dict[str, Any], inputs: list[Any]) -> bytes:
        named: dict[str, Any] = {}
        for index, item in enumerate(inputs):
            where = f"inputs[{index}]"
            if not isinstance(item, dict) or not {"name", "shape", "datatype", "data"} <= item.keys():
                raise InvalidInput("a KServe v2 input needs name, shape, datatype and data", path=where)
            if unknown := item.keys() - _V2_KEYS:
                raise InvalidInput(f"unknown keys {sorted(unknown)}", path=where)
            name, shape, datatype, data = item["name"], item["shape"], item["datatype"], item["data"]
            spec = self._input_names.get(name) if isinstance(name, str) else None
            if spec is None:
                raise InvalidInput(f"unknown input {name!r}; the model takes {sorted(self._input_names)}", path=where)
            if name in named:
                raise InvalidInput(f"input {name!r} given twice", path=where)
            if datatype != spec.datatype:
                raise InvalidInput(f"input {name!r} has datatype {spec.datatype}, got {datatype!r}", path=where)
            if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
                raise InvalidInput("shape must be a list of non-negative integers", path=where)
            if not isinstance(data, list):
                raise InvalidInput("data must be a list", path=where)
            flat = _flatten(data, f"{where}.data")
            named[name] = nest(flat, shape, f"{where}.data") if shape else (flat[0] if len(flat) == 1 else flat)
        if len(self.inputs) == 1 and len(named) == 1:
            self._validate({"inputs": next(iter(named.values()))})
        else:
            self._validate({"inputs": named})
        requested = self._requested_outputs(document.get("outputs"))
        outputs = self._run(self._feeds(named), requested)
        result: dict[str, Any] = {"model_name": self.model_name}
        if self.model_version:
            result["model_version"] = self.model_version
        if "id" in document:
            result["id"] = document["id"]
        result["outputs"] = [
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": self._output_specs[name].datatype,
                "data": array.ravel().tolist(),
            }
            for name, array in outputs
        ]
        return self._encode(result)

    def _requested_outputs(self, requested: Any) -> list[str] | None:
        if requested is None:
            return None
        if not isinstance(requested, list) or not all(isinstance(o, dict) and "name" in o for o in requested):
            raise InvalidInput('outputs must be a list of {"name": ...}', path="outputs")
        names = [o["name"] for o in requested]
        if unknown := [n for n in names if n not in self._output_specs]:
            raise InvalidInput(
                f"unknown outputs {unknown}; the model gives {sorted(self._output_specs)}", path="outputs"
            )
        return names

    def _feeds(self, named: dict[str, Any]) -> dict[str, np.ndarray[Any, Any]]:
        if unknown := named.keys() - self._input_names.keys():
            raise InvalidInput(f"unknown inputs {sorted(unknown)}; the model takes {sorted(self._input_names)}")
        feeds = {}
        for spec in self.inputs:
            if spec.name not in named:
                raise InvalidInput(f"missing input {spec.name!r}", path="inputs")
            feeds[spec.name] = to_array(spec, named[spec.name], self.max_batch)
        return feeds

    def _run(self, feeds: dict[str, Any], names: list[str] | None) -> list[tuple[str, np.ndarray[Any, Any]]]:
        wanted = names or [spec.name for spec in self.outputs]
        try:
            arrays = self._session.run(wanted, feeds)
        except Exception as exc:  # onnxruntime's pybind exceptions share no useful base class
            if type(exc).__name__ == "InvalidArgument":
                raise InvalidInput(f"the model refused the input: {exc}") from exc
            raise InferenceFailed(f"onnxruntime: {exc}") from exc
        return list(zip(wanted, arrays, strict=True))

    @staticmethod
    def _encode(result: dict[str, Any]) -> bytes:
        try:
            return _ENCODER.encode(result).encode()
        except ValueError as exc:
            raise InferenceFailed("the model produced NaN or infinite values") from exc
