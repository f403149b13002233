"""YAMNet (AudioSet sound events) as a training-time teacher for raised-voice cues.

Acted anger is often not a raised voice; natural anger often is, and YAMNet, trained on YouTube audio of
every microphone and room, knows shouting. Its logits for the raised-voice classes of a training window
become extra soft targets (`tools.train --teacher`): the network learns them beside the labels, from the
window after a random channel while the teacher hears it before, and the extra outputs are dropped at
export. The runtime never runs YAMNet.

Needs `ai-edge-litert` and `yamnet.tflite` (see the README beside it in the shared pretrained folder).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = {0: "Speech", 6: "Shout", 7: "Bellow", 8: "Whoop", 9: "Yell", 11: "Screaming"}
"""YAMNet class index -> name of the targets (the raised-voice classes and speech)."""
PATCH = 15_600
PATCH_OFFSETS = (0, 1_800, 3_600)
SCALE = 256.0
"""Prepared windows are at SoundNet's scale (full scale 256); YAMNet takes [-1, 1]."""


class Teacher:
    """YAMNet logits of CLASSES for prepared 1.2 s windows: the mean of three 0.975 s patches."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._interpreter = None

    def _load(self):  # the interpreter is created in the process that uses it (not picklable)
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=self.path, num_threads=1)
        interpreter.allocate_tensors()
        self._input = interpreter.get_input_details()[0]["index"]
        self._output = interpreter.get_output_details()[0]["index"]
        self._interpreter = interpreter
        return interpreter

    def __getstate__(self) -> dict:
        return {"path": self.path, "_interpreter": None}

    def logits(self, prepared: np.ndarray) -> np.ndarray:
        """[len(CLASSES)] float32 logits for one prepared window (at least PATCH + 3,600 samples)."""
        interpreter = self._interpreter or self._load()
        x = np.asarray(prepared, dtype=np.float32) / SCALE
        scores = []
        for offset in PATCH_OFFSETS:
            interpreter.set_tensor(self._input, x[None, offset : offset + PATCH])
            interpreter.invoke()
            scores.append(interpreter.get_tensor(self._output)[0, list(CLASSES)])
        p = np.clip(np.mean(scores, axis=0), 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p)).astype(np.float32)
