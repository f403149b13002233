"""The ONNX model: the packaged default or a path, its metadata, and batched scoring of prepared windows."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import onnxruntime as ort

DEFAULT_MODEL = "anger_fcn.onnx"


class ModelError(Exception):
    """The model file is missing or is not a usable anger model."""


def default_model_path() -> Path:
    """Path of the model shipped inside the package."""
    return Path(str(resources.files("anger_stream.models") / DEFAULT_MODEL))


class AngerModel:
    """An onnxruntime session around the exported network.

    Input `audio`: float32 [batch, samples], windows already prepared by `audio.prepare_window`.
    Output `p`: float32 [batch], p(anger) per window.
    """

    def __init__(self, path: str | Path | None = None, threads: int = 1) -> None:
        self.path = Path(path) if path is not None else default_model_path()
        if not self.path.is_file():
            raise ModelError(f"model file not found: {self.path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several unrelated types for bad files
            raise ModelError(f"cannot load model {self.path}: {exc}".splitlines()[0]) from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 2:
            raise ModelError(f"{self.path} is not an anger model (expects one [batch, samples] input)")
        self.input_name = inputs[0].name
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    def meta_json(self, key: str, default: object = None) -> object:
        """A metadata value stored as JSON (e.g. thresholds)."""
        return json.loads(self.metadata[key]) if key in self.metadata else default

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """p(anger) for a [batch, samples] array of prepared windows."""
        windows = np.ascontiguousarray(windows, dtype=np.float32)
        if len(windows) == 0:
            return np.zeros(0, dtype=np.float32)
        (p,) = self.session.run(None, {self.input_name: windows})
        return p.reshape(-1)
