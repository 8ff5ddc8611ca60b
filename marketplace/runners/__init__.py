"""Model runners: what answers a paid call once the daemon has admitted it.

- :mod:`~marketplace.runners.base`: the interface (``Runner``, ``RunnerRequest``, ``RunnerResponse``);
- :mod:`~marketplace.runners.upstream`: proxy to the provider's own HTTP model server;
- :mod:`~marketplace.runners.onnx`: an ONNX model run in-process with onnxruntime;
- :mod:`~marketplace.runners.demo_models`: demo models from scikit-learn's bundled datasets.

Failures are ``marketplace.runners.errors.RunnerError`` subclasses carrying a stable ``code``.
"""

from marketplace.runners.base import Runner, RunnerRequest, RunnerResponse
from marketplace.runners.demo_models import (
    ModelSpec,
    train_diabetes_regressor,
    train_iris_classifier,
)
from marketplace.runners.headers import request_headers, response_headers
from marketplace.runners.onnx import OnnxRunner
from marketplace.runners.tensors import TensorSpec
from marketplace.runners.upstream import UpstreamRunner

__all__ = [
    "ModelSpec",
    "OnnxRunner",
    "Runner",
    "RunnerRequest",
    "RunnerResponse",
    "TensorSpec",
    "UpstreamRunner",
    "request_headers",
    "response_headers",
    "train_diabetes_regressor",
    "train_iris_classifier",
]
