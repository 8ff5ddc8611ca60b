"""Tensors as JSON: the model's declared inputs and outputs, checks and conversions.

A model input is a :class:`TensorSpec` (name, KServe v2 datatype, shape with ``None`` for a
dynamic dimension). JSON values become numpy arrays only through :func:`to_array`, which refuses
what numpy would otherwise coerce silently: strings as numbers, booleans as numbers, ragged
rows, floats as integers, values out of the datatype's range, NaN and infinities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from marketplace.runners.errors import InvalidInput

__all__ = ["ONNX_TO_V2", "TensorSpec", "input_schema_for", "nest", "tensor_schema", "to_array"]

JSON_SCHEMA_DRAFT = "http://json-schema.org/draft-07/schema#"

# ONNX type string -> KServe v2 datatype.
ONNX_TO_V2 = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}
_NUMPY: dict[str, np.dtype[Any]] = {
    name: np.dtype(scalar)
    for name, scalar in {
        "FP32": np.float32,
        "FP64": np.float64,
        "FP16": np.float16,
        "INT8": np.int8,
        "INT16": np.int16,
        "INT32": np.int32,
        "INT64": np.int64,
        "UINT8": np.uint8,
        "UINT16": np.uint16,
        "UINT32": np.uint32,
        "UINT64": np.uint64,
        "BOOL": np.bool_,
        "BYTES": np.object_,
    }.items()
}
_PYTHON_CHECK_MAX = 256
_FLOAT_MAX = {name: float(np.finfo(dtype).max) for name, dtype in _NUMPY.items() if dtype.kind == "f"}
# numpy kinds accepted from JSON for each family of datatype.
_KINDS = {"f": "iuf", "i": "iu", "u": "iu", "b": "b", "O": "U"}
_JSON_TYPE = {"f": "number", "i": "integer", "u": "integer", "b": "boolean", "O": "string"}
_WHAT = {"f": "numbers", "i": "integers", "u": "integers", "b": "booleans", "O": "strings"}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A named tensor as the model declares it; ``None`` in ``shape`` is a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int | None, ...]

    @classmethod
    def from_onnx(cls, name: str, onnx_type: str, shape: list[Any]) -> TensorSpec:
        datatype = ONNX_TO_V2.get(onnx_type)
        if datatype is None:
            raise ValueError(f"{name!r} is a {onnx_type}, not a tensor this runner serves")
        dims = tuple(d if isinstance(d, int) and d >= 0 else None for d in shape)
        return cls(name, datatype, dims)

    @property
    def dtype(self) -> np.dtype[Any]:
        return _NUMPY[self.datatype]

    @property
    def shown_shape(self) -> list[int | str]:
        return [d if d is not None else -1 for d in self.shape]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shown_shape}


def to_array(spec: TensorSpec, value: Any, max_batch: int) -> np.ndarray[Any, Any]:
    """The JSON value of one input as an array of the spec's dtype and shape, or InvalidInput."""
    dtype = _NUMPY[spec.datatype]
    family = dtype.kind
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"not a rectangular array of {_WHAT[family]} ({exc})", path=spec.name) from None
    if array.dtype.kind not in _KINDS[family]:
        raise InvalidInput(f"must hold {_WHAT[family]} only, got {_describe(array)}", path=spec.name)
    shape = array.shape
    if len(shape) != len(spec.shape):
        raise InvalidInput(
            f"must have shape {spec.shown_shape} ({len(spec.shape)} dimensions), got {list(shape)}", path=spec.name
        )
    for axis, want in enumerate(spec.shape):
        if want is not None and want != shape[axis]:
            raise InvalidInput(
                f"must have shape {spec.shown_shape}, got {list(shape)} (dimension {axis})", path=spec.name
            )
    if shape and spec.shape[0] is None and not 0 < shape[0] <= max_batch:
        problem = "has no rows" if shape[0] == 0 else f"has {shape[0]} rows, over the limit of {max_batch}"
        raise InvalidInput(problem, path=spec.name)
    if family == "O":
        return array.astype(object)
    if family == "b" or not array.size:
        return array.astype(dtype, copy=False)
    # Range check before the cast, so it never overflows (JSON has no NaN: refused when parsing).
    # Small inputs are checked in Python: a numpy reduction next to onnxruntime's run costs about
    # 10 µs more than its own time (measured), several times what this loop costs on a few rows.
    if array.size <= _PYTHON_CHECK_MAX:
        values = array.ravel().tolist()
        low, high = min(values), max(values)
    else:
        low, high = array.min(), array.max()
    if family == "f":
        limit = _FLOAT_MAX[spec.datatype]
        if high > limit or low < -limit:
            raise InvalidInput(f"holds values too large for {spec.datatype}", path=spec.name)
    else:
        info = np.iinfo(dtype)
        if low < info.min or high > info.max:
            raise InvalidInput(f"holds values outside the range of {spec.datatype}", path=spec.name)
    return array.astype(dtype, copy=False)


def _describe(array: np.ndarray[Any, Any]) -> str:
    kind = array.dtype.kind
    if kind == "O":
        return "mixed or null values"
    return {"U": "strings", "b": "booleans", "f": "numbers", "i": "integers", "u": "integers"}.get(
        kind, str(array.dtype)
    )


def nest(data: list[Any], shape: list[int], path: str) -> list[Any]:
    """A flat row-major list as nested lists of ``shape`` (KServe v2 sends tensors flattened)."""
    if math.prod(shape) != len(data):
        raise InvalidInput(f"holds {len(data)} values but shape {shape} needs {math.prod(shape)}", path=path)
    nested: list[Any] = data
    for size in reversed(shape[1:]):
        if size == 0:
            break
        nested = [nested[i : i + size] for i in range(0, len(nested), size)]
    return nested


def tensor_schema(spec: TensorSpec, max_batch: int) -> dict[str, Any]:
    """A JSON Schema for one input given as nested lists (the batch dimension limited)."""
    schema: dict[str, Any] = {"type": _JSON_TYPE[spec.dtype.kind]}
    for axis, size in reversed(list(enumerate(spec.shape))):
        dim: dict[str, Any] = {"type": "array", "items": schema}
        if size is not None:
            dim["minItems"] = dim["maxItems"] = size
        elif axis == 0:
            dim["minItems"], dim["maxItems"] = 1, max_batch
        schema = dim
    return schema


def input_schema_for(inputs: list[TensorSpec], max_batch: int) -> dict[str, Any]:
    """The plain-JSON input schema of a model: ``{"inputs": tensor}``, or one tensor per name."""
    if len(inputs) == 1:
        body = tensor_schema(inputs[0], max_batch)
    else:
        body = {
            "type": "object",
            "required": [spec.name for spec in inputs],
            "additionalProperties": False,
            "properties": {spec.name: tensor_schema(spec, max_batch) for spec in inputs},
        }
    return {
        "$schema": JSON_SCHEMA_DRAFT,
        "type": "object",
        "required": ["inputs"],
        "additionalProperties": False,
        "properties": {"inputs": body},
    }
