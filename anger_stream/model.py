"""The ONNX model: a packaged one (by name) or a path, its metadata, and batched scoring of prepared windows.

A model is checked when it is loaded (one probe window must give one probability) and every output is checked
at run time: a model that does not give one finite p in [0, 1] per window raises ModelError, never a silent
or impossible result.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import onnxruntime as ort

PACKAGED_MODELS = {
    "full": "anger_full.onnx",
    "full-int8": "anger_full.int8.onnx",
    "fast": "anger_fcn.onnx",
    "fast-int8": "anger_fcn.int8.onnx",
}
"""The models shipped inside the package, by name: "full", the two-branch model (the FCN and YAMNet, giving p
and a raised-voice probability; the default), and "fast", the FCN alone; each in float32 and static int8."""
ALIASES = {"fp32": "full", "int8": "full-int8"}
"""Earlier names: the default model in float32 and int8."""
DEFAULT_MODEL = "full"
PROBE_SAMPLES = 19_200
"""The probe window's length (1.2 s at 16 kHz, the default window)."""


class ModelError(Exception):
    """The model file is missing or is not a usable anger model."""


def is_packaged(model: str | Path | None) -> bool:
    """Whether `model` names a packaged model (or is None: the default)."""
    return model is None or str(model) in PACKAGED_MODELS or str(model) in ALIASES


def default_model_path(name: str = DEFAULT_MODEL) -> Path:
    """Path of a model shipped inside the package, by a name of PACKAGED_MODELS or ALIASES."""
    return Path(str(resources.files("anger_stream.models") / PACKAGED_MODELS[ALIASES.get(name, name)]))


def model_path(model: str | Path | None) -> Path:
    """A packaged model's name (PACKAGED_MODELS, ALIASES), a path, or None (the default) -> the file's path."""
    if is_packaged(model):
        return default_model_path(str(model or DEFAULT_MODEL))
    return Path(model)


class AngerModel:
    """An onnxruntime session around the exported network.

    Input `audio`: float32 [batch, samples], windows already prepared by `audio.prepare_window`.
    Output `p`: float32 [batch], p(anger) per window; optional output `raised`: float32 [batch], the probability
    of a raised voice (two-branch models; `has_raised`).
    """

    def __init__(self, path: str | Path | None = None, threads: int = 1) -> None:
        self.path = model_path(path)
        if self.path.is_dir():
            raise ModelError(f"model is a folder, not an ONNX file: {self.path}")
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
        self.has_raised = "raised" in [o.name for o in self.session.get_outputs()]
        self._outputs = ["p", "raised"] if self.has_raised else [self.session.get_outputs()[0].name]
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        try:
            self.predict(np.zeros((2, PROBE_SAMPLES), dtype=np.float32))
        except ModelError as exc:
            raise ModelError(f"{self.path} is not an anger model: {exc}") from None
        except Exception as exc:  # onnxruntime's own errors for inputs the graph does not take
            raise ModelError(f"{self.path} is not an anger model: {exc}".splitlines()[0]) from None

    def meta_json(self, key: str, default: object = None) -> object:
        """A metadata value stored as JSON (e.g. thresholds)."""
        return json.loads(self.metadata[key]) if key in self.metadata else default

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """p(anger) for a [batch, samples] array of prepared windows."""
        return self.score(windows)[0]

    def score(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(p(anger), p(raised voice)) for a [batch, samples] array of prepared windows; the second is NaN
        throughout for a model without a `raised` output."""
        windows = np.ascontiguousarray(windows, dtype=np.float32)
        if len(windows) == 0:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.float32)
        outputs = [_probabilities(o, len(windows)) for o in self.session.run(self._outputs, {self.input_name: windows})]
        if not self.has_raised:
            outputs.append(np.full(len(windows), np.nan, dtype=np.float32))
        return outputs[0], outputs[1]


def _probabilities(out: object, n: int) -> np.ndarray:
    """One output of the model checked: one finite probability per window, or ModelError."""
    p = np.asarray(out)
    if p.size != n:
        raise ModelError(f"the model gave {p.size} outputs for {n} windows (one p per window expected)")
    p = p.reshape(-1)
    if not (np.isfinite(p).all() and p.min() >= 0.0 and p.max() <= 1.0):
        bad = p[~(np.isfinite(p) & (p >= 0.0) & (p <= 1.0))][0]
        raise ModelError(f"the model gave {float(bad):.4g} for a window, not a probability in [0, 1]")
    return p
