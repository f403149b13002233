"""YAMNet (AudioSet sound events) as a training-time teacher for raised-voice cues.

Acted anger is often not a raised voice; natural anger often is, and YAMNet, trained on YouTube audio of
every microphone and room, knows shouting. Its logits for the raised-voice classes of a training window,
and optionally its 1024-d embedding (the pooled activations before the classifier, which carry what it
knows of every sound), become extra soft targets (`tools.train --teacher`, `--teacher-embedding`): the
network learns them beside the labels, from the window after a random channel while the teacher hears it
before, and the extra outputs are dropped at export. The runtime never runs YAMNet.

Needs `ai-edge-litert` and `yamnet.tflite` (see the README beside it in the shared pretrained folder).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

CLASSES = {0: "Speech", 6: "Shout", 7: "Bellow", 8: "Whoop", 9: "Yell", 11: "Screaming"}
"""YAMNet class index -> name of the targets (the raised-voice classes and speech)."""
RAISED = ("Shout", "Bellow", "Whoop", "Yell", "Screaming")
"""The raised-voice classes among CLASSES."""
PATCH = 15_600
PATCH_OFFSETS = (0, 1_800, 3_600)
SCALE = 256.0
"""Prepared windows are at SoundNet's scale (full scale 256); YAMNet takes [-1, 1]."""
EMBEDDING = "yamnet_frames/global_average_pooling2d/Mean"
EMBEDDING_SIZE = 1024


class Teacher:
    """YAMNet targets for prepared 1.2 s windows, each the mean over three 0.975 s patches: the logits of
    CLASSES and, with `embedding`, the 1024-d embedding after them."""

    def __init__(self, path: str | Path, embedding: bool = False) -> None:
        self.path = str(path)
        self.embedding = embedding
        self._interpreter = None

    @property
    def size(self) -> int:
        """Length of a target vector."""
        return len(CLASSES) + (EMBEDDING_SIZE if self.embedding else 0)

    def _load(self):  # the interpreter is created in the process that uses it (not picklable)
        from ai_edge_litert.interpreter import Interpreter

        with warnings.catch_warnings():  # preserving tensors (to read the embedding) is called a debug feature
            warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors", category=UserWarning)
            interpreter = Interpreter(
                model_path=self.path, num_threads=1, experimental_preserve_all_tensors=self.embedding
            )
        interpreter.allocate_tensors()
        self._input = interpreter.get_input_details()[0]["index"]
        self._output = interpreter.get_output_details()[0]["index"]
        if self.embedding:
            (self._embedding,) = [t["index"] for t in interpreter.get_tensor_details() if t["name"] == EMBEDDING]
        self._interpreter = interpreter
        return interpreter

    def __getstate__(self) -> dict:
        return {"path": self.path, "embedding": self.embedding, "_interpreter": None}

    def targets(self, prepared: np.ndarray) -> np.ndarray:
        """[size] float32: the CLASSES logits (then the embedding) of one prepared window (at least
        PATCH + 3,600 samples)."""
        interpreter = self._interpreter or self._load()
        x = np.asarray(prepared, dtype=np.float32) / SCALE
        scores, embeddings = [], []
        for offset in PATCH_OFFSETS:
            interpreter.set_tensor(self._input, x[None, offset : offset + PATCH])
            interpreter.invoke()
            scores.append(interpreter.get_tensor(self._output)[0, list(CLASSES)])
            if self.embedding:
                embeddings.append(interpreter.get_tensor(self._embedding).reshape(-1))
        p = np.clip(np.mean(scores, axis=0), 1e-6, 1 - 1e-6)
        logits = np.log(p / (1 - p))
        if not self.embedding:
            return logits.astype(np.float32)
        return np.concatenate([logits, np.mean(embeddings, axis=0)]).astype(np.float32)
