"""Model runners: what answers a paid call once the daemon has admitted it.

- :mod:`~marketplace.runners.base`: the interface (``Runner``, ``RunnerRequest``, ``RunnerResponse``);
- :mod:`~marketplace.runners.upstream`: proxy to the provider's own HTTP model server;
- :mod:`~marketplace.runners.onnx`: an ONNX model run in-process with onnxruntime;
- :mod:`~marketplace.runners.demo_models`: demo models from scikit-learn's bundled datasets;
- :mod:`~marketplace.runners.text`: the text-model interface (``TextRunner``, the OpenAI routes),
  implemented by :mod:`~marketplace.runners.onnx_text` (the built-in text model of
  :mod:`~marketplace.runners.text_model`) and :mod:`~marketplace.runners.openai_upstream` (an
  OpenAI-compatible model server).

Failures are ``marketplace.errors.RunnerError`` subclasses carrying ``code`` and ``http_status``.
"""

from marketplace.runners.base import Runner, RunnerRequest, RunnerResponse
from marketplace.runners.demo_models import (
    ModelSpec,
    train_diabetes_regressor,
    train_iris_classifier,
)
from marketplace.runners.headers import request_headers, response_headers
from marketplace.runners.onnx import OnnxRunner
from marketplace.runners.onnx_text import OnnxTextRunner
from marketplace.runners.openai_upstream import OpenAIUpstreamRunner
from marketplace.runners.tensors import TensorSpec
from marketplace.runners.text import TextCall, TextChunk, TextRunner, TextStream, TextUsage
from marketplace.runners.upstream import UpstreamRunner

__all__ = [
    "ModelSpec",
    "OnnxRunner",
    "OnnxTextRunner",
    "OpenAIUpstreamRunner",
    "Runner",
    "RunnerRequest",
    "RunnerResponse",
    "TensorSpec",
    "TextCall",
    "TextChunk",
    "TextRunner",
    "TextStream",
    "TextUsage",
    "UpstreamRunner",
    "request_headers",
    "response_headers",
    "train_diabetes_regressor",
    "train_iris_classifier",
]
