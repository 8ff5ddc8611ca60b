"""Small demo models trained on scikit-learn's bundled datasets and exported to ONNX.

Used by the tests, by ``marketplace up`` (the demo model) and by the provider CLI's end-to-end
tests. The datasets ship inside scikit-learn (``load_iris``, ``load_diabetes``): nothing is
downloaded. Training is deterministic, so the same package versions write the same bytes (and
so the same CID). scikit-learn and skl2onnx are imported only when a model is trained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marketplace.runners.tensors import JSON_SCHEMA_DRAFT

__all__ = ["ModelSpec", "train_diabetes_regressor", "train_iris_classifier"]

_MAX_ROWS = 1024


@dataclass(frozen=True)
class ModelSpec:
    """A model file written to ``path`` with what a listing needs to describe it."""

    path: Path
    name: str
    description: str
    input_schema: dict[str, Any]
    example_input: dict[str, Any]
    outputs: dict[str, str] = field(default_factory=dict)  # output name -> meaning
    estimator: Any = field(default=None, repr=False, compare=False)  # the fitted scikit-learn model

    def metadata(self) -> dict[str, Any]:
        """The model's metadata document (what goes to IPFS beside the artifact)."""
        return {
            "name": self.name,
            "description": self.description,
            "format": "onnx",
            "input_schema": self.input_schema,
            "example_input": self.example_input,
            "outputs": self.outputs,
        }

    def example_body(self) -> bytes:
        return json.dumps(self.example_input).encode()


def _rows_schema(width: int, columns: list[str], title: str) -> dict[str, Any]:
    return {
        "$schema": JSON_SCHEMA_DRAFT,
        "title": title,
        "type": "object",
        "required": ["inputs"],
        "additionalProperties": False,
        "properties": {
            "inputs": {
                "description": "rows of " + ", ".join(columns),
                "type": "array",
                "minItems": 1,
                "maxItems": _MAX_ROWS,
                "items": {
                    "type": "array",
                    "minItems": width,
                    "maxItems": width,
                    "items": {"type": "number"},
                },
            }
        },
    }


def _export(model: Any, width: int, path: Path, name: str, doc: str) -> None:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    options = {id(model): {"zipmap": False}} if hasattr(model, "predict_proba") else None
    onnx_model = to_onnx(
        model,
        initial_types=[("input", FloatTensorType([None, width]))],
        options=options,
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    onnx_model.graph.name = name
    onnx_model.doc_string = doc
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onnx_model.SerializeToString())


def train_iris_classifier(path: Path) -> ModelSpec:
    """A logistic regression (standardised inputs) on the 150 iris flowers: 3 species from 4 sizes.

    Input ``input``: float32 ``[N, 4]``. Outputs ``label`` (int64 ``[N]``: 0 setosa,
    1 versicolor, 2 virginica) and ``probabilities`` (float32 ``[N, 3]``).
    """
    import numpy as np
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    iris = load_iris()
    x = iris.data.astype(np.float32)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(x, iris.target)
    columns = [str(c) for c in iris.feature_names]
    species = [str(s) for s in iris.target_names]
    description = (
        "Iris species classifier (logistic regression on scikit-learn's bundled iris dataset). "
        f"Input: rows of [{', '.join(columns)}]. "
        f"Output: label (0 {species[0]}, 1 {species[1]}, 2 {species[2]}) and class probabilities."
    )
    _export(model, 4, Path(path), "iris_classifier", description)
    return ModelSpec(
        path=Path(path),
        name="iris-classifier",
        description=description,
        input_schema=_rows_schema(4, columns, "iris measurements"),
        example_input={"inputs": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]},
        outputs={
            "label": "species index: " + ", ".join(f"{i} {s}" for i, s in enumerate(species)),
            "probabilities": "probability of each species, in label order",
        },
        estimator=model,
    )


def train_diabetes_regressor(path: Path) -> ModelSpec:
    """A ridge regression on scikit-learn's bundled diabetes dataset (442 patients, 10 features).

    Input ``input``: float32 ``[N, 10]`` (the dataset's scaled features). Output ``variable``
    (float32 ``[N, 1]``): disease progression one year after baseline.
    """
    import numpy as np
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    diabetes = load_diabetes()
    x = diabetes.data.astype(np.float32)
    model = Ridge(alpha=0.1).fit(x, diabetes.target)
    columns = [str(c) for c in diabetes.feature_names]
    description = (
        "Diabetes progression regressor (ridge regression on scikit-learn's bundled diabetes "
        f"dataset). Input: rows of the 10 scaled features [{', '.join(columns)}]. "
        "Output: a quantitative measure of disease progression one year after baseline."
    )
    _export(model, 10, Path(path), "diabetes_regressor", description)
    example = [round(float(v), 6) for v in x[0]]
    return ModelSpec(
        path=Path(path),
        name="diabetes-regressor",
        description=description,
        input_schema=_rows_schema(10, columns, "diabetes features"),
        example_input={"inputs": [example]},
        outputs={"variable": "predicted disease progression"},
        estimator=model,
    )
